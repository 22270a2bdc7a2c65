"""The tests' own helpers: stage subprocesses as dvc.yaml runs them, no conftest imports."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from taglens.toolenv import TOOL_ENV
from tests.helpers.paths import ROOT
from tests.helpers.stages import BIN, STAGE_ARGS, dvc_stage_args, stage_env


def test_stage_args_are_read_from_dvc_yaml(tmp_path):
    dvc_yaml = tmp_path / "dvc.yaml"
    dvc_yaml.write_text(
        "stages:\n"
        "  clean:\n"
        "    cmd: sh stages/run.sh stages.clean --params params.yaml --out 'data/a b'\n"
    )
    assert dvc_stage_args(dvc_yaml) == {"clean": ["--params", "params.yaml", "--out", "data/a b"]}


def test_every_dvc_stage_has_its_args():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert STAGE_ARGS.keys() == stages.keys()
    for name, args in STAGE_ARGS.items():
        assert stages[name]["cmd"].endswith(f"stages.{name} " + " ".join(args))


def test_stage_env_puts_the_venv_first_and_picks_the_mlflow_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////somewhere/else.db")
    for key in TOOL_ENV:  # (a library may have set one already: that value would be kept)
        monkeypatch.delenv(key, raising=False)
    default = stage_env()
    assert default["PATH"].split(os.pathsep)[0] == str(BIN)
    assert "MLFLOW_TRACKING_URI" not in default  # the repository's own mlruns/, as a user's run
    assert {key: default[key] for key in TOOL_ENV} == TOOL_ENV
    own = stage_env(tmp_path / "mlruns", EXTRA="1")
    assert own["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert own["EXTRA"] == "1" and own["PYTHONUNBUFFERED"] == "1"


def test_no_test_module_imports_a_conftest():
    # pytest loads conftest.py files itself; importing one again runs it a second time.
    importers = sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "tests").rglob("*.py")
        if any(
            f"{word} conftest" in path.read_text(encoding="utf-8")
            or f"{word} tests.conftest" in path.read_text(encoding="utf-8")
            for word in ("import", "from")
        )
    )
    assert importers == []


LEAVING_CONFTEST = """
import os
import pytest
from tests.helpers.servers import stop_when_leaving

def note(step):
    with open(os.environ["STEPS"], "a") as f:
        f.write(step + "\\n")

@pytest.fixture(scope="session")
def server():
    note("start")
    yield
    note("stop")

@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    stop_when_leaving(item, nextitem, "server")
"""


def outer_pytest_removed() -> dict[str, str]:
    """This environment without the running pytest's own variables (PYTEST_ADDOPTS, xdist's)."""
    return {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}


@pytest.mark.parametrize("workers", [[], ["-n", "1"]], ids=["one process", "xdist"])
def test_a_session_server_stops_when_its_folder_is_done_and_restarts_if_asked(tmp_path, workers):
    # Given a session fixture that folders a and c use, and folder b between them does not
    project = tmp_path / "project"
    project.mkdir()
    (project / "conftest.py").write_text(LEAVING_CONFTEST)
    for folder, uses in (("a", True), ("b", False), ("c", True)):
        (project / folder).mkdir()
        tests = [
            f"def test_{folder}{i}({'server' if uses else ''}):\n"
            f"    with open(os.environ['STEPS'], 'a') as f:\n"
            f"        f.write('{folder}{i}\\n')\n"
            for i in (1, 2)
        ]
        (project / folder / f"test_{folder}.py").write_text("import os\n\n\n" + "\n\n".join(tests))
    # When pytest runs them in order
    steps = tmp_path / "steps"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *workers],
        cwd=project,
        env={**outer_pytest_removed(), "PYTHONPATH": str(ROOT), "STEPS": str(steps)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Then the server stopped before folder b ran, and started again for folder c
    assert steps.read_text().split() == [
        *("start", "a1", "a2", "stop"),
        *("b1", "b2"),
        *("start", "c1", "c2", "stop"),
    ]
