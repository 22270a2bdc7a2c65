"""Helpers of the reliability suite: stage subprocesses, seeded kills, params variants.

Stages run as real subprocesses (`python -m stages.NAME`) in a copy of the repository, exactly as
`dvc repro` runs them, so a SIGKILL hits the same code a user's interrupted run would.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.helpers import stages
from tests.helpers.params import write_tiny_params
from tests.helpers.paths import ROOT
from tests.helpers.repocopy import copy_source_tree
from tests.helpers.stages import STAGE_ARGS

# The reliability pipeline: small, but with enough feature shards (25) that a kill lands between
# two of them, and 32 px images so a forward pass is quick.
PIPELINE_OVERRIDES = {
    ("scrape", "demo", "images_per_class"): 20,
    ("model", "image_size"): 32,
    ("featurize", "batch_size"): 8,
    ("featurize", "shard_size"): 8,
    ("train", "epochs"): 3,
}
# A stand-in secret every stage subprocess gets as the owner-hash salt: the security tests look
# for it in every output, log and MLflow record of the reference pipeline.
FAKE_SECRET = "fake-secret-9f3c1e7a-never-stored"


def stage_env(repo: Path, **extra: str) -> dict[str, str]:
    """A stage subprocess's environment (tests.helpers.stages), with the stand-in salt secret."""
    return stages.stage_env(repo / "mlruns", TAGLENS_OWNER_SALT=FAKE_SECRET, **extra)


def write_params(repo: Path, overrides: dict[tuple[str, ...], object]) -> Path:
    """Write the tiny params with some keys changed (each must exist) as the repo's params.yaml."""
    changes = {".".join(path): value for path, value in overrides.items()}
    return write_tiny_params(repo / "params.yaml", changes)


def copy_repo(dest: Path, source: Path = ROOT) -> Path:
    """A copy of the repository's source without run state (tests/helpers/repocopy.py).

    Tests that compare with the `pipeline` fixture copy from it, so both run the same code.
    """
    return copy_source_tree(dest, source)


def run_stage(
    repo: Path, stage: str, *args: str, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run `python -m stages.<stage>` in `repo` to completion (the output is captured)."""
    cmd = [sys.executable, "-m", f"stages.{stage}", *(args or STAGE_ARGS[stage])]
    return subprocess.run(
        cmd, cwd=repo, env=env or stage_env(repo), capture_output=True, text=True, timeout=timeout
    )


def start_stage(
    repo: Path, stage: str, *args: str, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """Start `python -m stages.<stage>` in `repo`, its output going to `log`."""
    cmd = [sys.executable, "-m", f"stages.{stage}", *(args or STAGE_ARGS[stage])]
    handle = open(log, "w")  # noqa: SIM115 - the child owns it; closed by kill_when / the OS
    return subprocess.Popen(
        cmd,
        cwd=repo,
        env=env or stage_env(repo),
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill_when(
    proc: subprocess.Popen,
    ready: Callable[[], bool],
    *,
    seed: int,
    max_delay: float,
    timeout: float = 600,
) -> float:
    """SIGKILL `proc` a seeded random delay after `ready()` first holds.

    Returns the delay used. Fails the test if the process ends before it could be killed (the
    kill point would then not be inside the work, and the test would prove nothing).
    """
    delay = random.Random(seed).uniform(0, max_delay)
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the process ended (rc {proc.returncode}) before the kill"
        assert time.monotonic() < deadline, "the kill point was never reached"
        time.sleep(0.02)
    time.sleep(delay)
    assert proc.poll() is None, f"the process ended (rc {proc.returncode}) before the kill"
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: tf.data threads die with it
    assert proc.wait(timeout=60) == -signal.SIGKILL
    return delay


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """Assert a finished subprocess succeeded, showing its output otherwise."""
    assert result.returncode == 0, f"rc {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result
