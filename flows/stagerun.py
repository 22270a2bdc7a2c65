"""Run one DVC stage with `dvc repro --single-item`, streaming its output and keeping the error.

No Prefect here: the training flow wraps `run_stage` in a task and passes its run logger, so the
same code runs (and is tested) without a Prefect server.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

TAIL_LINES = 25
# Stage mains exit with 2 for errors a user must fix (bad params, missing input): never retried.
USER_ERROR_EXIT = 2
_EXITED = re.compile(r"exited with (-?\d+)")
_SKIPPED = re.compile(r"Stage '([^']+)' didn't change, skipping")
_QUIET_ENV = {
    "DVC_NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    # Progress bars are not a TTY here: one update every 10 s keeps the run log readable.
    "TQDM_MININTERVAL": "10",
    "PYTHONUNBUFFERED": "1",
}


class StageError(RuntimeError):
    """A DVC stage failed; the message carries the tail of its output (its own error)."""

    def __init__(self, stage: str, returncode: int, tail: list[str], stage_exit: int | None):
        self.stage = stage
        self.returncode = returncode
        self.tail = tail
        self.stage_exit = stage_exit
        how = f"its command exited with {stage_exit}" if stage_exit is not None else "dvc failed"
        super().__init__(
            f"stage '{stage}' failed ({how}; dvc exit {returncode}). Last output:\n"
            + "\n".join(tail)
        )

    @property
    def is_user_error(self) -> bool:
        """True when the stage reported an error a retry cannot fix (bad param or input)."""
        return self.stage_exit == USER_ERROR_EXIT

    @property
    def may_be_transient(self) -> bool:
        """True when the stage's own command crashed in a way a retry might fix (network).

        DVC's own failures (an invalid dvc.yaml, a missing dependency) and user errors are not.
        """
        return self.stage_exit is not None and not self.is_user_error


@dataclass(frozen=True)
class StageResult:
    """What one `dvc repro --single-item` did."""

    stage: str
    ran: bool  # False when DVC found the stage unchanged and skipped it
    seconds: float


def stage_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for DVC, with this interpreter's bin dir first on PATH.

    So `python -m stages.X` in dvc.yaml runs in the flow's virtual environment even when that
    environment is not activated (a worker started by its full path).
    """
    env = dict(os.environ if base is None else base)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    for key, value in _QUIET_ENV.items():
        env.setdefault(key, value)
    return env


def check_repo(repo: Path) -> Path:
    """Resolve the repository directory, or raise a ValueError that says what to pass instead."""
    repo = Path(repo).expanduser().resolve()
    if not (repo / "dvc.yaml").is_file():
        raise ValueError(
            f"{repo} has no dvc.yaml: pass repo=<the taglens checkout> (the directory that holds "
            "dvc.yaml and params.yaml)"
        )
    if not (repo / ".dvc").is_dir():
        raise ValueError(f"{repo} is not a DVC repository: run `dvc init` there first")
    return repo


def run_stage(
    stage: str,
    repo: Path,
    *,
    force: bool = False,
    log: logging.Logger | logging.LoggerAdapter = logger,
) -> StageResult:
    """Reproduce one stage through DVC, so dvc.lock and the cache are updated like `dvc repro`.

    Args:
        stage: the dvc.yaml stage name.
        repo: the repository directory (holds dvc.yaml).
        force: re-run the stage even when its deps and params did not change.
        log: where each output line goes (the Prefect run logger inside a flow).

    Returns:
        Whether the stage ran or was skipped as unchanged, and how long it took.

    Raises:
        StageError: the stage (or DVC) failed; the message holds the tail of its output.
    """
    repo = check_repo(repo)
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
    if force:
        cmd.append("--force")
    log.info("running %s in %s", " ".join(cmd[2:]), repo)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    skipped = False
    started = time.monotonic()
    # stderr merged into stdout keeps the stage's log lines and DVC's messages in order.
    proc = subprocess.Popen(
        cmd, cwd=repo, env=stage_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, errors="replace", bufsize=1,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            if not line.strip():
                continue
            log.info("[%s] %s", stage, line)
            tail.append(line)
            match = _SKIPPED.search(line)
            skipped = skipped or bool(match and match.group(1) == stage)
        returncode = proc.wait()
    finally:
        if proc.poll() is None:  # cancelled or crashed while streaming: do not leave DVC running
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    seconds = time.monotonic() - started
    if returncode != 0:
        lines = list(tail)
        exits = [int(m.group(1)) for line in lines for m in _EXITED.finditer(line)]
        error = StageError(stage, returncode, lines, exits[-1] if exits else None)
        log.error("%s", error)
        raise error
    log.info("stage %s %s in %.1f s", stage, "skipped (unchanged)" if skipped else "ran", seconds)
    return StageResult(stage=stage, ran=not skipped, seconds=round(seconds, 2))
