"""How `make test` shares the suite between two pytest-xdist workers (`--dist loadgroup`).

A worker takes a group of tests at a time. A group is one test module (its module fixtures, a
repository after `dvc repro` among them, are built once), joined with every other module that
uses the same slow session fixture of a test folder's conftest (the team's services, the Prefect
server, reliability's reference pipeline), which then starts once in the whole run. Groups are
queued longest first (`--no-loadscope-reorder` keeps that order), so that neither worker sits idle
at the end while the other runs a long one.
"""

from __future__ import annotations

import pytest

# The groups that take longest, queued first (minutes each in `make test`'s durations, measured
# on this 2-core machine: the flowers pipeline ~11, the team's services ~10, the flows ~6, dvc's
# experiments ~6). The order only balances the two workers; a group not named keeps its place.
LONGEST_FIRST = (
    "tests/e2e/test_flowers_accuracy.py",
    "team_services",
    "prefect_server",
    "tests/e2e/test_dvc_experiments.py",
    "tests/e2e/test_dvc_pipeline.py",
    "tests/e2e/test_weekly_retrain.py",
    "pipeline",
)


def slow_session_fixtures(item: pytest.Item) -> set[str]:
    """The session fixtures of a test folder's own conftest.py that `item` uses, directly or not.

    The suite's root conftest.py holds only cheap session fixtures (a throwaway MLflow store), and
    pytest's own (`tmp_path_factory`) have no folder: neither is a reason to keep tests together.
    """
    definitions = item._fixtureinfo.name2fixturedefs  # noqa: SLF001 - pytest has no public view
    names = set()
    for name in item.fixturenames:
        defined = definitions.get(name)
        if defined and defined[-1].scope == "session" and "/" in defined[-1].baseid:
            names.add(name)
    return names


def _module(item: pytest.Item) -> str:
    return item.nodeid.split("::")[0]


def worker_groups(items: list[pytest.Item]) -> list[set[str]]:
    """The groups, each the set of its test modules and of the slow session fixtures they share:
    modules that share such a fixture, directly or through another module, are one group."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    for item in items:
        module = root(_module(item))
        for fixture in slow_session_fixtures(item):
            parent[root(fixture)] = module
    members: dict[str, set[str]] = {}
    for key in list(parent):
        members.setdefault(root(key), set()).add(key)
    return list(members.values())


def assign_worker_groups(items: list[pytest.Item]) -> None:
    """Mark every test with its xdist group and reorder `items` in place: the groups LONGEST_FIRST
    names first, in that order, then the rest as collected; tests keep their order in a group."""
    rank = {key: position for position, key in enumerate(LONGEST_FIRST)}
    group_of: dict[str, tuple[str, int]] = {}
    for members in worker_groups(items):
        name = min(members)
        place = min(rank.get(key, len(rank)) for key in members)
        group_of.update((key, (name, place)) for key in members if key.endswith(".py"))
    first_seen: dict[str, int] = {}
    for position, item in enumerate(items):
        name, _ = group_of[_module(item)]
        first_seen.setdefault(name, position)
        item.add_marker(pytest.mark.xdist_group(name))

    def queue_place(item: pytest.Item) -> tuple[int, int]:
        name, place = group_of[_module(item)]
        return place, first_seen[name]

    items.sort(key=queue_place)
