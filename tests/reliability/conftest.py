"""Fixtures of the reliability suite (helpers live in reliability_kit.py, importable by name)."""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_kit import PIPELINE_OVERRIDES, copy_repo, ok, run_stage, write_params


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory) -> Path:
    """A repo copy after one uninterrupted scrape, featurize, clean and train (the reference).

    Tests copy what they need from it; they must not change it.
    """
    repo = copy_repo(tmp_path_factory.mktemp("reliability") / "repo")
    write_params(repo, PIPELINE_OVERRIDES)
    for stage in ("scrape", "featurize", "clean", "train"):
        result = ok(run_stage(repo, stage))
        (repo / f"{stage}.log").write_text(result.stdout + result.stderr)  # read by test_security
    return repo
