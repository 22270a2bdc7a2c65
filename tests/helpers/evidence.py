"""A test split of solid-colour photos and the evidence evaluate writes for one model on it.

Register's gate pairs a candidate with the re-scored champion image by image, so a test that
registers by hand needs what evaluate leaves: metrics.json with the test fingerprint and the
run id, per_class.json, and per_image.json on the same photos.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from taglens.data.posts import Post
from taglens.training.metrics import split_fingerprint
from tests.helpers.rawdata import solid_raw


def solid_test_split(raw: Path, clean: Path, classes) -> list[Post]:
    """data/raw and data/clean holding two solid-colour test photos per class."""
    colours = {
        c: [(20 * i, 90 + 60 * j, 250 - 20 * i) for j in range(2)] for i, c in enumerate(classes)
    }
    posts = solid_raw(raw, colours, size=32)
    clean.mkdir(parents=True, exist_ok=True)
    rows = [
        {"id": p.id, "sha256": p.sha256, "image": p.image, "label": p.label, "split": "test",
         "distance": 0.0}
        for p in posts
    ]  # fmt: skip
    pd.DataFrame(rows).to_csv(clean / "manifest.csv", index=False)
    return posts


def write_evidence(reports: Path, run_id: str, posts: list[Post], classes, right: bool) -> None:
    """metrics.json and evaluate/{per_class,per_image}.json of a model right on every test
    photo (`right`) or on none."""
    (reports / "evaluate").mkdir(parents=True, exist_ok=True)
    accuracy = 1.0 if right else 0.0
    fingerprint = split_fingerprint([p.sha256 for p in posts], [p.label for p in posts])
    metrics = {"accuracy": accuracy, "top3_accuracy": accuracy, "macro_f1": accuracy,
               "n_test": len(posts), "test_fingerprint": fingerprint, "model_run_id": run_id}
    (reports / "metrics.json").write_text(json.dumps(metrics))
    rows = [{"sha256": p.sha256, "label": p.label, "correct": right}
            for p in sorted(posts, key=lambda p: p.sha256)]  # fmt: skip
    per_image = {"model_run_id": run_id, "test_fingerprint": fingerprint, "images": rows}
    (reports / "evaluate" / "per_image.json").write_text(json.dumps(per_image))
    per_class = {c: {"recall": accuracy} for c in classes}
    (reports / "evaluate" / "per_class.json").write_text(json.dumps(per_class))
