"""Params of a team's shared services: where `taglens services` runs them, and the hand-off."""

from __future__ import annotations

from pydantic import Field

from taglens.params.section import Section


class TeamParams(Section):
    """The services `taglens services start` runs on one machine, and the weekly git hand-off."""

    folder: str = Field(min_length=1)
    host: str = Field(min_length=1)
    postgres_port: int = Field(ge=1, le=65_535)
    mlflow_port: int = Field(ge=1, le=65_535)
    prefect_port: int = Field(ge=1, le=65_535)
    dask_port: int = Field(ge=1, le=65_535)
    pool: str = Field(min_length=1)
    prefect_workers: int = Field(ge=1, le=16)
    dask_workers: int = Field(ge=1, le=64)
    start_timeout_s: float = Field(gt=0, le=3600)
    git_remote: str = Field(min_length=1)
    git_branch: str | None = Field(default=..., min_length=1)
