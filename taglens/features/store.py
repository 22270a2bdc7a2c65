"""The content-addressed feature store, and the features file the featurize stage writes from it.

Every image goes through the backbone once per (backbone, weights, image size, precision): vectors
are kept in shards under `store/<backbone>-<size>px-<weights identity>[-int8]/`, keyed by the
image's sha256 (an INT8 backbone's vectors, `featurize.engine: openvino-int8`, never mix with
FP32's: they have a store of their own), so adding images computes only the new ones and a
killed run loses at most the shard in progress.
Each view (`flip`, `colour`) has a store of its own beside it (`...-flip/`); one model computes
every output the stores lack in one forward call per batch. The store only decides what to
compute and keeps it; `taglens.features.featurize` turns the image files into vectors.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from taglens import artifacts
from taglens.atomic import atomic_open, atomic_write_json
from taglens.features.featurize import check_files, iter_feature_batches
from taglens.features.quantize import Decision
from taglens.features.views import IMAGE
from taglens.progress import progress_bar

if TYPE_CHECKING:
    import keras

    from taglens.params import FeaturizeParams, ModelParams

logger = logging.getLogger(__name__)

FEATURES_FILE = artifacts.FEATURES.name
META_FILE = artifacts.FEATURE_META.name
STORE_DIR = artifacts.FEATURE_STORE_DIR
SHARED_PASS = (IMAGE, "flip")  # outputs computed by one backbone call (views.image_and_mirror)


@dataclass(frozen=True)
class FeatureKey:
    """Everything besides the image that decides a feature vector."""

    backbone: str
    image_size: int
    weights_identity: str
    precision: str  # fp32 (every engine but openvino-int8) or int8: taglens.features.engines
    view: str = ""  # "" for the image itself, else a taglens.features.views name (flip, colour)

    @property
    def dirname(self) -> str:
        """A path-safe directory name for this configuration."""
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", self.weights_identity)
        precision = "" if self.precision == "fp32" else f"-{self.precision}"
        suffix = f"-{self.view}" if self.view else ""
        return f"{self.backbone}-{self.image_size}px-{safe}{precision}{suffix}"


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
                    shas = data["sha256"]
                    vectors = data["vectors"]
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


def _save_npz(
    path: Path, shas: Sequence[str], vectors: np.ndarray, extra: dict[str, np.ndarray] | None = None
) -> Path:
    arrays = {name: array.astype("float32") for name, array in (extra or {}).items()}
    with atomic_open(path, "wb") as handle:
        np.savez(
            handle,
            sha256=np.asarray(shas, dtype="U64"),
            vectors=vectors.astype("float32"),
            **arrays,
        )
    return path


class _ShardBuffer:
    """Collects computed vectors and writes a shard each time `shard_size` are pending."""

    def __init__(self, store: FeatureStore, shard_size: int):
        self.store = store
        self.shard_size = shard_size
        self.written = 0
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
            self.shas = []
            self.vectors = []


@dataclass
class StoreUpdate:
    """What `fill_stores` did to one store."""

    requested: int
    cached: int
    computed: int
    shards_written: int


@dataclass(frozen=True)
class FillPlan:
    """What the stores lack: the model outputs to compute, the images to run, who lacks what.

    `items` are the images any store of `outputs` lacks, in request order, each once; a store
    gets only the vectors it lacks (`lacking[output]`, sha256s).
    """

    outputs: tuple[str, ...]
    items: list[tuple[str, Path]]
    lacking: dict[str, set[str]]


def feature_stores(root: Path, key: FeatureKey, views: Sequence[str]) -> dict[str, FeatureStore]:
    """One store per output of `taglens.features.views.views_model`: the image, then each view.

    Each view has its own store, so adding a view reuses the vectors of the others.
    """
    stores = {IMAGE: FeatureStore(root, key)}
    stores.update({view: FeatureStore(root, replace(key, view=view)) for view in views})
    return stores


def plan_fill(
    stores: Mapping[str, FeatureStore],
    items: Sequence[tuple[str, Path]],
    cached: Mapping[str, Mapping[str, np.ndarray]],
) -> FillPlan:
    """What to compute so that every store holds a vector for every `(sha256, path)` item."""
    unique = dict(items)  # duplicates of an image (same sha256) are computed once
    lacking = {name: {sha for sha in unique if sha not in cached[name]} for name in stores}
    outputs = tuple(name for name in stores if lacking[name])
    if set(outputs) & set(SHARED_PASS):
        # the image and its mirror share one backbone pass over 2B images: compute both, so the
        # batch shapes, and the vectors to the byte, never depend on what the stores already held
        outputs = tuple(name for name in stores if lacking[name] or name in SHARED_PASS)
    needed = set().union(*lacking.values())
    todo = [(sha, path) for sha, path in unique.items() if sha in needed]
    return FillPlan(outputs, todo, {name: lacking[name] for name in outputs})


def compute_into(
    stores: Mapping[str, FeatureStore],
    plan: FillPlan,
    model: keras.Model,
    *,
    batch_size: int,
    shard_size: int,
    jit_compile: bool,
    engine: str,
    progress: bool,
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, int]]:
    """Run `plan.items` through `model` (one output per store) and store what each one lacks.

    One forward call per batch computes every output on `engine`. Shards of `shard_size`
    vectors are written per store as they fill.

    Returns:
        The computed vectors by output and sha256, and the shards written per output.
    """
    buffers = {name: _ShardBuffer(stores[name], shard_size) for name in plan.outputs}
    computed: dict[str, dict[str, np.ndarray]] = {name: {} for name in plan.outputs}
    done = 0
    image_size = stores[plan.outputs[0]].key.image_size
    batches = iter_feature_batches(
        [path for _, path in plan.items],
        model,
        image_size=image_size,
        batch_size=batch_size,
        jit_compile=jit_compile,
        engine=engine,
    )
    with progress_bar(
        total=len(plan.items), unit="img", desc="featurize", disable=not progress
    ) as bar:
        for outputs in batches:
            batch = plan.items[done : done + len(next(iter(outputs.values())))]
            done += len(batch)
            for name in plan.outputs:
                rows = [i for i, (sha, _) in enumerate(batch) if sha in plan.lacking[name]]
                if rows:
                    shas = [batch[i][0] for i in rows]
                    vectors = np.asarray(outputs[name][rows], dtype="float32")
                    computed[name].update(zip(shas, vectors, strict=True))
                    buffers[name].add(shas, vectors)
            bar.update(len(batch))
    for buffer in buffers.values():
        buffer.flush()
    return computed, {name: buffer.written for name, buffer in buffers.items()}


def fill_stores(
    stores: Mapping[str, FeatureStore],
    items: Sequence[tuple[str, Path]],
    model_factory: Callable[[tuple[str, ...]], keras.Model],
    *,
    batch_size: int,
    shard_size: int,
    jit_compile: bool,
    engine: str,
    progress: bool,
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, StoreUpdate]]:
    """Compute what the stores lack for `(sha256, path)` items, one shard at a time.

    `model_factory(outputs)` builds a model whose dict outputs are the names of the stores that
    lack something (`taglens.features.views.build_views_model`); it is built only when something
    is missing, so a fully cached run costs no model construction. Returns, per store, every
    requested vector by sha256, and a summary.
    """
    cached = {name: store.load() for name, store in stores.items()}
    plan = plan_fill(stores, items, cached)
    unique = dict(items)
    updates = {}
    for name, store in stores.items():
        lacking = len(plan.lacking.get(name, ()))
        updates[name] = StoreUpdate(len(unique), len(unique) - lacking, lacking, 0)
        logger.info(
            "feature store %s: %d images, %d cached, %d to compute",
            store.dir,
            len(unique),
            len(unique) - lacking,
            lacking,
        )
    if plan.items:
        check_files([path for _, path in plan.items])  # before the (slow) model build
        computed, written = compute_into(
            stores,
            plan,
            model_factory(plan.outputs),
            batch_size=batch_size,
            shard_size=shard_size,
            jit_compile=jit_compile,
            engine=engine,
            progress=progress,
        )
        for name, vectors in computed.items():
            updates[name].shards_written = written[name]
            cached[name].update(vectors)
    return {name: {sha: cached[name][sha] for sha in unique} for name in stores}, updates


def view_array(view: str) -> str:
    """The features.npz array that holds a view's vectors (`flip` -> `flip_vectors`)."""
    return f"{view}_vectors"


