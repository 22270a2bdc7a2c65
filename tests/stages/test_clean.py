"""The clean stage on constructed features: what is dropped, the split, the report and MLflow."""

from __future__ import annotations

import csv
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stages import clean
from taglens.data.posts import POSTS_FILE, read_posts, write_posts
from taglens.features.split import content_split
from taglens.features.store import write_features
from tests.helpers.rawdata import solid_raw

SIZES = {"animals": 40, "food": 30, "art": 2}
SEED = 42  # params.yaml's base.seed (the tiny params keep it)


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


@dataclass
class Data:
    raw: Path
    features: Path
    splits: dict[str, str]  # post id -> side, as the content split puts it
    far_train: str  # the animals post far from its class in the training split
    far_test: str  # ... and one in the test split


@pytest.fixture
def data(tmp_path) -> Data:
    """72 posts (+1 duplicate); one training and one test animals image sit far from the rest."""
    raw = tmp_path / "raw"
    colours = {
        label: [(i * 5 % 256, j * 40, (i * 37) % 256) for i in range(n)]
        for j, (label, n) in enumerate(SIZES.items())
    }
    posts = solid_raw(raw, colours)
    posts.append(posts[3].model_copy(update={"id": "repost"}))  # the same image posted twice
    write_posts(raw / POSTS_FILE, posts)
    sides = content_split(
        [p.sha256 for p in posts], val_fraction=0.15, test_fraction=0.15, seed=SEED
    )
    splits = {p.id: str(side) for p, side in zip(posts, sides, strict=True)}
    animals = [i for i, p in enumerate(posts[:40]) if i != 3]
    far_train = next(i for i in animals if splits[posts[i].id] == "train")
    far_test = next(i for i in animals if splits[posts[i].id] == "test")
    vectors = np.vstack([ring(40, 1.0, 0.0), ring(30, 2.0, 50.0), ring(2, 1.0, -50.0)])
    vectors[far_train], vectors[far_test] = [40.0, 0.0], [-40.0, 0.0]
    vectors = np.vstack([vectors, vectors[3:4]])
    features = tmp_path / "features"
    write_features(features, [p.sha256 for p in posts], vectors, {"dim": 2})
    return Data(raw, features, splits, posts[far_train].id, posts[far_test].id)


def run(tmp_path, params, data: Data):
    return clean.run(
        params.base,
        params.clean,
        raw=data.raw,
        features=data.features,
        out=tmp_path / "clean",
        reports=tmp_path / "reports" / "clean",
        metrics=tmp_path / "reports" / "clean.json",
    ).report


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_drops_only_the_far_training_image(tmp_path, tiny_params, data):
    report = run(tmp_path, tiny_params, data)
    posts = read_posts(data.raw / POSTS_FILE)

    dropped = read_csv(tmp_path / "clean" / "dropped.csv")
    assert [row["id"] for row in dropped] == [data.far_train]
    assert float(dropped[0]["distance"]) > float(dropped[0]["threshold"])
    manifest = read_csv(tmp_path / "clean" / "manifest.csv")
    assert list(manifest[0]) == ["id", "sha256", "image", "label", "split", "distance"]
    kept_ids = {row["id"] for row in manifest}
    assert len(manifest) == 72 and kept_ids == {p.id for p in posts} - {data.far_train}
    assert all((data.raw / row["image"]).is_file() for row in manifest)
    by_id = {row["id"]: row["split"] for row in manifest}
    assert by_id == {i: side for i, side in data.splits.items() if i != data.far_train}
    assert by_id["animals-3"] == by_id["repost"]

    splits = [row["split"] for row in manifest]
    assert report["totals"] == {
        "before": 73,
        "after": 72,
        "dropped": 1,
        "flagged_val": 0,
        "flagged_test": 1,
        **{side: splits.count(side) for side in ("train", "val", "test")},
    }
    assert report["fitted_on"] == "train"
    assert report["classes"]["animals"]["before"] == 41  # 40 + the repost
    assert report["classes"]["animals"]["after"] == 40
    assert report["classes"]["animals"]["flagged_test"] == 1
    assert json.loads((tmp_path / "reports" / "clean.json").read_text()) == report

    pngs = sorted(p.name for p in (tmp_path / "reports" / "clean").iterdir())
    assert pngs == ["distances.png", "dropped_animals.png"]
    with Image.open(tmp_path / "reports" / "clean" / "dropped_animals.png") as sheet:
        assert sheet.size == (96, 110)


