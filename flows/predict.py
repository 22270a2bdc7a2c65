"""The batch predict flow: score images with the champion, locally or on a Dask cluster.

`task_runner="local"` scores everything in one task, straight into the output (the same code as
`python -m stages.predict`). `task_runner="dask"` splits the input into shards of
`predict.shard_size`, scores each shard on a Dask worker into its own JSON-lines file beside the
output (`<output>.shards/`), then merges the shards in order into the output: the rows are the
same as the local path's, none lost or duplicated, and a re-run resumes both the shards and the
merge. The model alias is pinned to one version before any shard starts, and each worker process
loads that model once. Run by hand with `python -m flows.predict --input ... --output ...`.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows.runners import (
    SHARD_RETRIES,
    SHARD_RETRY_DELAY_S,
    dask_runner,
    retry_unless_user_error,
)
from taglens.errors import TaglensError
from taglens.params import load_params
from taglens.serving import model_ref
from taglens.serving.batch_inputs import list_inputs, shard
from taglens.serving.batch_predict import PredictResult, merge_outputs
from taglens.serving.batch_scoring import ScoreReport
from taglens.serving.model_ref import ModelRef

TASK_RUNNERS = ("local", "dask")
# A nightly run that is still going after this long is stuck (the whole flowers set, 4,317
# images, scores in minutes here): fail it so the next night's run is not blocked behind it.
TIMEOUT_S = 6 * 3600
ARTIFACT_KEY = "batch-predict-report"
_MODELS: dict[tuple[str, str | None, str], Any] = {}
_MODELS_LOCK = threading.Lock()


def cached_model(uri: str, tracking_uri: str | None, engine: str):
    """Load a pinned model once per process (a Dask worker keeps it for all its shards)."""
    key = (uri, tracking_uri, engine)
    with _MODELS_LOCK:
        if key not in _MODELS:
            if tracking_uri:
                import mlflow

                mlflow.set_tracking_uri(tracking_uri)
                mlflow.set_registry_uri(tracking_uri)
            _MODELS[key] = model_ref.load(uri, engine)
        return _MODELS[key]


@task(name="predict-shard", retries=SHARD_RETRIES, retry_delay_seconds=SHARD_RETRY_DELAY_S,
      retry_condition_fn=retry_unless_user_error)
def score_task(paths: list[str], output: str, model_uri: str, model: dict[str, str],
               batch_size: int, tracking_uri: str | None, engine: str,
               also_done_in: list[str] | None = None,
               progress: bool = False) -> dict[str, Any]:  # fmt: skip
    """Score `paths` into `output` (resumable), skipping rows already in `also_done_in`."""
    from taglens.serving.batch_predict import predict_to_file

    predictor = cached_model(model_uri, tracking_uri, engine)
    report = predict_to_file([Path(p) for p in paths], Path(output), predictor, ModelRef(**model),
                             batch_size=batch_size, progress=progress,
                             also_done_in=[Path(p) for p in also_done_in or []])  # fmt: skip
    get_run_logger().info("%s: %d scored, %d skipped, %d errors", output, report.scored,
                          report.skipped, report.errors)  # fmt: skip
    return asdict(report)


@task(name="predict-merge")
def merge_task(parts: list[str], output: str, model: dict[str, str]) -> int:
    """Merge shard outputs into the final output, then delete them."""
    added = merge_outputs([Path(p) for p in parts], Path(output), ModelRef(**model))
    if parts:  # every shard is in the output now: a re-run starts from the output alone
        job_dir = Path(parts[0]).parent
        shutil.rmtree(job_dir, ignore_errors=True)
        if job_dir.parent.is_dir() and not any(job_dir.parent.iterdir()):
            job_dir.parent.rmdir()
    get_run_logger().info("merged %d shards (%d new rows) into %s", len(parts), added, output)
    return added


@flow(name="batch-predict-shards")
def _score_shards(shards: list[list[str]], shard_dir: str, output: str, model_uri: str,
                  model: dict[str, str], batch_size: int,
                  tracking_uri: str | None,
                  engine: str) -> list[dict[str, Any]]:  # fmt: skip
    """Score every shard in parallel on the flow's task runner (Dask)."""
    futures = [
        score_task.submit(paths, f"{shard_dir}/shard-{number:06d}.jsonl", model_uri, model,
                          batch_size, tracking_uri, engine, [output])  # fmt: skip
        for number, paths in enumerate(shards)
    ]
    return [future.result() for future in futures]


