"""The model the web page serves, and how a new champion replaces it while the page answers.

- `ServedModel`: one loaded model with its own dynamic batcher and the name/version its answers
  carry.
- `ModelSlot`: holds the model answering now. A request takes it once (`using`) and keeps it
  for its decode and its forward pass, so one answer never mixes two models, and an answer
  names the version that computed it. `install` swaps a new model in with one assignment in
  the event loop; the old one finishes the requests it holds, then its batcher thread stops.
- `ChampionFollower`: every `serve.follow_seconds`, asks the registry where an alias
  (`models:/NAME@champion`) points, through `taglens.serving.model_ref` (the one resolver).
  When it names another version, that version is loaded and warmed up (`warm_up`) in a worker
  thread while the old model keeps answering, then installed. A version that fails to load (or
  to run) is logged, counted and skipped until the alias moves again; the old model keeps
  serving. A registry that cannot be reached is logged and asked again at the next poll.

Everything but the loading runs in the event loop, so the slot needs no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import numpy as np

from taglens.params import ServeParams
from taglens.serving import model_ref
from taglens.serving.model_ref import ModelRef, ResolvedModel
from taglens.serving.web.batching import MicroBatcher
from taglens.serving.web.metrics import WebMetrics
from taglens.serving.web.schemas import ModelInfo, Prediction

logger = logging.getLogger(__name__)

_USER_INFO = re.compile(r"//[^/@\s]+@")  # the user-info part of a URL (user:password@)


class Predictor(Protocol):
    """What the app needs from a model (taglens.model.predictor.HashtagPredictor provides it)."""

    classes: Any
    image_size: int

    def decode(self, images: list[bytes]) -> np.ndarray:
        """The model's float32 pixel batch (N, S, S, 3) for encoded images."""

    def predict_pixels(self, batch: np.ndarray) -> list[dict[str, Any]]:
        """One prediction dict per image of a pixel batch."""


def warm_up(predictor: Predictor, max_batch: int) -> None:
    """Run `predictor` once on blank pixels at every batch size from 1 to `max_batch`.

    An engine keeps memory per input shape, taken the first time a batch of that size comes
    (OpenVINO's CPU plugin holds its buffers per shape; the TensorFlow graph retraces). The
    batcher forms every size up to `serve.batch_max_size` under load, the rare ones late: taking
    that memory before the model serves makes the server's RSS flat from the first request, and
    the first batch of a new size does not wait for it. `max_batch` 1 only checks the model runs.
    """
    side = predictor.image_size
    blank = np.zeros((max_batch, side, side, 3), np.float32)
    for size in range(1, max_batch + 1):
        predictor.predict_pixels(blank[:size])


class ServedModel:
    """One loaded model, its batcher, and how many requests hold it.

    Args:
        predictor: the loaded model.
        ref: its registered name and version, reported with every answer it computes.
        serve: the batching settings.
        metrics: where batch sizes are counted.
    """

    def __init__(
        self, predictor: Predictor, ref: ModelRef, serve: ServeParams, metrics: WebMetrics
    ) -> None:
        self.predictor = predictor
        self.ref = ref
        self.info = ModelInfo(name=ref.name, version=ref.version)
        self.decoding = 0  # uploads being decoded for it: the ones a waiting batch may still get
        self.users = 0  # requests holding it (ModelSlot.using)
        self.retired = False
        self.batcher = MicroBatcher(
            self._predict_batch,
            max_batch_size=serve.batch_max_size,
            max_wait_s=serve.batch_max_wait_ms / 1000,
            max_queue=serve.max_pending,
            upstream=lambda: self.decoding,
            observe=metrics.batch_size.observe,
        )

    def _predict_batch(self, pixels: list[np.ndarray]) -> list[tuple[Prediction, bytes]]:
        # The answers are rendered to JSON here, in the model's thread: done in the event loop,
        # a batch of 32 answers would hold up the page and /health behind it.
        results = self.predictor.predict_pixels(np.stack(pixels))
        predictions = [Prediction(model=self.info, **result) for result in results]
        return [(prediction, prediction.model_dump_json().encode()) for prediction in predictions]

    def retire(self) -> None:
        """No new request will take it; stop its batcher once the last holder is done."""
        self.retired = True
        self.release_if_idle()

    def release_if_idle(self) -> None:
        """Stop the batcher thread of a retired model that no request holds any more."""
        if self.retired and self.users == 0:
            self.batcher.close(wait=False)  # nothing is queued: the thread just ends


