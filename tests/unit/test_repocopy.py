"""Tests copy the source tree without the run state a user left in the work tree."""

from __future__ import annotations

from tests.helpers.repocopy import copy_source_tree


def test_a_copy_leaves_out_what_make_demo_wrote(tmp_path):
    # Given a work tree after `make demo`, `dvc push` and an MLflow run
    src = tmp_path / "src"
    for name in (
        "dvc.yaml",
        "params.yaml",
        "dvc.lock",
        "taglens/a.py",
        ".dvc/config",
        ".dvc/config.local",
        ".dvc/cache/files/md5/ab/cd",
        ".dvc/tmp/lock",
        "data/raw/x.png",
        "models/m.keras",
        "reports/metrics.json",
        "mlruns/mlflow.db",
        "predictions/demo.csv",
        "taglens/__pycache__/a.pyc",
        "tests/fixtures/params.yaml",
        "docs/data/notes.md",
    ):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(name)

    # When a test copies it
    dest = copy_source_tree(tmp_path / "dest", src)

    # Then only the source came along, and the store directory exists empty
    copied = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert copied == [
        ".dvc/config",
        "docs/data/notes.md",
        "dvc.yaml",
        "params.yaml",
        "taglens/a.py",
        "tests/fixtures/params.yaml",
    ]
    assert list((dest / "mlruns").iterdir()) == []
