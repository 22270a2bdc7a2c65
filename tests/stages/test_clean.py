"""The clean stage on constructed features: what is dropped, the split, the report and MLflow."""

from __future__ import annotations

import csv
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rawdata import solid_raw

from stages import clean
from taglens.features import write_features
from taglens.posts import POSTS_FILE, read_posts, write_posts

SIZES = {"animals": 21, "food": 12, "art": 2}


@pytest.fixture(autouse=True)
def experiment(tmp_path):
    """A throwaway experiment whose artifacts stay in tmp_path."""
    import mlflow

    name = f"clean-{uuid.uuid4().hex}"
    mlflow.create_experiment(name, artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment(name)
    return name


def ring(n: int, radius: float, centre: float) -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([np.cos(angles) * radius + centre, np.sin(angles) * radius + centre], axis=1)


@pytest.fixture
def data(tmp_path):
    """35 posts (+1 duplicate); animals' last image sits far from the others."""
    raw = tmp_path / "raw"
    colours = {label: [(i * 11 % 256, j * 40, 100) for i in range(n)]
               for j, (label, n) in enumerate(SIZES.items())}  # fmt: skip
    posts = solid_raw(raw, colours)
    posts.append(posts[3].model_copy(update={"id": "repost"}))  # the same image posted twice
    write_posts(raw / POSTS_FILE, posts)
    animals = np.vstack([ring(20, 1.0, 0.0), [[40.0, 0.0]]])
    vectors = np.vstack([animals, ring(12, 2.0, 50.0), ring(2, 1.0, -50.0), animals[3:4]])
    features = tmp_path / "features"
    write_features(features, [p.sha256 for p in posts], vectors, {"dim": 2})
    return raw, features


def run(tmp_path, params, raw, features):
    return clean.run(
        params.base, params.clean, raw=raw, features=features, out=tmp_path / "clean",
        reports=tmp_path / "reports" / "clean", metrics=tmp_path / "reports" / "clean.json",
    )  # fmt: skip


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_drops_the_far_image_and_splits_the_rest(tmp_path, tiny_params, data):
    raw, features = data
    report = run(tmp_path, tiny_params, raw, features)
    posts = read_posts(raw / POSTS_FILE)

    dropped = read_csv(tmp_path / "clean" / "dropped.csv")
    assert [row["id"] for row in dropped] == ["animals-20"]
    assert float(dropped[0]["distance"]) > float(dropped[0]["threshold"])
    manifest = read_csv(tmp_path / "clean" / "manifest.csv")
    assert list(manifest[0]) == ["id", "sha256", "image", "label", "split", "distance"]
    kept_ids = {row["id"] for row in manifest}
    assert len(manifest) == 35 and kept_ids == {p.id for p in posts} - {"animals-20"}
    assert all((raw / row["image"]).is_file() for row in manifest)
    by_id = {row["id"]: row["split"] for row in manifest}
    assert by_id["animals-3"] == by_id["repost"]
    assert {by_id["art-0"], by_id["art-1"]} == {"train"}

    splits = [row["split"] for row in manifest]
    assert report["totals"] == {"before": 36, "after": 35, "dropped": 1, **{
        side: splits.count(side) for side in ("train", "val", "test")}}  # fmt: skip
    # 20 unique animals (3 test, 3 val), 12 food (2, 2), 2 art (train); the repost follows its twin
    repost = by_id["repost"]
    assert splits.count("test") == 5 + (repost == "test")
    assert splits.count("val") == 5 + (repost == "val")
    assert report["classes"]["animals"]["before"] == 22  # 21 + the repost
    assert report["classes"]["animals"]["after"] == 21
    assert report["classes"]["art"] == pytest.approx(
        {"before": 2, "after": 2, "dropped": 0, "mean": 1.0, "std": 0.0, "threshold": None}
    )
    assert json.loads((tmp_path / "reports" / "clean.json").read_text()) == report

    pngs = sorted(p.name for p in (tmp_path / "reports" / "clean").iterdir())
    assert pngs == ["distances.png", "dropped_animals.png"]
    with Image.open(tmp_path / "reports" / "clean" / "dropped_animals.png") as sheet:
        assert sheet.size == (96, 110)


def test_logs_a_clean_run_to_mlflow(tmp_path, tiny_params, data, experiment):
    import mlflow

    run(tmp_path, tiny_params, *data)
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    assert [r.info.run_name for r in runs] == ["clean"]
    latest = runs[0]
    assert latest.data.metrics["clean.dropped"] == 1.0
    assert latest.data.metrics["clean.animals.after"] == 21.0
    assert latest.data.params["clean.k_std"] == "2.0"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(latest.info.run_id, "clean")}
    assert artifacts == {"clean/clean.json", "clean/distances.png", "clean/dropped_animals.png"}


def test_disabled_keeps_everything(tmp_path, tiny_params, data):
    off = tiny_params.model_copy(
        update={"clean": tiny_params.clean.model_copy(update={"enabled": False})}
    )
    report = run(tmp_path, off, *data)
    assert report["totals"]["after"] == 36 and report["totals"]["dropped"] == 0
    assert read_csv(tmp_path / "clean" / "dropped.csv") == []
    assert not list((tmp_path / "reports" / "clean").glob("dropped_*.png"))


def test_stale_features_are_refused(tmp_path, tiny_params, data):
    raw, features = data
    posts = read_posts(raw / POSTS_FILE)
    write_posts(raw / POSTS_FILE, posts[::-1])
    with pytest.raises(ValueError, match="re-run the featurize stage"):
        run(tmp_path, tiny_params, raw, features)
    assert not (tmp_path / "clean" / "manifest.csv").exists()


def test_main_turns_missing_features_into_a_message(tmp_path, data, capsys, monkeypatch):
    from tests.conftest import FIXTURES

    monkeypatch.chdir(tmp_path)
    raw, _ = data
    argv = ["--params", str(FIXTURES / "params.yaml"), "--raw", str(raw), "--features",
            str(tmp_path / "none"), "--out", str(tmp_path / "clean")]  # fmt: skip
    assert clean.main(argv) == 2
    assert "run the featurize stage first" in capsys.readouterr().err


def test_main_writes_every_output(tmp_path, data, monkeypatch):
    from tests.conftest import FIXTURES

    monkeypatch.chdir(tmp_path)  # a new experiment would keep its artifacts under ./mlruns
    raw, features = data
    argv = ["--params", str(FIXTURES / "params.yaml"), "--raw", str(raw), "--features",
            str(features), "--out", "clean", "--reports", "reports/clean",
            "--metrics", "reports/clean.json"]  # fmt: skip
    assert clean.main(argv) == 0
    assert json.loads(Path("reports/clean.json").read_text())["totals"]["after"] == 35
    assert len(read_csv("clean/manifest.csv")) == 35 and len(read_csv("clean/dropped.csv")) == 1
    assert Path("reports/clean/distances.png").stat().st_size > 1000


def test_without_configured_classes_the_labels_found_are_the_classes(tmp_path, tiny_params, data):
    # base.classes: null (the shipped default): clean keeps every label the source found
    unset = tiny_params.model_copy(
        update={"base": tiny_params.base.model_copy(update={"classes": None})}
    )
    report = run(tmp_path, unset, *data)
    assert report["totals"]["before"] == 36 and report["totals"]["dropped"] == 1
    labels = {row["label"] for row in read_csv(tmp_path / "clean" / "manifest.csv")}
    assert labels == set(report["classes"]) and len(labels) >= 2
