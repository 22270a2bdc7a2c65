"""The featurize flow: fill the feature store on one machine or on a Dask cluster.

`task_runner="local"` runs the featurize stage itself in one task. `task_runner="dask"` splits
the images the stores (the image's and each view's) do not have yet into shards of
`featurize.shard_size` (rounded up to whole batches, so every batch holds the same images as in
the local stage and the vectors are byte-identical), computes each shard on a Dask worker (each
worker process builds the views model once and runs the image and every view on
`featurize.engine`) and writes one shard per store with the store's own atomic writer. Both then
finish exactly like `python -m stages.featurize`: `data/features/features.npz` and `meta.json`
from the store, so `dvc commit featurize` (or `dvc repro`) takes it from there. A killed run
keeps its finished shards; a re-run computes only the rest. Run by hand with
`python -m flows.featurize`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger, task

from flows.runners import (
    SHARD_RETRIES,
    SHARD_RETRY_DELAY_S,
    dask_runner,
    retry_unless_user_error,
    shard_results,
)
from taglens import artifacts
from taglens.errors import TaglensError
from taglens.features.engines import INT8_ENGINE
from taglens.features.store import plan_missing, shard_fill
from taglens.features.views import IMAGE, views_model_cached
from taglens.params import ModelParams, load_params

if TYPE_CHECKING:
    from taglens.features.store import FeaturizeResult

TASK_RUNNERS = ("local", "dask")


@task(
    name="featurize-shard",
    retries=SHARD_RETRIES,
    retry_delay_seconds=SHARD_RETRY_DELAY_S,
    retry_condition_fn=retry_unless_user_error,
)
def shard_task(
    items: list[tuple[str, str]],
    lacking: dict[str, list[str]],
    stores: dict[str, Any],
    model: dict[str, Any],
    seed: int,
    options: dict[str, Any],
) -> int:
    """Compute one shard's outputs and write what each store lacks into it as one shard file.

    `stores` names the store root, key and views (`feature_stores`); `options` are the forward
    pass's batch_size, jit_compile and engine.
    """
    from taglens.features.store import compute_into, shard_stores

    targets, plan = shard_stores(stores, items, lacking)
    forward = views_model_cached(model, seed, plan.outputs)
    _, written = compute_into(
        targets, plan, forward, shard_size=len(items), progress=False, **options
    )
    get_run_logger().info("%d images into %d stores", len(items), len(written))
    return len(items)


@flow(name="featurize-shards")
def _compute_shards(
    shards: list[list[tuple[str, str]]],
    lacking: list[dict[str, list[str]]],
    stores: dict[str, Any],
    model: dict[str, Any],
    seed: int,
    options: dict[str, Any],
) -> list[int]:
    """Compute every shard in parallel on the flow's task runner (Dask)."""
    futures = [
        shard_task.submit(items, need, stores, model, seed, options)
        for items, need in zip(shards, lacking, strict=True)
    ]
    return shard_results(futures)


@task(name="featurize-stage")
def stage_task(
    model: ModelParams, params: Any, clean: Any, seed: int, raw: str, out: str, progress: bool
) -> FeaturizeResult:
    """The featurize stage itself: fill what is missing, write features.npz and meta.json."""
    from stages.featurize import run

    return run(model, params, clean, seed=seed, raw=Path(raw), out=Path(out), progress=progress)


