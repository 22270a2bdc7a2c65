"""The Makefile's team targets run taglens.services, and `make test` first installs PostgreSQL."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.helpers.paths import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _dry_run(*targets: str) -> str:
    # -W: treat the stamps as out of date, so every step a fresh machine runs is listed. Under
    # `make test` this runs inside make: without --no-print-directory (and the parent's MAKE*
    # variables) the output would end with "make[1]: Leaving directory ...".
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", "-W", "pyproject.toml", *targets],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_services_targets_install_the_team_extra_and_postgres_then_run_the_module():
    lines = _dry_run("services").splitlines()
    extra = next(i for i, line in enumerate(lines) if "-e '.[team]'" in line)
    postgres = next(
        i for i, line in enumerate(lines) if "apt-get install" in line and "postgresql" in line
    )
    start = next(i for i, line in enumerate(lines) if line.endswith("-m taglens.services start"))
    assert extra < start and postgres < start
    assert _dry_run("services-stop").strip().endswith("-m taglens.services stop")
    assert _dry_run("services-status").strip().endswith("-m taglens.services status")


def test_make_test_installs_postgres_before_running_the_suite():
    lines = _dry_run("test").splitlines()
    postgres = next(i for i, line in enumerate(lines) if "postgresql" in line)
    pytest_run = next(i for i, line in enumerate(lines) if " -m pytest" in line)
    assert postgres < pytest_run
