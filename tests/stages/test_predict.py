"""The predict stage: the real model, the champion from the registry, and clear user errors."""

from __future__ import annotations

import pytest
from PIL import Image

from stages import predict
from taglens.model.predictor import HashtagPredictor
from taglens.serving import model_ref
from taglens.serving.batch.outputs import read_rows
from taglens.serving.model_ref import ModelRef
from tests.helpers.params import tiny_params_path

PARAMS = str(tiny_params_path())


def _photos(folder, count=5):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"p{i}.jpg"
        Image.new("RGB", (40 + 7 * i, 30), (50 * i % 256, 120, 255 - 40 * i)).save(path)
        paths.append(path)
    return paths


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["tensorflow", "openvino"])
def test_rows_match_the_predictor_on_the_same_pixels(
    engine, tmp_path, tiny_params, tiny_models_dir
):
    paths = _photos(tmp_path / "photos")
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "out.jsonl"
    on_engine = tiny_params.featurize.model_copy(update={"engine": engine})
    model = model_ref.resolve(str(tiny_models_dir), tiny_params.register.model_name)
    result = predict.run(
        tiny_params.predict,
        on_engine,
        tiny_params.ingest,
        model=model,
        input=str(tmp_path / "photos"),
        output=out,
        progress=False,
    )
    rows = list(read_rows(out))
    report = result.report
    assert (report.scored, report.errors, len(rows)) == (5, 1, 6)
    version = model_ref.local_version(tiny_models_dir)
    assert result.model == ModelRef(str(tiny_models_dir.resolve()), version)
    assert rows[0]["path"].endswith("broken.jpg") and rows[0]["error"]
    # the same photos as the web page and the pyfunc predict them, from their bytes
    expected = HashtagPredictor.from_dir(tiny_models_dir).predict_bytes(
        [path.read_bytes() for path in paths]
    )
    for row, want in zip(rows[1:], expected, strict=True):
        assert row["top_class"] == want["top_class"]
        assert row["top_probability"] == pytest.approx(want["top_probability"], abs=1e-5)
        assert [h["tag"] for h in row["hashtags"]] == [h["tag"] for h in want["hashtags"]]
        assert row["error"] is None
        assert (row["model_name"], row["model_version"]) == (result.model.name, version)


@pytest.mark.slow
def test_main_scores_with_the_champion_by_default(tmp_path, tiny_champion, capsys):
    name, version, _ = tiny_champion
    _photos(tmp_path / "photos", 3)
    out = tmp_path / "out.parquet"
    argv = ["--input", str(tmp_path / "photos" / "*.jpg"), "--output", str(out), "--params", PARAMS]
    assert predict.main(argv) == 0
    rows = list(read_rows(out))
    assert len(rows) == 3 and {(r["model_name"], r["model_version"]) for r in rows} == {
        (name, version)
    }
    assert all(len(r["hashtags"]) > 0 and r["error"] is None for r in rows)
    assert predict.main(argv) == 0  # idempotent: nothing new to score
    assert "0 scored, 3 already done" in capsys.readouterr().out
    assert len(list(read_rows(out))) == 3


@pytest.mark.slow
def test_missing_champion_says_how_to_get_one(tmp_path, fresh_mlflow, capsys):
    _photos(tmp_path / "photos", 1)
    code = predict.main(
        [
            "--input",
            str(tmp_path / "photos"),
            "--output",
            str(tmp_path / "out.csv"),
            "--params",
            PARAMS,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "no champion yet for registered model 'taglens'" in err
    assert "dvc repro" in err and "--model-uri" in err
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.slow
def test_bad_input_and_output_are_user_errors(tmp_path, tiny_models_dir, capsys):
    _photos(tmp_path / "photos", 1)
    base = ["--params", PARAMS, "--model-uri", str(tiny_models_dir)]
    assert (
        predict.main(
            ["--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "o.csv"), *base]
        )
        == 2
    )
    assert "is not a folder, an image, a list file or a glob" in capsys.readouterr().err
    assert (
        predict.main(
            ["--input", str(tmp_path / "photos"), "--output", str(tmp_path / "o.txt"), *base]
        )
        == 2
    )
    assert "must end with one of .csv, .jsonl, .parquet" in capsys.readouterr().err


@pytest.mark.slow
def test_a_local_models_dir_needs_no_tracking_store(tmp_path, tiny_models_dir, monkeypatch):
    import taglens.tracking

    def no_tracking(*_):
        raise AssertionError("a local models/ directory must not open the MLflow store")

    monkeypatch.setattr(taglens.tracking, "configure_tracking", no_tracking)
    _photos(tmp_path / "photos", 2)
    out = tmp_path / "out.csv"
    assert (
        predict.main(
            [
                "--input",
                str(tmp_path / "photos"),
                "--output",
                str(out),
                "--params",
                PARAMS,
                "--model-uri",
                str(tiny_models_dir),
            ]
        )
        == 0
    )
    assert len(list(read_rows(out))) == 2