@flow(name="featurize")
def featurize_flow(
    repo: str = ".",
    params_path: str = "params.yaml",
    task_runner: str = "local",
    scheduler_address: str | None = None,
    n_workers: int = 2,
    shard_size: int | None = None,
) -> dict[str, Any]:
    """Compute the feature vectors the store lacks, then write features.npz like the stage.

    Args:
        repo: the project checkout; reads `data/raw`, writes `data/features` under it.
        params_path: the params file, relative to `repo` unless absolute.
        task_runner: "local" (the stage in one process) or "dask" (shards on a Dask cluster).
        scheduler_address: a running Dask scheduler (`tcp://host:8786`); None starts a local
            cluster of `n_workers` processes. Workers must see `repo` under the same path.
        n_workers: workers of the local cluster when there is no scheduler address.
        shard_size: overrides `featurize.shard_size` (images per Dask task and store file).

    Returns:
        meta.json's contents plus `computed`, `cached`, `shards` and `seconds`.
    """
    if task_runner not in TASK_RUNNERS:
        raise TaglensError(f"task_runner must be one of {TASK_RUNNERS}, got {task_runner!r}")
    root = Path(repo).resolve()
    overrides = {"featurize.shard_size": shard_size} if shard_size is not None else {}
    params = load_params(root / params_path, overrides)
    model = params.model
    fparams = params.featurize
    seed = params.base.seed
    if model.weights not in (None, "imagenet") and not Path(model.weights).is_absolute():
        # workers run elsewhere: a weights file named relative to the repo must stay found
        model = model.model_copy(update={"weights": str(root / model.weights)})
    raw = root / artifacts.RAW_DIR
    out = root / artifacts.FEATURES_DIR
    start = time.monotonic()
    computed = 0
    shards = 0
    if task_runner == "dask":
        if fparams.engine == INT8_ENGINE:
            # the INT8 model is quantized (or its decision read) by the stage in one process
            raise TaglensError(
                f"featurize.engine: {INT8_ENGINE} runs in the stage's process only: use "
                "task_runner local (or taglens featurize), or another engine on Dask"
            )
        stores, plan = plan_missing(model, fparams, seed, raw, out)
        sharded = shard_fill(stores, plan, fparams)
        get_run_logger().info(
            "featurize: %d images to compute in %d shards of %d (dask)",
            len(plan.items),
            len(sharded.items),
            sharded.size,
        )
        if sharded.items:
            runner = dask_runner(scheduler_address, n_workers)
            options = {
                "batch_size": fparams.batch_size,
                "jit_compile": fparams.jit_compile,
                "engine": fparams.engine,
            }
            _compute_shards.with_options(task_runner=runner)(
                sharded.items,
                sharded.lacking,
                sharded.stores,
                model.model_dump(),
                seed,
                options,
            )
            computed = len(plan.lacking.get(IMAGE, ()))
            shards = len(sharded.items)
    # the stage finishes both paths (on dask it finds every vector in the store)
    result = stage_task(
        model, fparams, params.clean, seed, str(raw), str(out), task_runner == "local"
    )
    summary = {
        **result.meta,
        "computed": computed + result.computed,
        "cached": result.cached - computed,
        "shards": shards,
        "seconds": time.monotonic() - start,
    }
    get_run_logger().info("featurize done: %s", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    """Run the flow from the command line."""
    from taglens.cli import run_main, setup_logging

    parser = argparse.ArgumentParser(description="Run the featurize flow.")
    parser.add_argument("--repo", default=".", help="the taglens checkout (default %(default)s)")
    parser.add_argument(
        "--params", default="params.yaml", help="the params file (default %(default)s)"
    )
    parser.add_argument(
        "--task-runner",
        choices=TASK_RUNNERS,
        default="local",
        help="local (one process) or dask (shards on a cluster)",
    )
    parser.add_argument("--scheduler-address", default=None, help="tcp://HOST:8786")
    parser.add_argument(
        "--n-workers",
        type=int,
        default=2,
        help="workers of a local Dask cluster (default %(default)s)",
    )
    parser.add_argument(
        "--shard-size",
        type=int,
        default=None,
        help="images per shard (default: featurize.shard_size)",
    )
    args = parser.parse_args(argv)
    setup_logging()

    def body() -> int:
        # Run as `python -m`, this file is `__main__`, whose tasks Dask cannot ship to workers by
        # name: use the importable module's flow.
        from flows.featurize import featurize_flow as importable_flow

        print(
            importable_flow(
                args.repo,
                args.params,
                args.task_runner,
                args.scheduler_address,
                args.n_workers,
                args.shard_size,
            )
        )
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
