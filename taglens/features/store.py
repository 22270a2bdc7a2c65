"""The content-addressed feature store, and the features file the featurize stage writes from it.

Every image goes through the backbone once per (backbone, weights, image size): vectors are kept
in shards under `store/<backbone>-<size>px-<weights identity>/`, keyed by the image's sha256, so
adding images computes only the new ones and a killed run loses at most the shard in progress.
The store only decides what to compute and keeps it; `taglens.features.extract` turns the
image files into vectors.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from taglens import artifacts
from taglens.atomic import atomic_open, atomic_write_json
from taglens.features.extract import check_files, featurize_paths

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

FEATURES_FILE = artifacts.FEATURES.name
META_FILE = artifacts.FEATURE_META.name
STORE_DIR = "store"


@dataclass(frozen=True)
class FeatureKey:
    """Everything besides the image that decides a feature vector."""

    backbone: str
    image_size: int
    weights_identity: str
    view: str = ""  # "" for the image itself, else a taglens.features.views name (flip, colour)

    @property
    def dirname(self) -> str:
        """A path-safe directory name for this configuration."""
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", self.weights_identity)
        suffix = f"-{self.view}" if self.view else ""
        return f"{self.backbone}-{self.image_size}px-{safe}{suffix}"


class FeatureStore:
    """Shards of (sha256, vector) pairs for one `FeatureKey`, written atomically."""

    def __init__(self, root: Path, key: FeatureKey):
        self.key = key
        self.dir = Path(root) / key.dirname

    def shards(self) -> list[Path]:
        """Return the shard files present, in a stable order."""
        return sorted(self.dir.glob("shard-*.npz"))

    def load(self) -> dict[str, np.ndarray]:
        """Every cached vector by sha256; an unreadable shard is skipped (its images recomputed)."""
        cached: dict[str, np.ndarray] = {}
        for shard in self.shards():
            try:
                with np.load(shard, allow_pickle=False) as data:
                    shas, vectors = data["sha256"], data["vectors"]
            except (OSError, ValueError, KeyError) as exc:
                logger.warning("ignoring unreadable feature shard %s (%s)", shard, exc)
                continue
            if vectors.ndim != 2 or len(shas) != len(vectors):
                logger.warning("ignoring malformed feature shard %s", shard)
                continue
            cached.update(zip(shas.tolist(), vectors, strict=True))
        return cached

    def write_shard(self, shas: Sequence[str], vectors: np.ndarray) -> Path:
        """Store one shard; its name is derived from its contents, so re-runs are reproducible."""
        if not self.dir.exists():
            atomic_write_json(self.dir / "key.json", self.key.__dict__)
        digest = hashlib.sha256("\n".join(shas).encode()).hexdigest()[:20]
        path = self.dir / f"shard-{digest}.npz"
        return _save_npz(path, shas, vectors)


def _save_npz(path: Path, shas: Sequence[str], vectors: np.ndarray,
              extra: dict[str, np.ndarray] | None = None) -> Path:  # fmt: skip
    arrays = {name: array.astype("float32") for name, array in (extra or {}).items()}
    with atomic_open(path, "wb") as handle:
        np.savez(handle, sha256=np.asarray(shas, dtype="U64"), vectors=vectors.astype("float32"),
                 **arrays)  # fmt: skip
    return path


class _ShardBuffer:
    """Collects computed vectors and writes a shard each time `shard_size` are pending."""

    def __init__(self, store: FeatureStore, shard_size: int):
        self.store, self.shard_size, self.written = store, shard_size, 0
        self.shas: list[str] = []
        self.vectors: list[np.ndarray] = []

    def add(self, shas: list[str], vectors: np.ndarray) -> None:
        offset = 0
        while offset < len(shas):  # a batch may straddle the end of a shard
            room = self.shard_size - len(self.shas)
            self.shas.extend(shas[offset : offset + room])
            self.vectors.append(vectors[offset : offset + room])
            offset += room
            if len(self.shas) >= self.shard_size:
                self.flush()

    def flush(self) -> None:
        if self.shas:
            self.store.write_shard(self.shas, np.concatenate(self.vectors))
            self.written += 1
            self.shas, self.vectors = [], []


@dataclass
class StoreUpdate:
    """What `fill_store` did."""

    requested: int
    cached: int
    computed: int
    shards_written: int


def fill_store(
    store: FeatureStore,
    items: Sequence[tuple[str, Path]],
    extractor_factory: Callable[[], keras.Model],
    *,
    batch_size: int,
    shard_size: int,
    jit_compile: bool,
    progress: bool = True,
    engine: str = "tensorflow",
) -> tuple[dict[str, np.ndarray], StoreUpdate]:
    """Compute the vectors the store lacks for `(sha256, path)` items, one shard at a time.

    The extractor is built only when something is missing, so a fully cached run costs no model
    construction. Returns every requested vector by sha256 and a summary.
    """
    cached = store.load()
    unique = dict(items)  # duplicates of an image (same sha256) are computed once
    missing = [(sha, path) for sha, path in unique.items() if sha not in cached]
    update = StoreUpdate(len(unique), len(unique) - len(missing), len(missing), 0)
    logger.info(
        "feature store %s: %d images, %d cached, %d to compute",
        store.dir, len(unique), update.cached, len(missing),
    )  # fmt: skip
    if missing:
        check_files([path for _, path in missing])  # before the (slow) model build
        buffer = _ShardBuffer(store, shard_size)
        done = 0

        def on_batch(vectors: np.ndarray) -> None:
            nonlocal done
            shas = [sha for sha, _ in missing[done : done + len(vectors)]]
            done += len(vectors)
            cached.update(zip(shas, vectors, strict=True))
            buffer.add(shas, vectors)

        featurize_paths(
            [path for _, path in missing], extractor_factory(), image_size=store.key.image_size,
            batch_size=batch_size, jit_compile=jit_compile, progress=progress, on_batch=on_batch,
            engine=engine,
        )  # fmt: skip
        buffer.flush()
        update.shards_written = buffer.written
    return {sha: cached[sha] for sha in unique}, update


def view_array(view: str) -> str:
    """The features.npz array that holds a view's vectors (`flip` -> `flip_vectors`)."""
    return f"{view}_vectors"


def write_features(out_dir: Path, shas: Sequence[str], vectors: np.ndarray, meta: dict,
                   views: dict[str, np.ndarray] | None = None) -> Path:  # fmt: skip
    """Write `features.npz` and `meta.json` atomically.

    `features.npz` holds `sha256`, `vectors` and one `<view>_vectors` array per view, in posts
    order.
    """
    out_dir = Path(out_dir)
    extra = {view_array(view): array for view, array in (views or {}).items()}
    path = _save_npz(out_dir / FEATURES_FILE, shas, vectors, extra)
    atomic_write_json(out_dir / META_FILE, meta)
    return path


def read_features(features_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read `features.npz` back: (`sha256` (N,) str, `vectors` (N, D) float32).

    Raises:
        FileNotFoundError: featurize has not run (the message says how to run it).

    """
    path = artifacts.FEATURES.require(features_dir)
    with np.load(path, allow_pickle=False) as data:
        return data["sha256"], data["vectors"].astype("float32", copy=False)
