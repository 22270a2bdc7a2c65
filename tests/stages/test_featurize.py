"""The featurize stage on generated images: the files it writes and what the cache saves."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from stages import featurize
from taglens.data.posts import POSTS_FILE, read_posts, write_posts
from taglens.features.store import FEATURES_FILE, META_FILE, read_features
from tests.helpers.rawdata import add_post, jpeg_bytes, solid_raw

COLOURS = {
    "animals": [(200, 30, 30), (190, 40, 20), (210, 20, 40), (180, 60, 60)],
    "food": [(30, 200, 30), (40, 190, 20), (20, 210, 40)],
    "art": [(30, 30, 200), (40, 20, 190)],
}


@pytest.fixture
def raw(tmp_path):
    solid_raw(tmp_path / "raw", COLOURS)
    return tmp_path / "raw"


def run(params, raw, out, model=None):
    return featurize.run(
        model or params.model,
        params.featurize,
        params.clean,
        seed=params.base.seed,
        raw=raw,
        out=out,
        progress=False,
    )


def with_crops(params):
    """`params` with the optional crops view added to featurize.views."""
    views = {"views": ("flip", "colour", "crops")}
    return params.model_copy(update={"featurize": params.featurize.model_copy(update=views)})


@pytest.mark.slow
def test_writes_one_vector_per_post_in_posts_order(tiny_params, raw, tmp_path):
    out = tmp_path / "features"
    report = run(with_crops(tiny_params), raw, out)
    shas, vectors = read_features(out)
    posts = read_posts(raw / POSTS_FILE)
    assert shas.tolist() == [post.sha256 for post in posts]
    assert vectors.shape == (9, 512) and vectors.dtype == np.float32
    assert np.isfinite(vectors).all() and len({v.tobytes() for v in vectors}) == 9
    meta = json.loads((out / META_FILE).read_text())
    assert meta == {
        "backbone": "vgg19",
        "image_size": 32,
        "weights_identity": "random-seed42",
        "dim": 512,
        "count": 9,
        "store": "vgg19-32px-random-seed42",
        "views": ["flip", "colour", "crops"],
        "precision": "fp32",
        "engine": "tensorflow",
        "int8": None,
    }
    assert (report.computed, report.cached) == (9, 0)
    # the views, in posts order, each in its own store: the mirror image's vector and colours
    with np.load(out / "features.npz") as npz:
        flip, colour, crops = npz["flip_vectors"], npz["colour_vectors"], npz["crops_vectors"]
    assert flip.shape == crops.shape == (9, 512) and colour.shape == (9, 128)
    assert not np.allclose(crops, vectors)  # five crops of the enlarged image: a zoom
    np.testing.assert_allclose(colour.sum(axis=1), 2.0, rtol=1e-5)
    assert {p.name for p in (out / "store").iterdir()} == {
        "vgg19-32px-random-seed42",
        "vgg19-32px-random-seed42-flip",
        "vgg19-32px-random-seed42-colour",
        "vgg19-32px-random-seed42-crops",
    }


@pytest.mark.slow
def test_rerun_computes_nothing_and_a_new_image_computes_one(
    tiny_params, raw, tmp_path, monkeypatch
):
    out = tmp_path / "features"
    run(tiny_params, raw, out)
    _, first = read_features(out)

    def no_model(*_):
        raise AssertionError("a fully cached run must not build the backbone")

    monkeypatch.setattr(featurize, "build_views_model", no_model)
    report = run(tiny_params, raw, out)
    assert (report.computed, report.cached) == (0, 9)
    np.testing.assert_array_equal(read_features(out)[1], first)

    monkeypatch.undo()
    posts = read_posts(raw / POSTS_FILE)
    new = add_post(raw, "art", jpeg_bytes(Image.new("RGB", (40, 40), (90, 90, 250))), "art-new")
    duplicate = posts[0].model_copy(update={"id": "dup", "label": "food"})
    write_posts(raw / POSTS_FILE, [*posts, new, duplicate])
    report = run(tiny_params, raw, out)
    assert (report.computed, report.cached, report.meta["count"]) == (1, 9, 11)
    shas, vectors = read_features(out)
    np.testing.assert_array_equal(vectors[:9], first)
    np.testing.assert_array_equal(vectors[10], vectors[0])  # the duplicate shares its vector
    assert shas[10] == shas[0]


def test_a_new_image_size_recomputes_into_its_own_store(tiny_params, raw, tmp_path):
    out = tmp_path / "features"
    run(tiny_params, raw, out)
    bigger = tiny_params.model.model_copy(update={"image_size": 48})
    report = run(tiny_params, raw, out, model=bigger)
    assert (report.computed, report.cached) == (9, 0)
    assert sorted(
        p.name
        for p in (out / "store").iterdir()
        if not p.name.endswith(("-flip", "-colour", "-crops"))
    ) == ["vgg19-32px-random-seed42", "vgg19-48px-random-seed42"]
    assert json.loads((out / META_FILE).read_text())["image_size"] == 48


def test_main_runs_from_the_command_line(raw, tmp_path):
    from tests.helpers.params import tiny_params_path

    out = tmp_path / "features"
    argv = ["--params", str(tiny_params_path()), "--raw", str(raw), "--out", str(out)]
    assert featurize.main(argv) == 0
    assert read_features(out)[1].shape == (9, 512)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("no_posts", "run the scrape stage"),
        ("bad_weights", "model.weights"),
        ("missing_image", "image file"),
    ],
)
def test_main_reports_user_errors_without_traceback(raw, tmp_path, capsys, setup, message):
    from tests.helpers.params import tiny_params_raw

    params = tiny_params_raw()
    if setup == "no_posts":
        (raw / POSTS_FILE).unlink()
    elif setup == "bad_weights":
        params["model"]["weights"] = str(tmp_path / "missing.weights.h5")
    else:
        next((raw / "images").iterdir()).unlink()
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    out = tmp_path / "features"
    assert featurize.main(["--params", str(path), "--raw", str(raw), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and message in err and "Traceback" not in err
    assert not (out / FEATURES_FILE).exists()


def test_warns_when_xla_would_slow_a_depthwise_backbone(tiny_params, raw, tmp_path, caplog):
    mobilenet = tiny_params.model.model_copy(update={"backbone": "mobilenet"})
    jit = tiny_params.featurize.model_copy(update={"jit_compile": True})
    next((raw / "images").iterdir()).unlink()  # stop before any model is built
    with pytest.raises(FileNotFoundError):
        featurize.run(
            mobilenet, jit, tiny_params.clean, seed=0, raw=raw, out=tmp_path / "f", progress=False
        )
    assert "set featurize.jit_compile: false" in caplog.text
    caplog.clear()
    with pytest.raises(FileNotFoundError):
        featurize.run(
            tiny_params.model,
            jit,
            tiny_params.clean,
            seed=0,
            raw=raw,
            out=tmp_path / "f",
            progress=False,
        )
    assert "jit_compile" not in caplog.text


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_finished_shards(tiny_params, tmp_path):
    import subprocess
    import sys
    import time

    from tests.helpers.params import tiny_params_raw
    from tests.helpers.paths import ROOT

    # Given 200 distinct images and a featurize process killed (SIGKILL) after its first shard
    colours = {"art": [(i % 256, (i * 7) % 256, (i * 13) % 256) for i in range(200)]}
    raw = tmp_path / "raw"
    solid_raw(raw, colours, size=36)
    params = tiny_params_raw()
    params["featurize"].update(batch_size=4, shard_size=8)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "features"
    store = out / "store" / "vgg19-32px-random-seed42"
    argv = [
        sys.executable,
        "-m",
        "stages.featurize",
        "--params",
        str(tmp_path / "params.yaml"),
        "--raw",
        str(raw),
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(store.glob("shard-*.npz")) and time.monotonic() < deadline:
            assert proc.poll() is None, "featurize ended before it could be interrupted"
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    # Then no features.npz was left for clean to read, and no half-written file either
    assert not (out / "features.npz").exists()
    assert [p.name for p in store.iterdir() if p.suffix != ".npz"] == ["key.json"]
    done = 8 * len(list(store.glob("shard-*.npz")))
    assert 8 <= done < 200

    # When it runs again, only the unfinished images are computed
    report = featurize.run(
        tiny_params.model,
        tiny_params.featurize.model_copy(update={"shard_size": 8}),
        tiny_params.clean,
        seed=42,
        raw=raw,
        out=out,
        progress=False,
    )
    assert (report.cached, report.computed) == (done, 200 - done)
    assert read_features(out)[1].shape == (200, 512)


@pytest.mark.slow
def test_openvino_engine_writes_the_tensorflow_vectors(tiny_params, raw, tmp_path):
    tf_out, ov_out = tmp_path / "tf", tmp_path / "ov"
    run(tiny_params, raw, tf_out)
    on_openvino = tiny_params.featurize.model_copy(update={"engine": "openvino"})
    featurize.run(
        tiny_params.model,
        on_openvino,
        tiny_params.clean,
        seed=tiny_params.base.seed,
        raw=raw,
        out=ov_out,
        progress=False,
    )
    (tf_shas, want), (ov_shas, got) = read_features(tf_out), read_features(ov_out)
    assert ov_shas.tolist() == tf_shas.tolist()
    worst = np.max(np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1))
    assert worst < 1e-4


@pytest.mark.slow
def test_every_view_runs_on_the_configured_engine_in_one_call_per_batch(
    tiny_params, raw, tmp_path, monkeypatch
):
    from taglens.features import engines

    # Given featurize.engine: openvino, a spy on OpenVINO's forward pass and no TensorFlow one
    calls = []
    real = engines.OpenVinoForward.__call__

    def spy(self, images):
        outputs = real(self, images)
        calls.append((len(images), sorted(outputs)))
        return outputs

    def no_tensorflow(self, images):
        raise AssertionError("a view ran on tensorflow, not on featurize.engine")

    monkeypatch.setattr(engines.OpenVinoForward, "__call__", spy)
    monkeypatch.setattr(engines.TensorFlowForward, "__call__", no_tensorflow)
    on_openvino = tiny_params.featurize.model_copy(
        update={"engine": "openvino", "batch_size": 4, "views": ("flip", "colour", "crops")}
    )
    # When featurize runs over the 9 images
    featurize.run(
        tiny_params.model,
        on_openvino,
        tiny_params.clean,
        seed=tiny_params.base.seed,
        raw=raw,
        out=tmp_path / "ov",
        progress=False,
    )
    # Then each batch was one OpenVINO call that computed the image and every view
    everything = ["colour", "crops", "flip", "vectors"]
    assert calls == [(4, everything), (4, everything), (1, everything)]
    # and the vectors are TensorFlow's, view by view
    monkeypatch.undo()
    run(with_crops(tiny_params), raw, tmp_path / "tf")
    got, want = _arrays(tmp_path / "ov"), _arrays(tmp_path / "tf")
    assert sorted(got) == ["colour_vectors", "crops_vectors", "flip_vectors", "sha256", "vectors"]
    for array in ("vectors", "flip_vectors", "colour_vectors", "crops_vectors"):
        scale = np.linalg.norm(want[array], axis=1)
        assert np.max(np.linalg.norm(got[array] - want[array], axis=1) / scale) < 1e-4, array


def _arrays(out):
    with np.load(out / FEATURES_FILE) as npz:
        return {name: npz[name] for name in npz.files}


@pytest.mark.slow
def test_int8_engine_quantizes_once_and_stores_its_vectors_apart(
    tiny_params, tmp_path, monkeypatch
):
    # Given 40 photos of two colour families, and the INT8 engine with a cache of its own
    rng = np.random.default_rng(0)
    low = rng.integers(0, 80, (40, 2)).tolist()
    high = rng.integers(200, 240, 40).tolist()
    reds = [(high[i], low[i][0], low[i][1]) for i in range(20)]
    blues = [(low[i][0], low[i][1], high[i]) for i in range(20, 40)]
    raw = tmp_path / "raw"
    solid_raw(raw, {"animals": reds, "food": blues})
    monkeypatch.setenv("TAGLENS_CACHE_DIR", str(tmp_path / "cache"))
    settings = {"calibration_images": 16, "validation_images": 16, "max_drop": 1.0 - 1e-9}
    int8 = tiny_params.featurize.model_copy(
        update={
            "engine": "openvino-int8",
            "int8": tiny_params.featurize.int8.model_copy(update=settings),
        }
    )
    clean = tiny_params.clean.model_copy(update={"val_fraction": 0.3})
    out = tmp_path / "features"
    # When featurize runs on it
    first = featurize.run(tiny_params.model, int8, clean, seed=0, raw=raw, out=out, progress=False)
    # Then INT8 was kept, and its vectors went to stores named for INT8, beside no FP32 store
    meta = json.loads((out / META_FILE).read_text())
    assert (meta["precision"], meta["engine"]) == ("int8", "openvino-int8")
    assert meta["int8"]["precision"] == "int8" and meta["int8"]["validation_images"] >= 1
    stores = sorted(path.name for path in (out / "store").iterdir())
    assert stores == [
        "vgg19-32px-random-seed0-int8",
        "vgg19-32px-random-seed0-int8-colour",
        "vgg19-32px-random-seed0-int8-flip",
    ]
    assert first.computed == 40
    # and they are close to the FP32 vectors of the same photos, not equal to them
    on_fp32 = int8.model_copy(update={"engine": "openvino"})
    fp32 = featurize.run(
        tiny_params.model, on_fp32, clean, seed=0, raw=raw, out=tmp_path / "fp32", progress=False
    )
    assert fp32.computed == 40
    (_, got), (_, want) = read_features(out), read_features(tmp_path / "fp32")
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() > 0.9 and not np.allclose(got, want)
    with np.load(out / FEATURES_FILE) as a, np.load(tmp_path / "fp32" / FEATURES_FILE) as b:
        assert np.allclose(a["colour_vectors"], b["colour_vectors"], atol=1e-6)  # left in FP32

    # When it runs again: the decision is read from the cache and nothing is quantized or computed
    def no_quantizing(*args, **kwargs):
        raise AssertionError("quantized again")

    monkeypatch.setattr("taglens.features.quantize.quantize", no_quantizing)
    again = featurize.run(tiny_params.model, int8, clean, seed=0, raw=raw, out=out, progress=False)
    assert (again.computed, again.cached) == (0, 40)
