"""The tests' own helpers: stage subprocesses as dvc.yaml runs them, no conftest imports."""

from __future__ import annotations

import os

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