def write_features(
    out_dir: Path,
    shas: Sequence[str],
    vectors: np.ndarray,
    meta: dict,
    views: dict[str, np.ndarray] | None = None,
) -> Path:
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


@dataclass(frozen=True)
class FeaturizeResult:
    """meta.json's contents, and how many images this run computed or found in the store."""

    meta: dict[str, Any]
    computed: int
    cached: int

    def summary(self) -> str:
        """One line for the terminal."""
        return (
            f"featurize: {self.meta['count']} posts, {self.computed} images computed, "
            f"{self.cached} cached, dim {self.meta['dim']}"
        )


def feature_meta(
    key: FeatureKey,
    matrix: np.ndarray,
    views: dict,
    engine: str,
    int8: Decision | None,
) -> dict[str, Any]:
    """meta.json: which backbone, size, weights and precision made the vectors, and their shape.

    `engine` is the engine that ran (openvino when openvino-int8 fell back to FP32), and `int8`
    the INT8 decision (both accuracies and why) when `featurize.engine` was openvino-int8.
    """
    return {
        "backbone": key.backbone,
        "image_size": key.image_size,
        "weights_identity": key.weights_identity,
        "dim": int(matrix.shape[1]),
        "count": int(matrix.shape[0]),
        "store": key.dirname,
        "views": list(views),
        "precision": key.precision,
        "engine": engine,
        "int8": asdict(int8) if int8 is not None else None,
    }