@flow(name="batch-predict", timeout_seconds=TIMEOUT_S)
def batch_predict_flow(
    input: str,  # noqa: A002 - the CLI's own word
    output: str,
    model_uri: str | None = None,
    task_runner: str = "local",
    scheduler_address: str | None = None,
    params_path: str = "params.yaml",
    n_workers: int = 2,
    batch_size: int | None = None,
    shard_size: int | None = None,
) -> dict[str, Any]:
    """Score every image of `input` into `output` with the champion (or `model_uri`).

    Args:
        input: a folder, glob, image, or text file listing paths.
        output: a `.csv`, `.jsonl` or `.parquet` file; resumed if it exists.
        model_uri: default `models:/<register.model_name>@champion`.
        task_runner: "local" (one process) or "dask" (shards on a Dask cluster).
        scheduler_address: a running Dask scheduler (`tcp://host:8786`); None starts a local
            cluster of `n_workers` processes. Workers must see the input and output paths.
        params_path: the params file (`predict.*`, `featurize.engine`).
        n_workers: workers of the local cluster when there is no scheduler address.
        batch_size: overrides `predict.batch_size`.
        shard_size: overrides `predict.shard_size`.

    Returns:
        Counts (total, scored, skipped, errors), seconds, images_per_second, model and output.
    """
    from taglens.lifecycle.tracking import configure_tracking

    if task_runner not in TASK_RUNNERS:
        raise TaglensError(f"task_runner must be one of {TASK_RUNNERS}, got {task_runner!r}")
    log = get_run_logger()
    overrides = {f"predict.{key}": value for key, value in
                 {"batch_size": batch_size, "shard_size": shard_size}.items() if value is not None}
    params = load_params(params_path, overrides)
    tracking_uri = configure_tracking(params.base.experiment)
    resolved = model_ref.resolve(model_uri, params.register.model_name)
    uri, ref = resolved.uri, resolved.ref
    model = asdict(ref)
    try:
        paths = [str(p) for p in list_inputs(input)]
    except ValueError:
        if not Path(input).is_dir():
            raise
        paths = []  # a nightly run over an empty inbox has nothing to do: not a failure
        log.warning("no images in %s: nothing to score", input)
    log.info("scoring %d images with %s version %s (%s)", len(paths), ref.name, ref.version,
             task_runner)  # fmt: skip
    report = ScoreReport()
    start = time.monotonic()
    if paths and task_runner == "local":
        report.add(ScoreReport(**score_task(paths, output, uri, model, params.predict.batch_size,
                                            tracking_uri, params.featurize.engine,
                                            progress=True)))  # fmt: skip
    elif paths:
        shards = shard(paths, params.predict.shard_size)
        job = hashlib.sha256(f"{uri}\n{params.predict.shard_size}".encode()).hexdigest()[:12]
        shard_dir = f"{output}.shards/{job}"
        runner = dask_runner(scheduler_address, n_workers)
        results = _score_shards.with_options(task_runner=runner)(
            shards, shard_dir, output, uri, model, params.predict.batch_size, tracking_uri,
            params.featurize.engine,
        )
        for result in results:
            report.add(ScoreReport(**result))
        parts = [f"{shard_dir}/shard-{number:06d}.jsonl" for number in range(len(shards))]
        merge_task(parts, output, model)
    report.seconds = time.monotonic() - start  # wall time, shards ran in parallel
    summary = PredictResult(ref, Path(output), report).to_dict()
    log.info("batch predict done: %s", summary)
    _publish(summary, input, task_runner)
    return summary


def render_markdown(summary: dict[str, Any], input: str, task_runner: str) -> str:  # noqa: A002
    """The batch run as a Prefect artifact: what was scored, with which model, where it went."""
    rows = {
        "input": input, "output": summary["output"], "task runner": task_runner,
        "model": f"{summary['model_name']} version {summary['model_version']}",
        "images": summary["total"], "scored": summary["scored"],
        "skipped (already scored)": summary["skipped"], "errors": summary["errors"],
        "seconds": f"{summary['seconds']:.1f}",
        "images per second": f"{summary['images_per_second']:.2f}",
    }  # fmt: skip
    lines = ["# Batch predict", "", "| | |", "|---|---|"]
    pipe = "\\|"  # a | inside a cell would end it
    lines += [f"| {key} | {str(value).replace('|', pipe)} |" for key, value in rows.items()]
    if summary["errors"]:
        lines += ["", f"{summary['errors']} images could not be scored: their rows in the "
                  "output carry the reason in `error`."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _publish(summary: dict[str, Any], input: str, task_runner: str) -> None:  # noqa: A002
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(markdown=render_markdown(summary, input, task_runner),
                             key=ARTIFACT_KEY, description="Images scored, model, output")


def main(argv: list[str] | None = None) -> int:
    """Run the flow from the command line."""
    from taglens.cli import run_main, setup_logging

    parser = argparse.ArgumentParser(description="Run the batch predict flow.")
    parser.add_argument("--input", required=True,
                        help="a folder, glob, image or text file listing image paths")
    parser.add_argument("--output", required=True,
                        help="a .csv, .jsonl or .parquet file; resumed if it exists")
    parser.add_argument("--model-uri", default=None,
                        help="default: the champion, models:/<register.model_name>@champion")
    parser.add_argument("--task-runner", choices=TASK_RUNNERS, default="local",
                        help="local (one process) or dask (shards on a cluster)")
    parser.add_argument("--scheduler-address", default=None, help="tcp://HOST:8786")
    parser.add_argument("--params", default="params.yaml",
                        help="the params file (default %(default)s)")
    args = parser.parse_args(argv)
    setup_logging()

    def body() -> int:
        # Run as `python -m flows.predict`, this file is __main__, whose tasks Dask workers
        # cannot unpickle by name: use the importable module's flow.
        from flows.predict import batch_predict_flow as importable_flow

        summary = importable_flow(args.input, args.output, args.model_uri, args.task_runner,
                                  args.scheduler_address, args.params)  # fmt: skip
        print(summary)
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
