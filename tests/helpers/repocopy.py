"""A copy of the project's source tree for tests that run DVC, stages or flows in a fresh repo.

The copy never carries what someone ran in the work tree: `make demo` (or any `dvc repro`,
`dvc exp run`, batch predict, MLflow UI) leaves dvc.lock, DVC outputs, DVC's cache and local
config, predictions and an MLflow store behind, and a test that copied them would start from
that state instead of a clean checkout.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.helpers.paths import ROOT

# Run state at the top of the work tree (DVC outputs and lock, stores, tool caches).
RUN_STATE = frozenset(
    {
        ".venv",
        ".git",
        "dvc.lock",
        "data",
        "models",
        "reports",
        "predictions",
        "mlruns",
        "test-results",
        ".prefect",
        ".pytest_cache",
        ".ruff_cache",
        ".services",
    }
)
# DVC's own local state inside .dvc/ (the committed .dvc/config is kept).
DVC_STATE = frozenset({"cache", "tmp", "config.local"})
ANYWHERE = ("__pycache__", "*.egg-info", "*.pyc")


def copy_source_tree(dest: Path, source: Path = ROOT) -> Path:
    """Copy `source` to `dest` without run state; `dest/mlruns/` is created empty.

    Args:
        dest: The new directory (must not exist).
        source: The tree to copy; the project root unless a test copies a prepared repo.

    Returns:
        `dest`.
    """
    anywhere = shutil.ignore_patterns(*ANYWHERE)

    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = set(anywhere(directory, names))
        here = Path(directory)
        if here == source:
            skipped |= RUN_STATE.intersection(names)
        elif here == source / ".dvc":
            skipped |= DVC_STATE.intersection(names)
        return skipped

    shutil.copytree(source, dest, ignore=ignore)
    (dest / "mlruns").mkdir(exist_ok=True)
    return dest
