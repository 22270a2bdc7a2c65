"""Params of what follows training: the registry's gate, batch predict, the web page."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from taglens.params.section import Section


class RegisterParams(Section):
    """The registry and the promotion gate."""

    model_name: str = Field(min_length=1)
    primary_metric: str = Field(min_length=1)
    min_margin: float = Field(ge=0)
    significance: float = Field(gt=0, le=1)  # McNemar's one-sided p must be below this
    max_recall_drop: float = Field(ge=0, le=1)
    min_score: float = Field(ge=0, le=1)
    promote: bool  # false: every version stays challenger; `dvc exp run` never promotes anyway
    on_experiment: Literal["skip", "challenger"]  # inside `dvc exp run`: no version, or one held


class DriftParams(Section):
    """The nightly drift check against the champion's validation outputs."""

    enabled: bool
    psi_threshold: float = Field(gt=0, le=10)
    min_photos: int = Field(ge=1)
    retrain: bool  # true: a drifted night triggers the weekly retrain deployment at once


class PredictParams(Section):
    """The batch predict job."""

    batch_size: int = Field(ge=1)
    shard_size: int = Field(ge=1)
    drift: DriftParams


class ServeParams(Section):
    """The web page."""

    host: str
    port: int = Field(ge=1, le=65_535)
    max_upload_mb: float = Field(gt=0)
    allowed_hosts: tuple[str, ...] = Field(min_length=1)
    batch_max_size: int = Field(ge=1, le=256)
    batch_max_wait_ms: float = Field(ge=0, le=1000)
    warm_up: bool
    max_pending: int = Field(ge=1, le=10_000)
    decode_threads: int = Field(ge=1, le=64)
    retry_after_s: int = Field(ge=1, le=3600)
    limit_concurrency: int = Field(ge=2, le=100_000)
    timeout_keep_alive_s: int = Field(ge=1, le=600)
    upload_timeout_s: float = Field(gt=0, le=3600)
    timeout_graceful_shutdown_s: int = Field(ge=0, le=600)
    follow_seconds: float = Field(ge=0, le=86_400)
    log_format: Literal["text", "json"]

    @model_validator(mode="after")
    def _room_for_the_page(self) -> ServeParams:
        if self.limit_concurrency <= self.max_pending:
            raise ValueError(
                f"limit_concurrency ({self.limit_concurrency}) must be above max_pending "
                f"({self.max_pending}), or the page stops answering while uploads queue"
            )
        return self
