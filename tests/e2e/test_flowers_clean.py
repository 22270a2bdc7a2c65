"""featurize + clean on real photos (../shared flowers) with pretrained MobileNet weights."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from stages import clean, featurize
from taglens.data.posts import POSTS_FILE, write_posts
from taglens.features.split import content_split
from taglens.features.store import read_features
from taglens.params import ModelParams
from tests.helpers.rawdata import add_post

PER_CLASS = 20


@pytest.mark.slow
def test_flowers_featurize_and_clean_counts_add_up(
    flowers_dir, mobilenet_weights, tiny_params, tmp_path
):
    # Given 20 real photos per class (every 30th file, so a spread of each folder)
    raw = tmp_path / "raw"
    classes = sorted(p.name for p in flowers_dir.iterdir() if p.is_dir())
    posts = []
    for label in classes:
        for path in sorted((flowers_dir / label).glob("*.jpg"))[::30][:PER_CLASS]:
            posts.append(add_post(raw, label, path.read_bytes(), f"{label}-{path.stem}"))
    write_posts(raw / POSTS_FILE, posts)
    model = ModelParams(backbone="mobilenet", image_size=96, weights=str(mobilenet_weights))
    params = tiny_params.featurize.model_copy(
        update={
            "batch_size": 32,
            "jit_compile": False,
            "shard_size": 40,
            "engine": "tensorflow",
            "views": (),
        }
    )

    # When featurize runs twice and clean once
    first = featurize.run(
        model, params, tiny_params.clean, seed=0, raw=raw, out=tmp_path / "features", progress=False
    )
    second = featurize.run(
        model, params, tiny_params.clean, seed=0, raw=raw, out=tmp_path / "features", progress=False
    )
    base = tiny_params.base.model_copy(update={"classes": tuple(classes)})
    import mlflow

    name = f"flowers-e2e-{tmp_path.name}"
    mlflow.create_experiment(name, artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment(name)
    report = clean.run(
        base,
        tiny_params.clean,
        raw=raw,
        features=tmp_path / "features",
        out=tmp_path / "clean",
        reports=tmp_path / "reports" / "clean",
        metrics=tmp_path / "reports" / "clean.json",
    ).report

    # Then features were computed once, with a real 1024-d MobileNet vector per photo
    n = len(posts)
    assert n == PER_CLASS * len(classes) == 100
    assert (first.computed, second.computed, second.cached) == (n, 0, n)
    shas, vectors = read_features(tmp_path / "features")
    assert vectors.shape == (n, 1024) and len(set(shas.tolist())) == n
    # pretrained features separate the classes: nearest class centroid beats chance (0.2) easily
    labels = np.array([p.label for p in posts])
    centroids = np.stack([vectors[labels == c].mean(axis=0) for c in classes])
    nearest = np.argmin(((vectors[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (np.array(classes)[nearest] == labels).mean() > 0.6

    # and the clean report's counts add up
    totals = report["totals"]
    assert totals["before"] == n == totals["after"] + totals["dropped"]
    assert totals["train"] + totals["val"] + totals["test"] == totals["after"]
    assert 0 <= totals["dropped"] <= n // 10  # k=2 drops a few percent, not a fifth
    per_class = report["classes"]
    assert set(per_class) == set(classes)
    assert all(c["before"] == PER_CLASS for c in per_class.values())
    assert sum(c["after"] for c in per_class.values()) == totals["after"]
    assert all(c["threshold"] > c["mean"] for c in per_class.values())
    with open(tmp_path / "clean" / "manifest.csv", newline="") as handle:
        manifest = list(csv.DictReader(handle))
    with open(tmp_path / "clean" / "dropped.csv", newline="") as handle:
        dropped = list(csv.DictReader(handle))
    assert (len(manifest), len(dropped)) == (totals["after"], totals["dropped"])
    for label in classes:
        sides = [row["split"] for row in manifest if row["label"] == label]
        assert len(sides) == per_class[label]["after"]
    # the rule drops training images only: every val/test image of the content split is kept
    held_out = {row["id"] for row in manifest if row["split"] != "train"}
    sides = content_split(
        [p.sha256 for p in posts],
        [p.owner for p in posts],
        val_fraction=0.15,
        test_fraction=0.15,
        seed=42,
    )
    assert held_out == {p.id for p, side in zip(posts, sides, strict=True) if side != "train"}
    assert not held_out & {row["id"] for row in dropped}
    sheets = {p.name for p in (tmp_path / "reports" / "clean").glob("dropped_*.png")}
    assert sheets == {f"dropped_{label}.png" for label in {row["label"] for row in dropped}}
