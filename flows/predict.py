"""The batch predict flow: score images with the champion, locally or on a Dask cluster.

`task_runner="local"` scores everything in one task, straight into the output (the same code as
`python -m stages.predict`). `task_runner="dask"` splits the input into shards of
`predict.shard_size`, scores each shard on a Dask worker into its own JSON-lines file beside the
output (`<output>.shards/`), then merges the shards in order into the output: the rows are the
same as the local path's, none lost or duplicated, and a re-run resumes both the shards and the
merge. The model alias is pinned to one version before any shard starts, and each worker process
loads that model once. Run by hand with `python -m flows.predict --input ... --output ...`.

Into a Parquet output (the nightly default) a run adds one part; its rows are then compared with
the model's validation outputs (`taglens.model.drift`, `predict.drift` in params.yaml). Each
run is an MLflow run (`batch-predict`: counts and drift figures) and a Prefect artifact; with
`predict.drift.retrain: true` a flagged run starts the weekly-retrain deployment at once.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows.deploy import RETRAIN
from flows.runners import (
    SHARD_RETRIES,
    SHARD_RETRY_DELAY_S,
    dask_runner,
    retry_unless_user_error,
    shard_results,
)
from taglens import artifacts
from taglens.errors import TaglensError
from taglens.params import DriftParams, load_params
from taglens.run_reports import batch_markdown
from taglens.serving import model_ref
from taglens.serving.batch.inputs import list_inputs, param_path, path_param, plan_shards
from taglens.serving.batch.outputs import refuse_single_file, run_parts
from taglens.serving.batch.scoring import (
    PredictResult,
    ScoreReport,
    batch_drift,
    log_batch_run,
    merge_outputs,
)
from taglens.serving.model_ref import ModelRef
from taglens.serving.model_ref import load_cached as cached_model

TASK_RUNNERS = ("local", "dask")
# A nightly run that is still going after this long is stuck (the whole flowers set, 4,317
# images, scores in minutes here): fail it so the next night's run is not blocked behind it.
TIMEOUT_S = 6 * 3600
ARTIFACT_KEY = "batch-predict-report"
RUN_NAME = "batch-predict"  # the MLflow run each flow run logs
RETRAIN_DEPLOYMENT = f"training/{RETRAIN}"  # <flow name>/<deployment name>, flows/deploy.py


@task(
    name="predict-shard",
    retries=SHARD_RETRIES,
    retry_delay_seconds=SHARD_RETRY_DELAY_S,
    retry_condition_fn=retry_unless_user_error,
)
def score_task(
    paths: list[str],
    output: str,
    model_uri: str,
    model: dict[str, str],
    batch_size: int,
    tracking_uri: str | None,
    engine: str,
    max_pixels: int,
    also_done_in: list[str] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score `paths` into `output` (resumable), skipping rows already in `also_done_in`.

    Images over `max_pixels` (`ingest.max_pixels`) become error rows before they are decoded.
    """
    from taglens.serving.batch.scoring import predict_to_file

    predictor = cached_model(model_uri, tracking_uri, engine)
    rehashed: dict = {}
    report = predict_to_file(
        [Path(p) for p in paths],
        Path(output),
        predictor,
        ModelRef(**model),
        batch_size=batch_size,
        progress=progress,
        also_done_in=[Path(p) for p in also_done_in or []],
        keep_stat=bool(also_done_in),  # a shard: its rows reach the output's index via merge
        rehashed=rehashed,
        max_pixels=max_pixels,
    )
    get_run_logger().info(
        "%s: %d scored, %d skipped, %d errors", output, report.scored, report.skipped, report.errors
    )
    if also_done_in:
        return {**asdict(report), "rehashed": [[*key, *stat] for key, stat in rehashed.items()]}
    return asdict(report)


@task(name="predict-merge")
def merge_task(
    parts: list[str], output: str, model: dict[str, str], rehashed: list[list] | None = None
) -> int:
    """Merge shard outputs into the final output, then delete them."""
    stats = {(path, sha): (size, mtime) for path, sha, size, mtime in rehashed or []}
    added = merge_outputs([Path(p) for p in parts], Path(output), ModelRef(**model), stats)
    if parts:  # every shard is in the output now: a re-run starts from the output alone
        job_dir = Path(parts[0]).parent
        shutil.rmtree(job_dir, ignore_errors=True)
        if job_dir.parent.is_dir() and not any(job_dir.parent.iterdir()):
            job_dir.parent.rmdir()
    get_run_logger().info("merged %d shards (%d new rows) into %s", len(parts), added, output)
    return added


