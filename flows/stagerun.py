"""Run one DVC stage with `dvc repro --single-item`, streaming its output and keeping the error.

What happened is read from machine-readable sources, never from DVC's human text: whether the
stage will run from `dvc status --json STAGE` before it, and the stage command's own exit code
from the file `stages/run.sh` writes when `TAGLENS_STAGE_EXIT_FILE` is set.

No Prefect here: the training flow wraps `run_stage` in a task and passes its run logger, so the
same code runs (and is tested) without a Prefect server.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from taglens import toolenv
from taglens.errors import TaglensError

logger = logging.getLogger(__name__)

TAIL_LINES = 25
# Stage mains exit with 2 for errors a user must fix (bad params, missing input): never retried.
USER_ERROR_EXIT = 2
# stages/run.sh writes the stage command's exit code to this file (when set).
EXIT_FILE_ENV = "TAGLENS_STAGE_EXIT_FILE"
_STAGE_ENV = {
    # Not a terminal here: progress is a log line every 10 s (taglens.progress), not a bar.
    "TAGLENS_PROGRESS_SECONDS": "10",
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
    for key, value in _STAGE_ENV.items():
        env.setdefault(key, value)
    toolenv.apply(env)
    return env


def check_repo(repo: Path) -> Path:
    """Resolve the repository directory, or raise a ValueError that says what to pass instead."""
    repo = Path(repo).expanduser().resolve()
    if not (repo / "dvc.yaml").is_file():
        raise TaglensError(
            f"{repo} has no dvc.yaml: pass repo=<the taglens checkout> (the directory that holds "
            "dvc.yaml and params.yaml)"
        )
    if not (repo / ".dvc").is_dir():
        raise TaglensError(f"{repo} is not a DVC repository: run `dvc init` there first")
    return repo


def stage_changed(stage: str, repo: Path, env: dict[str, str] | None = None) -> bool:
    """Whether `dvc repro` would run `stage` (from `dvc status --json STAGE`).

    Raises:
        StageError: DVC could not tell (an invalid dvc.yaml, an unknown stage).
    """
    cmd = [sys.executable, "-m", "dvc", "status", "--json", stage]
    result = subprocess.run(
        cmd, cwd=repo, env=env or stage_env(), capture_output=True, text=True, errors="replace"
    )
    try:
        if result.returncode != 0:
            raise ValueError(result.returncode)
        status = json.loads(result.stdout or "{}")
    except ValueError:
        tail = (result.stdout + result.stderr).strip().splitlines()[-TAIL_LINES:]
        raise StageError(stage, result.returncode, tail, None) from None
    # Keys are stage names, or `path/dvc.yaml:stage` outside the root dvc.yaml.
    return any(key == stage or key.endswith(f":{stage}") for key in status)


def _read_exit_code(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None  # DVC failed before the command ran, or the command bypasses stages/run.sh


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
    env = stage_env()
    will_run = force or stage_changed(stage, repo, env)
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
    if force:
        cmd.append("--force")
    log.info("running %s in %s", " ".join(cmd[2:]), repo)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="taglens-stage-") as scratch:
        exit_file = Path(scratch) / "exit-code"
        env[EXIT_FILE_ENV] = str(exit_file)
        returncode = _stream(cmd, repo, env, stage, tail, log)
        stage_exit = _read_exit_code(exit_file)
    seconds = time.monotonic() - started
    if returncode != 0:
        error = StageError(stage, returncode, list(tail), stage_exit)
        log.error("%s", error)
        raise error
    log.info("stage %s %s in %.1f s", stage, "ran" if will_run else "skipped (unchanged)", seconds)
    return StageResult(stage=stage, ran=will_run, seconds=round(seconds, 2))


def _stream(
    cmd: list[str],
    repo: Path,
    env: dict[str, str],
    stage: str,
    tail: deque[str],
    log: logging.Logger | logging.LoggerAdapter,
) -> int:
    """Run `cmd`, sending each output line to `log` and keeping the last ones in `tail`."""
    # stderr merged into stdout keeps the stage's log lines and DVC's messages in order.
    proc = subprocess.Popen(
        cmd,
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
    )
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            if line.strip():
                log.info("[%s] %s", stage, line)
                tail.append(line)
        return proc.wait()
    finally:
        if proc.poll() is None:  # cancelled or crashed while streaming: leave nothing running
            _stop_tree(proc)


def _stop_tree(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Stop DVC and what it started: SIGTERM to all, SIGKILL to what is left after `timeout`.

    DVC does not pass a SIGTERM on: stopped alone, it leaves `run.sh` and the stage running,
    still writing the outputs the next run writes. (A Prefect worker cancelling the flow run
    stops the whole process group, which this process shares with DVC.)
    """
    import psutil

    try:
        processes = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.Error:
        processes = []
    for process in processes:
        try:
            process.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass
    proc.wait()


def default_remote(repo: Path, env: dict[str, str] | None = None) -> str | None:
    """The name of the repository's default DVC remote, or None when none is configured."""
    cmd = [sys.executable, "-m", "dvc", "remote", "default"]
    result = subprocess.run(
        cmd, cwd=repo, env=env or stage_env(), capture_output=True, text=True, errors="replace"
    )
    name = result.stdout.strip()
    return name if result.returncode == 0 and name else None


def push(repo: Path, *, log: logging.Logger | logging.LoggerAdapter = logger) -> str | None:
    """`dvc push` the outputs dvc.lock records to the default remote, if one is configured.

    Returns:
        The remote pushed to, or None when there is none (nothing is done).

    Raises:
        StageError: the push failed (stage name `push`); the message holds DVC's last output.
    """
    repo = check_repo(repo)
    env = stage_env()
    remote = default_remote(repo, env)
    if remote is None:
        log.info("no default DVC remote in %s: nothing pushed", repo)
        return None
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    returncode = _stream([sys.executable, "-m", "dvc", "push"], repo, env, "push", tail, log)
    if returncode != 0:
        raise StageError("push", returncode, list(tail), None)
    log.info("pushed data, models and reports to DVC remote %s", remote)
    return remote