def plan_missing(
    model: ModelParams, params: FeaturizeParams, seed: int, raw: Path, out: Path
) -> tuple[dict[str, FeatureStore], FillPlan]:
    """The stores of data/features and what they lack for data/raw's posts (`FillPlan`).

    The key is the one the featurize stage fills (an INT8 engine keys INT8 vectors).

    Raises:
        MissingArtifactError: scrape has not run.
        FileNotFoundError: an image the stores lack is missing from data/raw.
    """
    from taglens.data.posts import read_raw_posts
    from taglens.features.backbones import weights_identity
    from taglens.features.engines import precision_of

    key = FeatureKey(
        model.backbone, model.image_size, weights_identity(model, seed), precision_of(params.engine)
    )
    stores = feature_stores(Path(out) / STORE_DIR, key, params.views)
    items = [(post.sha256, Path(raw) / post.image) for post in read_raw_posts(raw)]
    cached = {name: store.load() for name, store in stores.items()}
    plan = plan_fill(stores, items, cached)
    check_files([path for _, path in plan.items])
    return stores, plan


@dataclass(frozen=True)
class ShardedFill:
    """A `FillPlan` cut into shards for workers, as plain data a task can be sent.

    Attributes:
        items: per shard, its (sha256, image path) pairs.
        lacking: per shard, the sha256s each model output's store lacks among them.
        stores: the store root, key and views (`shard_stores` rebuilds the stores from them).
        size: images per shard (whole batches).
    """

    items: list[list[tuple[str, str]]]
    lacking: list[dict[str, list[str]]]
    stores: dict[str, Any]
    size: int


def shard_fill(
    stores: dict[str, FeatureStore], plan: FillPlan, params: FeaturizeParams
) -> ShardedFill:
    """Cut `plan` into shards of about `params.shard_size` images (`ShardedFill`).

    Shards hold whole batches of `params.batch_size`, so each batch holds the images it holds in
    the local stage, and each shard becomes one store file per store that lacks any of them.
    """
    size = math.ceil(params.shard_size / params.batch_size) * params.batch_size
    parts = [plan.items[i : i + size] for i in range(0, len(plan.items), size)]
    lacking = [
        {name: [sha for sha, _ in part if sha in shas] for name, shas in plan.lacking.items()}
        for part in parts
    ]
    image = stores[IMAGE]
    where = {
        "root": str(image.dir.parent),
        "key": dict(image.key.__dict__),
        "views": list(params.views),
    }
    items = [[(sha, str(path)) for sha, path in part] for part in parts]
    return ShardedFill(items, lacking, where, size)


def shard_stores(
    where: dict[str, Any], items: list[tuple[str, str]], lacking: dict[str, list[str]]
) -> tuple[dict[str, FeatureStore], FillPlan]:
    """On a worker: the stores and the `FillPlan` of one shard of a `ShardedFill`."""
    stores = feature_stores(Path(where["root"]), FeatureKey(**where["key"]), where["views"])
    paths = [(sha, Path(path)) for sha, path in items]
    return stores, FillPlan(
        tuple(lacking), paths, {name: set(shas) for name, shas in lacking.items()}
    )
