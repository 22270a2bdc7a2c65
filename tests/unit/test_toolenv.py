"""The tools' environment is written once (taglens/toolenv.py) and read by everything else."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from taglens import toolenv
from taglens.toolenv import TOOL_ENV

ROOT = Path(__file__).resolve().parents[2]


def test_apply_sets_only_what_is_not_set():
    # Given an environment where the user turned TensorFlow's logging up
    env = {"TF_CPP_MIN_LOG_LEVEL": "0", "HOME": "/home/someone"}

    # When the tools' environment is applied to it
    result = toolenv.apply(env)

    # Then the user's value wins, every other key is added, and nothing else changes
    assert result is env
    assert env == {**TOOL_ENV, "TF_CPP_MIN_LOG_LEVEL": "0", "HOME": "/home/someone"}


def test_apply_defaults_to_this_process(monkeypatch):
    monkeypatch.delenv("DVC_NO_ANALYTICS", raising=False)
    toolenv.apply()
    assert os.environ["DVC_NO_ANALYTICS"] == TOOL_ENV["DVC_NO_ANALYTICS"]


def test_the_module_prints_key_value_lines_without_the_project_installed():
    # No site-packages (-S), no PYTHONPATH: the Makefile runs it before the venv exists.
    result = subprocess.run(
        [sys.executable, "-S", "-m", "taglens.toolenv"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    pairs = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert pairs == TOOL_ENV


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_the_makefile_exports_the_modules_values(tmp_path):
    probe = tmp_path / "probe.mk"
    probe.write_text(f"include {ROOT / 'Makefile'}\nprobe:\n\t@env\n")
    env = {"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "0"}
    command = ["make", "-s", "-f", str(probe), "probe", f"PYTHON={sys.executable}"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    seen = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert {key: seen.get(key) for key in TOOL_ENV} == {**TOOL_ENV, "TF_CPP_MIN_LOG_LEVEL": "0"}


def test_no_other_module_spells_the_tools_environment():
    # The Makefile, the library, the stages and the flows name these keys only through toolenv.
    places = [
        ROOT / "Makefile",
        *ROOT.glob("taglens/**/*.py"),
        *ROOT.glob("stages/*.py"),
        *ROOT.glob("flows/*.py"),
    ]
    spelled = sorted(
        str(path.relative_to(ROOT))
        for path in places
        if path.name != "toolenv.py" and any(key in path.read_text() for key in TOOL_ENV)
    )
    assert spelled == []
