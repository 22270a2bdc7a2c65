"""Fuzz every parser a stranger's bytes reach (atheris, time-bounded) and replay past crashes."""

from __future__ import annotations

import hashlib
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import fuzz_targets
import pytest

HERE = Path(__file__).resolve().parent
HARNESS = HERE / "fuzz_harness.py"
# Per-target budget in CI: the run stops at whichever limit comes first.
MAX_SECONDS = int(os.environ.get("TAGLENS_FUZZ_SECONDS", "4"))
MAX_RUNS = int(os.environ.get("TAGLENS_FUZZ_RUNS", "20000"))
TARGETS = sorted(fuzz_targets.targets())


def _corpus_cases() -> list:
    cases = []
    for target in TARGETS:
        folder = fuzz_targets.CORPUS / target
        for path in sorted(folder.glob("*")) if folder.is_dir() else []:
            cases.append(pytest.param(target, path, id=f"{target}/{path.name}"))
    return cases


@pytest.mark.parametrize(("target", "path"), _corpus_cases())
def test_past_crash_is_now_a_clean_refusal(target, path):
    """Given an input that once crashed the parser, the parser now accepts or refuses it cleanly."""
    spec = fuzz_targets.targets()[target]
    try:
        spec.run(path.read_bytes())
    except spec.allowed as exc:
        assert str(exc), "a refusal must say what is wrong"
    # Anything else propagates and fails the test with the parser's traceback.


def test_corpus_covers_every_parser_found_crashing():
    found = {p.parent.name for p in fuzz_targets.CORPUS.glob("*/*")}
    assert found <= set(TARGETS), f"corpus folders without a target: {found - set(TARGETS)}"
    assert {"params_file", "posts_jsonl", "ingest_image", "upload_image"} <= found


def _rss_limit_mb(headroom_mb: int = 2048) -> int:
    """libFuzzer's memory limit: `headroom_mb` above the peak RSS the harness starts with.

    libFuzzer reads its peak RSS from getrusage, and Linux carries that peak across fork and exec:
    a harness started from a pytest process that grew to 2 GB "starts" at 2 GB although it uses
    under 100 MB. A fixed limit would then flag every run as out of memory.
    """
    inherited_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # KiB on Linux
    return inherited_mb + headroom_mb


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_run_finds_no_crash(target, tmp_path):
    """Given valid seeds, a bounded atheris run ends without an unexpected exception."""
    corpus, artifacts = tmp_path / "corpus", tmp_path / "crashes"
    corpus.mkdir()
    artifacts.mkdir()
    for seed in fuzz_targets.seeds(target):
        (corpus / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    args = [
        sys.executable,
        str(HARNESS),
        target,
        f"-runs={MAX_RUNS}",
        f"-max_total_time={MAX_SECONDS}",
        f"-rss_limit_mb={_rss_limit_mb()}",
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/",
        str(corpus),
    ]
    env = {**os.environ, "TAGLENS_FUZZ_SCRATCH": str(tmp_path)}
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=MAX_SECONDS + 120, env=env
    )
    crashes = sorted(artifacts.iterdir())
    log = result.stderr[-3000:]
    assert not crashes, (
        f"{target} crashed on {crashes[0]} ({crashes[0].read_bytes()[:64]!r}...): copy it to "
        f"{fuzz_targets.CORPUS / target}/ and fix the parser\n{log}"
    )
    assert result.returncode == 0, log
    runs = re.search(r"stat::number_of_executed_units:\s*(\d+)", result.stderr)
    assert runs and int(runs.group(1)) > 0, f"the fuzzer ran no input\n{log}"