@flow(name="batch-predict-shards")
def _score_shards(
    shards: list[list[str]],
    files: list[str],
    output: str,
    model_uri: str,
    model: dict[str, str],
    batch_size: int,
    tracking_uri: str | None,
    engine: str,
    max_pixels: int,
) -> list[dict[str, Any]]:
    """Score every shard in parallel on the flow's task runner (Dask).

    `shards` holds each path as `path_param` quoted it: a flow's parameters go to the Prefect
    API as JSON, which a name that is not UTF-8 could not be.
    """
    futures = [
        score_task.submit(
            [param_path(path) for path in paths],
            file,
            model_uri,
            model,
            batch_size,
            tracking_uri,
            engine,
            max_pixels,
            [output],
        )
        for paths, file in zip(shards, files, strict=True)
    ]
    return shard_results(futures)


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
        output: a `.csv` or `.jsonl` file, or a `.parquet` folder that gains one part per run
            (drift is checked on these); resumed if it exists.
        model_uri: default `models:/<register.model_name>@champion`.
        task_runner: "local" (one process) or "dask" (shards on a Dask cluster).
        scheduler_address: a running Dask scheduler (`tcp://host:8786`); None starts a local
            cluster of `n_workers` processes. Workers must see the input and output paths.
        params_path: the params file (`predict.*`, `featurize.engine`, `ingest.max_pixels`).
        n_workers: workers of the local cluster when there is no scheduler address.
        batch_size: overrides `predict.batch_size`.
        shard_size: overrides `predict.shard_size`.

    Returns:
        Counts (total, scored, skipped, errors), seconds, images_per_second, model and output.
    """
    from taglens.tracking import configure_tracking

    if task_runner not in TASK_RUNNERS:
        raise TaglensError(f"task_runner must be one of {TASK_RUNNERS}, got {task_runner!r}")
    log = get_run_logger()
    overrides = {
        f"predict.{key}": value
        for key, value in {"batch_size": batch_size, "shard_size": shard_size}.items()
        if value is not None
    }
    params = load_params(params_path, overrides)
    tracking_uri = configure_tracking(params.base.experiment)
    resolved = model_ref.resolve(model_uri, params.register.model_name)
    uri = resolved.uri
    ref = resolved.ref
    model = asdict(ref)
    try:
        paths = [str(p) for p in list_inputs(input)]
    except ValueError:
        if not Path(input).is_dir():
            raise
        paths = []  # a nightly run over an empty inbox has nothing to do: not a failure
        log.warning("no images in %s: nothing to score", input)
    log.info(
        "scoring %d images with %s version %s (%s)", len(paths), ref.name, ref.version, task_runner
    )
    report = ScoreReport()
    start = time.monotonic()
    if Path(output).suffix.lower() == ".parquet":
        refuse_single_file(Path(output))
    parts_before = {part.name for part in run_parts(Path(output))}
    if paths and task_runner == "local":
        report.add(
            ScoreReport(
                **score_task(
                    paths,
                    output,
                    uri,
                    model,
                    params.predict.batch_size,
                    tracking_uri,
                    params.featurize.engine,
                    params.ingest.max_pixels,
                    progress=True,
                )
            )
        )
    elif paths:
        plan = plan_shards(paths, output, uri, params.predict.shard_size)
        runner = dask_runner(scheduler_address, n_workers)
        results = _score_shards.with_options(task_runner=runner)(
            [[path_param(path) for path in part] for part in plan.shards],
            plan.files,
            output,
            uri,
            model,
            params.predict.batch_size,
            tracking_uri,
            params.featurize.engine,
            params.ingest.max_pixels,
        )
        rehashed = []
        for result in results:
            rehashed += result.pop("rehashed", [])
            report.add(ScoreReport(**result))
        merge_task(plan.files, output, model, rehashed)
    report.seconds = time.monotonic() - start  # wall time, shards ran in parallel
    summary = PredictResult(ref, Path(output), report).to_dict()
    log.info("batch predict done: %s", summary)
    retrain_error = None
    if params.predict.drift.enabled:
        new_parts = [str(p) for p in run_parts(Path(output)) if p.name not in parts_before]
        drift = drift_task(
            new_parts, uri, tracking_uri, params.featurize.engine, model, params.predict.drift
        )
        summary["drift"] = drift
        if drift.get("drifted") and params.predict.drift.retrain:
            try:
                summary["retrain_flow_run_id"] = trigger_retrain()
            except TaglensError as exc:  # the scores and figures are recorded first, then fail
                retrain_error = summary["retrain_error"] = str(exc)
    summary["mlflow_run_id"] = log_batch_run(summary, input, task_runner, RUN_NAME)
    _publish(summary, input, task_runner)
    if retrain_error is not None:
        raise TaglensError(retrain_error)
    return summary


@task(name="predict-drift")
def drift_task(
    parts: list[str],
    model_uri: str,
    tracking_uri: str | None,
    engine: str,
    model: dict[str, str],
    settings: DriftParams,
) -> dict[str, Any]:
    """Compare this run's new rows (the output parts it added) with the validation outputs.

    Returns:
        The DriftReport as a dict, or {"judged": False, "drifted": False, "reason": ...} when
        there is nothing to compare: the model carries no reference, or the run added no part
        (nothing new, or a CSV / JSON-lines output, which drift is not checked on).
    """
    log = get_run_logger()
    reference = None
    if not parts:  # checked first: nothing to compare needs no model loaded
        reason = "this run added no rows to a Parquet output"
    else:
        reference = cached_model(model_uri, tracking_uri, engine).drift_reference
        reason = None
        if reference is None:
            reason = (
                f"the model has no {artifacts.DRIFT_REFERENCE.name} (trained before it, "
                "or fine-tuned)"
            )
    if reason is not None:
        log.info("drift not checked: %s", reason)
        return {"judged": False, "drifted": False, "reason": reason}
    report = batch_drift(parts, reference, model, settings)
    if report.drifted:
        log.warning("%s", report.line())
    else:
        log.info("%s", report.line())
    return {**asdict(report), "line": report.line()}


@task(name="trigger-retrain")
def trigger_retrain() -> str:
    """Start a run of the weekly-retrain deployment now, without waiting for it (its id)."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    try:
        flow_run = run_deployment(RETRAIN_DEPLOYMENT, timeout=0, tags=["drift"])
    except ObjectNotFound:
        raise TaglensError(
            f"drift was flagged and predict.drift.retrain is true, but the Prefect server has no "
            f"deployment {RETRAIN_DEPLOYMENT}: register it (`make schedule` or "
            "`python -m flows.deploy`) or set predict.drift.retrain: false"
        ) from None
    get_run_logger().warning("drift: started %s (flow run %s)", RETRAIN_DEPLOYMENT, flow_run.id)
    return str(flow_run.id)


