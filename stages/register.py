"""register: add the evaluated model to the registry and let the promotion gate decide.

As the DVC stage: `python -m stages.register --params params.yaml --models models
--metrics reports/metrics.json --raw data/raw --clean data/clean --out reports/register.json`.
With --raw and --clean, a champion evaluated on another test set is scored again on the current
test split (through evaluate's own scoring code), so both models are compared on the same images.
Admin subcommands: `list`, `history`, `promote VERSION --reason TEXT`, `rollback --reason TEXT`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from taglens.artifacts import MANIFEST, MODEL_INFO, read_model_info
from taglens.atomic import atomic_write_json
from taglens.cli import run_main, setup_logging
from taglens.errors import TaglensError
from taglens.lifecycle.gate import Evaluation, NotComparableError, read_metrics, read_recall
from taglens.lifecycle.lineage import check_metrics_run, run_record
from taglens.lifecycle.registry import Registry
from taglens.lifecycle.registry_admin import promote, rollback, version_table
from taglens.params import Params, load_params
from taglens.serving.pyfunc import logged_model_uri

logger = logging.getLogger(__name__)

HISTORY = "promotions.jsonl"
# DVC sets these in the environment of every stage that `dvc exp run` runs (dvc.env).
EXPERIMENT_ENV = ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV")


def promotion_hold(params: Params) -> str | None:
    """Why a winning model must stay challenger this time, or None when it may be promoted.

    `dvc exp run` never moves the champion: an experiment may never be merged, and batch scoring
    and the web page follow @champion. `register.promote: false` holds every model.
    """
    running = next((os.environ[key] for key in EXPERIMENT_ENV if os.environ.get(key)), None)
    if running:
        return (
            f"held: registered from `dvc exp run` ({running}), which never moves the champion; "
            "to promote it, `dvc exp apply` it, commit, and run `dvc repro`, or "
            "`python -m stages.register promote VERSION --reason ...`"
        )
    if not params.register.promote:
        return (
            "held: register.promote is false; promote by hand with "
            "`python -m stages.register promote VERSION --reason ...`"
        )
    return None


def champion_rescorer(
    params: Params, classes: list[str], *, raw: Path, clean: Path
) -> Callable[[Any], Evaluation]:
    """Score a registered version on the current test split, as evaluate scores a new model."""

    def rescore(version: Any) -> Evaluation:
        from taglens.serving.pyfunc import load_predictor
        from taglens.training.evaluation import hashtag_params, score_test_split

        uri = f"models:/{params.register.model_name}/{version.version}"
        try:
            predictor = load_predictor(uri)
        except Exception as exc:  # noqa: BLE001 - whatever stops loading makes it incomparable
            raise NotComparableError(
                f"champion version {version.version} cannot be loaded from {uri} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
            ) from None
        if list(predictor.classes) != list(classes):
            raise NotComparableError(
                f"champion version {version.version} predicts other classes "
                f"({', '.join(predictor.classes)}) than this model ({', '.join(classes)})"
            )
        predictor = dataclasses.replace(predictor, params=hashtag_params(params.hashtags))
        scored = score_test_split(predictor, params.evaluate.top_k, raw=raw, clean=clean)
        scores = dict(scored.scores)
        per_class, _ = scores.pop("per_class"), scores.pop("confusion")
        return Evaluation(scores, {name: row["recall"] for name, row in per_class.items()})

    return rescore


def run(
    params: Params,
    *,
    models: Path,
    metrics: Path,
    out: Path,
    per_class: Path | None = None,
    history: Path | None = None,
    raw: Path | None = None,
    clean: Path | None = None,
) -> dict[str, Any]:
    """Register the model of the train run in `models/` and write the decision to `out`.

    With `raw` and `clean` (the data the candidate was evaluated on), a champion whose recorded
    evaluation is on another test set is re-scored on this one before the gate compares them.

    Raises:
        FileNotFoundError: model_info.json or metrics.json is missing.
        ValueError: the run id is missing, the metric is unknown, or MLflow lacks the run.
        RegistryError: the registry cannot be read or written; nothing was promoted.
    """
    info = read_model_info(models)
    run_id = info.get("run_id")
    if not run_id:
        raise TaglensError(f"{MODEL_INFO.at(models)} has no run_id: the train stage must run "
                           "inside MLflow")  # fmt: skip
    check_metrics_run(metrics, run_id)
    per_class = per_class or Path(metrics).parent / "evaluate" / "per_class.json"
    evaluation = Evaluation(read_metrics(metrics), read_recall(per_class))
    evaluation.score(params.register.primary_metric)  # fail before touching the registry
    rescore = None
    if raw is not None and clean is not None and MANIFEST.at(clean).is_file():
        rescore = champion_rescorer(params, list(info.get("classes", [])), raw=Path(raw),
                                    clean=Path(clean))  # fmt: skip
    registry = Registry(params.register.model_name, history or Path(out).parent / HISTORY)
    result = registry.register(
        logged_model_uri(run_id), run_id, evaluation, params.register, run_record(run_id),
        rescore=rescore, hold=promotion_hold(params),
    )  # fmt: skip
    _tag_run(run_id, result)
    atomic_write_json(out, result)
    return result


def _tag_run(run_id: str, result: dict[str, Any]) -> None:
    """Note the registered version and decision on the train run, the run of the model."""
    import mlflow

    client = mlflow.MlflowClient()
    client.set_tag(run_id, "register.version", result["version"])
    client.set_tag(run_id, "register.decision", str(result["decision"]))


def _print_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("no versions registered yet: run `dvc repro`")
        return
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for row in rows:
        print("  ".join(str(row[k]).ljust(widths[k]) for k in keys))


def build_parser() -> argparse.ArgumentParser:
    """Paths and `--params` for the stage, plus the admin subcommands."""
    parser = argparse.ArgumentParser(prog="python -m stages.register", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", type=Path, default=argparse.SUPPRESS,
                        help="the params file (default params.yaml)")
    common.add_argument("--history", type=Path, default=argparse.SUPPRESS,
                        help=f"promotion history (default reports/{HISTORY})")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="the params file (default %(default)s)")
    parser.add_argument("--history", type=Path, default=None,
                        help=f"promotion history (default: {HISTORY} beside --out)")
    parser.add_argument("--models", type=Path, default=Path("models"),
                        help="the trained model folder (default %(default)s)")
    parser.add_argument("--metrics", type=Path, default=Path("reports/metrics.json"),
                        help="the evaluation metrics (default %(default)s)")
    parser.add_argument("--per-class", type=Path, default=None,
                        help="per-class recall (default: <metrics dir>/evaluate/per_class.json)")
    parser.add_argument("--out", type=Path, default=Path("reports/register.json"),
                        help="where the decision is written (default %(default)s)")
    parser.add_argument("--raw", type=Path, default=None,
                        help="data/raw: with --clean, re-score a champion evaluated elsewhere")
    parser.add_argument("--clean", type=Path, default=None,
                        help="data/clean: its manifest names the current test split")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("list", parents=[common], help="versions with scores and aliases")
    sub.add_parser("history", parents=[common], help="the promotion history, oldest first")
    promote = sub.add_parser("promote", parents=[common], help="make VERSION champion by hand")
    promote.add_argument("version", help="the registered version to make champion")
    promote.add_argument("--reason", required=True, help="why, recorded in the promotion history")
    rollback = sub.add_parser("rollback", parents=[common], help="back to the previous champion")
    rollback.add_argument("--reason", required=True, help="why, recorded in the promotion history")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the stage, or an admin subcommand."""
    args = build_parser().parse_args(argv)
    setup_logging()

    def body() -> int:
        from taglens.lifecycle.tracking import configure_tracking

        params = load_params(args.params)
        configure_tracking(params.base.experiment)
        if args.command is None:
            result = run(params, models=args.models, metrics=args.metrics, out=args.out,
                         per_class=args.per_class, history=args.history, raw=args.raw,
                         clean=args.clean)  # fmt: skip
            print(f"{result['model_name']} version {result['version']}: {result['decision']} "
                  f"({result['reason']})")  # fmt: skip
            return 0
        registry = Registry(params.register.model_name, args.history or Path("reports") / HISTORY)
        if args.command == "list":
            _print_table(version_table(registry, params.register.primary_metric))
        elif args.command == "history":
            for row in registry.history():
                print(json.dumps(row, sort_keys=True))
        elif args.command == "promote":
            row = promote(registry, args.version, args.reason)
            print(f"version {row['version']} is now champion (was {row['previous']})")
        elif args.command == "rollback":
            row = rollback(registry, args.reason)
            print(f"rolled back: version {row['version']} is champion again "
                  f"(was {row['previous']})")  # fmt: skip
        return 0

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
