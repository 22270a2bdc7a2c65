"""Joining cached features with the clean split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from taglens.training.splits import load_splits, read_manifest

CLASSES = ("cat", "dog")


def _manifest(tmp_path, rows):
    path = tmp_path / "manifest.csv"
    pd.DataFrame(rows, columns=["id", "sha256", "image", "label", "split", "distance"]).to_csv(
        path, index=False
    )
    return tmp_path


def test_splits_pick_each_rows_vector_by_sha(tmp_path):
    shas = ["a" * 64, "b" * 64, "c" * 64]
    np.savez(tmp_path / "features.npz", sha256=np.array(shas), vectors=np.eye(3, dtype="float32"))
    manifest = read_manifest(
        _manifest(
            tmp_path,
            [
                ("2", shas[2], "images/c.jpg", "dog", "train", 0.1),
                ("0", shas[0], "images/a.jpg", "cat", "train", 0.2),
                ("1", shas[1], "images/b.jpg", "dog", "test", 0.3),
            ],
        ),
        CLASSES,
    )
    splits = load_splits(tmp_path, manifest, CLASSES)
    np.testing.assert_array_equal(splits["train"].vectors, [[0, 0, 1], [1, 0, 0]])
    np.testing.assert_array_equal(splits["train"].labels, [1, 0])
    assert splits["val"].vectors.shape == (0, 3) and list(splits["test"].labels) == [1]


def test_manifest_with_unknown_labels_or_images_without_features_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not in base.classes"):
        read_manifest(_manifest(tmp_path, [("0", "a" * 64, "x.jpg", "fox", "train", 0)]), CLASSES)
    manifest = read_manifest(
        _manifest(tmp_path, [("0", "d" * 64, "x.jpg", "cat", "train", 0)]), CLASSES
    )
    np.savez(tmp_path / "features.npz", sha256=np.array(["a" * 64]), vectors=np.ones((1, 2)))
    with pytest.raises(ValueError, match="re-run featurize and clean"):
        load_splits(tmp_path, manifest, CLASSES)
    with pytest.raises(FileNotFoundError, match="run the clean stage"):
        read_manifest(tmp_path / "missing", CLASSES)
