"""`make test`'s two workers get the suite in groups that keep shared set-ups on one worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from tests.helpers.paths import ROOT

# A plugin each pytest process loads (`-p`): it records the tests it collected, in the order it
# would run them, with their xdist groups and fixtures, then empties the list so nothing runs.
_RECORDER = """
import json, os
from pathlib import Path
import pytest

@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    rows = [
        [item.nodeid, [mark.args[0] for mark in item.iter_markers("xdist_group")],
         sorted(item.fixturenames)]
        for item in items
    ]
    name = os.environ.get("PYTEST_XDIST_WORKER", "main")
    Path(os.environ["RECORD_DIR"], name + ".json").write_text(json.dumps(rows))
    items.clear()
"""


def _collect(folder: Path, *args: str) -> dict[str, list]:
    """What each pytest process (`gw0`, `gw1` or `main`) collected: [node id, groups, fixtures]."""
    (folder / "group_recorder.py").write_text(_RECORDER)
    env = {**os.environ, "RECORD_DIR": str(folder), "PYTHONPATH": str(folder)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "group_recorder", "-q", "-p", "no:cacheprovider"]
        + list(args),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 5, result.stdout[-2000:] + result.stderr[-2000:]  # ran nothing
    return {path.stem: json.loads(path.read_text()) for path in folder.glob("*.json")}


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> list[tuple[str, str, list[str]]]:
    """The whole suite as `make test`'s workers take it: (node id, group, fixtures), in order."""
    recorded = _collect(
        tmp_path_factory.mktemp("workers"),
        "-n",
        "2",
        "--dist",
        "loadgroup",
        "--no-loadscope-reorder",
    )
    assert sorted(recorded) == ["gw0", "gw1"]
    assert recorded["gw0"] == recorded["gw1"]  # xdist runs nothing unless both agree
    rows = recorded["gw0"]
    assert len(rows) > 800
    assert all(len(groups) == 1 for _, groups, _ in rows), "every test has exactly one group"
    # xdist's own suffix, which its scheduler groups by
    assert all(nodeid.endswith("@" + groups[0]) for nodeid, groups, _ in rows)
    return [(nodeid.split("@")[0], groups[0], fixtures) for nodeid, groups, fixtures in rows]


def test_a_module_and_the_modules_sharing_a_slow_session_fixture_stay_in_one_group(suite):
    modules = defaultdict(set)
    users = defaultdict(set)
    for nodeid, group, fixtures in suite:
        modules[nodeid.split("::")[0]].add(group)
        for shared in ("team_services", "prefect_server", "pipeline"):
            if shared in fixtures:
                users[shared].add(group)
    assert all(len(groups) == 1 for groups in modules.values())
    # the team's services, the Prefect server and reliability's pipeline each start on one worker
    assert {name: len(groups) for name, groups in users.items()} == {
        "team_services": 1,
        "prefect_server": 1,
        "pipeline": 1,
    }
    assert users["team_services"] == {"team_services"}
    # the rest is a group per module: the workers share out modules, not single tests
    assert len({group for _, group, _ in suite}) > 50


def test_groups_are_queued_longest_first_and_keep_their_tests_together(suite):
    order = []
    for _, group, _ in suite:
        if not order or order[-1] != group:
            order.append(group)
    assert len(order) == len(set(order)), "a group's tests are queued one after another"
    assert order[:2] == ["tests/e2e/test_flowers_accuracy.py", "team_services"]
    assert order.index("pipeline") < order.index("tests/unit/test_worker_groups.py")


def test_a_run_without_workers_keeps_pytest_order_and_marks_nothing(suite, tmp_path):
    rows = _collect(tmp_path, "tests/e2e")["main"]
    assert rows and not any(groups for _, groups, _ in rows)
    # pytest's order (by file name), where the workers' queue starts with the flowers pipeline
    assert rows[0][0].startswith("tests/e2e/test_dvc_experiments.py::")
    assert suite[0][0].startswith("tests/e2e/test_flowers_accuracy.py::")
