"""Stage and DVC subprocesses as a user's run starts them: command lines and environment."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from taglens import toolenv
from tests.helpers.paths import ROOT

BIN = Path(sys.executable).parent  # the virtual environment's executables (dvc, prefect, ...)
DVC = str(BIN / "dvc")


def dvc_stage_args(dvc_yaml: Path = ROOT / "dvc.yaml") -> dict[str, list[str]]:
    """Each stage's arguments after `stages.NAME` in its dvc.yaml `cmd`, so tests run it alike."""
    stages = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"]
    args: dict[str, list[str]] = {}
    for name, spec in stages.items():
        words = shlex.split(spec["cmd"])
        module = next(i for i, word in enumerate(words) if word.startswith("stages."))
        args[name] = words[module + 1 :]
    return args


STAGE_ARGS = dvc_stage_args()


def stage_env(mlflow_store: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a stage or `dvc` subprocess in a repository copy.

    The virtual environment comes first on PATH (dvc.yaml runs `python -m stages.X`), output is
    unbuffered, and the tools are quiet. MLflow logs to `mlflow_store`'s SQLite database, or,
    when it is None, to the repository's own `mlruns/` as a user's run would.

    Args:
        mlflow_store: A directory for MLflow's database, or None for the default store.
        **extra: More variables, set last.
    """
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    # MLflow's set_registry_uri also exports MLFLOW_REGISTRY_URI: an earlier test's store must
    # not become this subprocess's registry (`mlflow models serve` would look there).
    env.pop("MLFLOW_REGISTRY_URI", None)
    if mlflow_store is not None:
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(mlflow_store) / 'mlflow.db'}"
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    toolenv.apply(env)
    env.update(extra)
    return env


def run_ok(args: list[str], repo: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run a command in `repo` as a stage subprocess would; fail the test with its output."""
    result = subprocess.run(
        args, cwd=repo, env=stage_env(), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def dvc_ok(repo: Path, *args: str) -> subprocess.CompletedProcess:
    """`dvc ARGS` in `repo` (the venv's dvc), failing the test with its output."""
    return run_ok([DVC, *args], repo)
