"""`taglens services --only`: the groups a start or stop can name, checked before anything runs."""

from __future__ import annotations

import pytest

from taglens.services import GROUPS, ORDER, ServiceError, Services
from tests.helpers.servers import team_params


def test_groups_cover_every_process_once_in_start_order():
    names = [name for group in GROUPS.values() for name in group]
    assert names == list(ORDER)


def test_an_unknown_service_is_refused_naming_the_groups(tmp_path):
    services = Services(team_params(), tmp_path / "services")
    with pytest.raises(
        ServiceError,
        match=(
            "unknown service nope: choose among postgres, mlflow, prefect, prefect-worker, dask"
        ),
    ):
        services.start(["nope", "dask"])
    with pytest.raises(ServiceError, match="unknown service nope"):
        services.stop(["nope"])
    assert not (tmp_path / "services").exists()  # refused before anything was created


def test_stop_with_nothing_started_stops_nothing(tmp_path):
    assert Services(team_params(), tmp_path).stop(["mlflow"]) == []