def _publish(summary: dict[str, Any], input: str, task_runner: str) -> None:  # noqa: A002
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(
        markdown=batch_markdown(summary, input, task_runner, RETRAIN_DEPLOYMENT),
        key=ARTIFACT_KEY,
        description="Images scored, model, output",
    )


def main(argv: list[str] | None = None) -> int:
    """Run the flow from the command line."""
    from taglens.cli import run_main, setup_logging

    parser = argparse.ArgumentParser(description="Run the batch predict flow.")
    parser.add_argument(
        "--input", required=True, help="a folder, glob, image or text file listing image paths"
    )
    parser.add_argument(
        "--output",
        required=True,
        help="a .csv or .jsonl file or a .parquet folder; resumed if it exists",
    )
    parser.add_argument(
        "--model-uri",
        default=None,
        help="default: the champion, models:/<register.model_name>@champion",
    )
    parser.add_argument(
        "--task-runner",
        choices=TASK_RUNNERS,
        default="local",
        help="local (one process) or dask (shards on a cluster)",
    )
    parser.add_argument("--scheduler-address", default=None, help="tcp://HOST:8786")
    parser.add_argument(
        "--params", default="params.yaml", help="the params file (default %(default)s)"
    )
    args = parser.parse_args(argv)
    setup_logging()

    def body() -> int:
        # Run as `python -m flows.predict`, this file is __main__, whose tasks Dask workers
        # cannot unpickle by name: use the importable module's flow.
        from flows.predict import batch_predict_flow as importable_flow

        summary = importable_flow(
            args.input,
            args.output,
            args.model_uri,
            args.task_runner,
            args.scheduler_address,
            args.params,
        )
        print(summary)
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