def test_the_test_split_keeps_every_image(tmp_path, tiny_params, data):
    """However strict the rule, it removes training images only: val and test stay whole."""
    strict = tiny_params.model_copy(
        update={"clean": tiny_params.clean.model_copy(update={"k_std": 0.01})}
    )
    report = run(tmp_path, strict, data)
    manifest = read_csv(tmp_path / "clean" / "manifest.csv")
    for side in ("val", "test"):
        expected = sorted(i for i, s in data.splits.items() if s == side)
        assert sorted(row["id"] for row in manifest if row["split"] == side) == expected
    assert data.far_test in {row["id"] for row in manifest}
    dropped = read_csv(tmp_path / "clean" / "dropped.csv")
    assert dropped and {data.splits[row["id"]] for row in dropped} == {"train"}
    assert report["totals"]["flagged_test"] >= 1


@pytest.mark.parametrize("log_photos", [False, True])
def test_logs_a_clean_run_to_mlflow(tmp_path, tiny_params, data, experiment, log_photos):
    """SECURITY.md: the contact sheet of photos reaches MLflow only when base.log_photos is on."""
    import mlflow

    base = tiny_params.base.model_copy(update={"log_photos": log_photos})
    run(tmp_path, tiny_params.model_copy(update={"base": base}), data)
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    assert [r.info.run_name for r in runs] == ["clean"]
    latest = runs[0]
    assert latest.data.metrics["clean.dropped"] == 1.0
    assert latest.data.metrics["clean.animals.after"] == 40.0
    assert latest.data.params["clean.k_std"] == "2.0"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(latest.info.run_id, "clean")}
    photos = {"clean/dropped_animals.png"} if log_photos else set()
    assert artifacts == {"clean/clean.json", "clean/distances.png"} | photos
    assert (tmp_path / "reports" / "clean" / "dropped_animals.png").is_file()  # kept locally


def test_disabled_keeps_everything(tmp_path, tiny_params, data):
    off = tiny_params.model_copy(
        update={"clean": tiny_params.clean.model_copy(update={"enabled": False})}
    )
    report = run(tmp_path, off, data)
    assert report["totals"]["after"] == 73 and report["totals"]["dropped"] == 0
    assert read_csv(tmp_path / "clean" / "dropped.csv") == []
    assert not list((tmp_path / "reports" / "clean").glob("dropped_*.png"))


def test_stale_features_are_refused(tmp_path, tiny_params, data):
    posts = read_posts(data.raw / POSTS_FILE)
    write_posts(data.raw / POSTS_FILE, posts[::-1])
    with pytest.raises(ValueError, match="re-run the featurize stage"):
        run(tmp_path, tiny_params, data)
    assert not (tmp_path / "clean" / "manifest.csv").exists()


def test_main_turns_missing_features_into_a_message(tmp_path, data, capsys, monkeypatch):
    from tests.helpers.params import tiny_params_path

    monkeypatch.chdir(tmp_path)
    argv = [
        "--params",
        str(tiny_params_path()),
        "--raw",
        str(data.raw),
        "--features",
        str(tmp_path / "none"),
        "--out",
        str(tmp_path / "clean"),
    ]
    assert clean.main(argv) == 2
    assert "run the featurize stage first" in capsys.readouterr().err


def test_main_writes_every_output(tmp_path, data, monkeypatch):
    from tests.helpers.params import tiny_params_path

    monkeypatch.chdir(tmp_path)  # a new experiment would keep its artifacts under ./mlruns
    argv = [
        "--params",
        str(tiny_params_path()),
        "--raw",
        str(data.raw),
        "--features",
        str(data.features),
        "--out",
        "clean",
        "--reports",
        "reports/clean",
        "--metrics",
        "reports/clean.json",
    ]
    assert clean.main(argv) == 0
    assert json.loads(Path("reports/clean.json").read_text())["totals"]["after"] == 72
    assert len(read_csv("clean/manifest.csv")) == 72 and len(read_csv("clean/dropped.csv")) == 1
    assert Path("reports/clean/distances.png").stat().st_size > 1000


def test_without_configured_classes_the_labels_found_are_the_classes(tmp_path, tiny_params, data):
    # base.classes: null (the shipped default): clean keeps every label the source found
    unset = tiny_params.model_copy(
        update={"base": tiny_params.base.model_copy(update={"classes": None})}
    )
    report = run(tmp_path, unset, data)
    assert report["totals"]["before"] == 73 and report["totals"]["dropped"] == 1
    labels = {row["label"] for row in read_csv(tmp_path / "clean" / "manifest.csv")}
    assert labels == set(report["classes"]) and len(labels) >= 2