class ModelSlot:
    """The model answering now; swapped whole by `install`, from the event loop only.

    Args:
        predictor: the model loaded at start.
        ref: its name and version.
        serve: the batching settings every model served here gets.
        metrics: the app's metrics (the model served, swaps, batch sizes).
    """

    def __init__(
        self, predictor: Predictor, ref: ModelRef, serve: ServeParams, metrics: WebMetrics
    ) -> None:
        self._serve = serve
        self._metrics = metrics
        self.current = ServedModel(predictor, ref, serve, metrics)
        metrics.serving(ref, predictor)

    @contextlib.contextmanager
    def using(self) -> Iterator[ServedModel]:
        """The model answering now, held by the caller until the block ends."""
        served = self.current
        served.users += 1
        try:
            yield served
        finally:
            served.users -= 1
            served.release_if_idle()

    def install(self, predictor: Predictor, ref: ModelRef) -> ServedModel:
        """Make `predictor` the model answering from now on; return the one it replaced."""
        old = self.current
        self.current = ServedModel(predictor, ref, self._serve, self._metrics)
        old.retire()
        self._metrics.serving(ref, predictor)
        self._metrics.swaps.inc()
        logger.info(
            "now serving %s version %s (was version %s)", ref.name, ref.version, old.ref.version
        )
        return old

    def close(self) -> None:
        """Stop the batcher of the model answering (on shutdown)."""
        self.current.batcher.close()


class ModelSource(Protocol):
    """What the follower asks: where the alias points now, and the model it points at."""

    uri: str  # the alias URI, for the log

    def resolve(self) -> ResolvedModel:
        """The model the alias names now."""

    def load(self, resolved: ResolvedModel) -> Predictor:
        """That model, loaded and ready to answer."""


@dataclass(frozen=True)
class AliasSource:
    """Where a followed alias points, and how to load what it points at.

    Attributes:
        uri: the alias URI (`models:/NAME@ALIAS`).
        model_name: `register.model_name`, for `model_ref.resolve`.
        engine: `featurize.engine`, the engine every loaded model runs on.
        warm_batches: the batch sizes 1..N a new version runs before it is installed
            (`warm_up`: `serve.batch_max_size` when `serve.warm_up`, else 1).
    """

    uri: str
    model_name: str
    engine: str
    warm_batches: int = 1

    def resolve(self) -> ResolvedModel:
        """The version the alias names now (`model_ref.resolve`)."""
        return model_ref.resolve(self.uri, self.model_name)

    def load(self, resolved: ResolvedModel) -> Predictor:
        """Load `resolved` on the engine and warm it up, so it is known to work when installed.

        The first forward passes also build the engine's graph and its buffers for each batch
        size (`warm_up`), which would otherwise delay the first requests after the swap.
        """
        predictor = model_ref.load(resolved.uri, self.engine)
        warm_up(predictor, self.warm_batches)
        return predictor


class ChampionFollower:
    """Poll an alias and install each new version it names (see the module docstring).

    Args:
        source: the alias and its loader.
        slot: the app's model slot.
        interval_s: seconds between polls (`serve.follow_seconds`, > 0).
        metrics: counts load failures.
    """

    def __init__(
        self, source: ModelSource, slot: ModelSlot, interval_s: float, metrics: WebMetrics
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.source = source
        self.slot = slot
        self.interval_s = interval_s
        self.metrics = metrics
        self.failed: ModelRef | None = None  # the version that last failed to load

    async def run(self) -> None:
        """Poll until cancelled."""
        while True:
            await asyncio.sleep(self.interval_s)
            await self.check()

    async def check(self) -> bool:
        """Poll once; install the version the alias names if it is new. True if installed."""
        try:
            resolved = await anyio.to_thread.run_sync(self.source.resolve, abandon_on_cancel=True)
        except Exception as exc:
            logger.warning(
                "cannot ask the registry where the alias points (%s); still serving version %s",
                _summary(exc),
                self.slot.current.ref.version,
            )
            logger.debug("registry error", exc_info=True)
            return False
        serving = self.slot.current.ref
        if resolved.ref == serving or resolved.ref == self.failed:
            return False
        logger.info(
            "%s now names %s version %s: loading it beside version %s",
            self.source.uri,
            resolved.ref.name,
            resolved.ref.version,
            serving.version,
        )
        try:
            predictor = await anyio.to_thread.run_sync(
                self.source.load, resolved, abandon_on_cancel=True
            )
        except Exception as exc:
            logger.error(
                "version %s could not be loaded (%s); version %s keeps serving (retried when "
                "the alias moves again)",
                resolved.ref.version,
                _summary(exc),
                serving.version,
            )
            logger.debug("load error", exc_info=True)
            self.failed = resolved.ref
            self.metrics.load_failures.inc()
            return False
        self.failed = None
        self.slot.install(predictor, resolved.ref)
        return True


def _summary(exc: BaseException) -> str:
    """`Type: first line` of an error, without a password in any URL it names.

    Registry and artifact errors quote URLs; one with user-info (`https://user:token@host`)
    must not reach the log. The traceback goes to DEBUG only.
    """
    lines = str(exc).strip().splitlines()
    first = _USER_INFO.sub("//***@", lines[0])[:300] if lines else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
