"""Params of a team's shared services: where `taglens services` runs them, and the hand-off."""

from __future__ import annotations

from pydantic import Field, model_validator

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
    heartbeat_s: int = Field(ge=30, le=3600)  # Prefect refuses a heartbeat below 30 s
    crashed_after_s: float = Field(gt=0, le=86_400)
    git_remote: str = Field(min_length=1)
    git_branch: str | None = Field(default=..., min_length=1)

    @model_validator(mode="after")
    def _silence_longer_than_a_heartbeat(self) -> TeamParams:
        if self.crashed_after_s <= self.heartbeat_s:
            raise ValueError(
                f"team.crashed_after_s ({self.crashed_after_s:g}) must exceed team.heartbeat_s "
                f"({self.heartbeat_s}), or every healthy run would be marked Crashed"
            )
        return self
