"""Three "weeks" of the real pipeline (folder source, `dvc repro`, MLflow registry): the loop works.

Week 1 makes a champion. Week 2 adds photos: the challenger is scored beside the champion
re-scored on the same (new) test images, paired image by image, and promoted because it is
better beyond chance (McNemar's p below register.significance). Week 3 adds photos and trains
with a deliberately bad setting: it is refused, with both scores and the p-value in the history. A
photo's split never changes, so week 1's test photos are test photos in weeks 2 and 3.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.params import write_tiny_params
from tests.helpers.repocopy import copy_source_tree
from tests.helpers.stages import DVC, stage_env

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

CLASSES = ("animals", "art", "food")
HUES = {"animals": (200, 60, 40), "art": (40, 170, 60), "food": (50, 70, 210)}


def add_photos(folder: Path, start: int, count: int) -> None:
    """`count` more noisy 48 px photos per class, numbered from `start` (never rewrites one)."""
    for label in CLASSES:
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + count):
            rng = np.random.default_rng([CLASSES.index(label), i])
            pixels = np.asarray(HUES[label], float) + rng.normal(0, 70, (48, 48, 3))
            for _ in range(3):  # clutter of other colours, so a class is a tendency, not a rule
                y, x = rng.integers(0, 36, 2)
                pixels[y : y + 12, x : x + 12] = rng.integers(0, 256, 3)
            image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            image.save(folder / label / f"{label}_{i:04d}.png")


def _run(repo: Path, *args: str) -> str:
    result = subprocess.run(
        args, cwd=repo, env=stage_env(), capture_output=True, text=True, timeout=1200
    )
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def _dvc(repo: Path, *args: str) -> str:
    return _run(repo, DVC, *args)


def _week(repo: Path) -> dict:
    """Re-scrape and `dvc repro`, as the weekly flow does; return what a user would look at."""
    _dvc(repo, "repro", "--force", "--single-item", "scrape")  # the folder is outside DVC's view
    _dvc(repo, "repro")
    with open(repo / "data/clean/manifest.csv", newline="") as handle:
        manifest = list(csv.DictReader(handle))
    return {
        "register": json.loads((repo / "reports/register.json").read_text()),
        "metrics": json.loads((repo / "reports/metrics.json").read_text()),
        "test": {row["sha256"] for row in manifest if row["split"] == "test"},
        "splits": {row["sha256"]: row["split"] for row in manifest},
    }


def test_three_weeks_of_retraining(tmp_path):
    # Given a repository set up for a folder of photos (tiny images, random backbone weights)
    repo = tmp_path / "repo"
    copy_source_tree(repo)
    photos = tmp_path / "photos"
    setting = {
        "base.classes": list(CLASSES),
        "scrape.source": "folder",
        "scrape.folder": str(photos),
        "train.epochs": 8,
        # the generated classes differ by colour channel: a head that reads the colour view is
        # perfect from week 1, leaving later weeks nothing to beat; the loop is what is tested
        "train.colour": False,
        "clean.test_fraction": 0.25,
    }
    write_tiny_params(repo / "params.yaml", setting)
    _run(repo, "git", "init", "-q")
    _run(repo, "git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A")
    _run(repo, "git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init")

    # Week 1: a few photos per class make the first champion
    add_photos(photos, 0, 12)
    one = _week(repo)
    assert one["register"]["version"] == "1" and one["register"]["decision"] == "champion"
    assert one["register"]["test_fingerprint"] == one["metrics"]["test_fingerprint"]

    # Week 2: many more photos; the champion is re-scored on this week's test images
    add_photos(photos, 12, 48)
    two = _week(repo)
    reg = two["register"]
    assert reg["version"] == "2" and reg["compared_with"] == "1"
    assert reg["champion_rescored"] is True
    assert reg["test_fingerprint"] == two["metrics"]["test_fingerprint"]
    assert reg["test_fingerprint"] != one["metrics"]["test_fingerprint"]
    assert reg["score"] == two["metrics"]["accuracy"]
    assert reg["decision"] == "champion", reg["reason"]  # more data, a better model
    assert reg["score"] > reg["champion_score"]
    assert one["test"] <= two["test"]  # last week's test photos are still test photos
    assert all(
        two["splits"][sha] == side for sha, side in one["splits"].items() if sha in two["splits"]
    )

    # Week 3: more photos, and a setting that cannot learn: refused, with both scores recorded
    add_photos(photos, 60, 12)
    write_tiny_params(
        repo / "params.yaml", {**setting, "train.learning_rate": 1e-7, "train.epochs": 1}
    )
    three = _week(repo)
    reg = three["register"]
    assert reg["version"] == "3" and reg["compared_with"] == "2"
    assert reg["decision"] == "challenger" and reg["champion"] == "2"
    assert reg["champion_rescored"] is True and reg["score"] < reg["champion_score"]
    assert "does not beat" in reg["reason"] or "recall drops" in reg["reason"]
    assert one["test"] <= two["test"] <= three["test"]

    history = [
        json.loads(line) for line in (repo / "reports/promotions.jsonl").read_text().splitlines()
    ]
    assert [(h["version"], h["decision"], h["champion"]) for h in history] == [
        ("1", "champion", "1"),
        ("2", "champion", "2"),
        ("3", "challenger", "2"),
    ]
    for row, week in zip(history, (one, two, three), strict=True):
        assert row["score"] == week["register"]["score"]
        assert row["test_fingerprint"] == week["metrics"]["test_fingerprint"]
        assert row["p_value"] == week["register"]["p_value"]
        assert row["reason"] == week["register"]["reason"]
    # Week 1 had no champion to pair with; weeks 2 and 3 were paired image by image with it
    assert history[0]["p_value"] is None and history[0]["n_paired"] is None
    for row, week in zip(history[1:], (two, three), strict=True):
        assert (
            0.0 <= row["p_value"] <= 1.0
            and f"McNemar exact p = {row['p_value']:.3g}" in (row["reason"])
        )
        assert row["n_paired"] == week["metrics"]["n_test"]
        assert row["ci_low"] <= row["difference"] <= row["ci_high"]
        assert row["difference"] == pytest.approx(row["score"] - row["champion_score"])
    assert history[1]["p_value"] < 0.05  # week 2's gain is beyond chance
    assert history[2]["champion_score"] == reg["champion_score"] is not None
    (tmp_path / "promotions.json").write_text(json.dumps(history, indent=1))  # to read after

    # An experiment never moves the champion: one asked to register (on_experiment: challenger)
    # under a fresh model name (where it would be the first version, so the gate alone would
    # crown it) stays challenger
    trial = ["-S", "register.model_name=taglens-trial", "-S", "register.on_experiment=challenger"]
    _dvc(repo, "exp", "run", *trial)
    exp = json.loads((repo / "reports/register.json").read_text())
    assert exp["model_name"] == "taglens-trial" and exp["decision"] == "challenger"
    assert exp["reason"].startswith("held: registered from `dvc exp run`"), exp["reason"]
    assert exp["champion"] is None

    from mlflow import MlflowClient

    store = f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    assert str(client.get_model_version_by_alias("taglens", "champion").version) == "2"
