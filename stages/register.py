"""register: add the evaluated model to the registry and let the promotion gate decide.

As the DVC stage: `python -m stages.register --params params.yaml --models models
--metrics reports/metrics.json --raw data/raw --clean data/clean --out reports/register.json`.
With --raw and --clean, the champion is scored again on the current test split (through
evaluate's own scoring code), so the gate pairs both models image by image on the same images;
without them a model that has a champion to beat stays challenger.
Admin subcommands: `list`, `history`, `promote VERSION --reason TEXT`, `rollback --reason TEXT`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from taglens import artifacts
from taglens.artifacts import MANIFEST
from taglens.cli import run_with_params
from taglens.errors import TaglensError
from taglens.features.engines import EngineMissingError
from taglens.lifecycle.gate import Evaluation, NotComparableError
from taglens.lifecycle.promotion import (
    ChampionRescorer,
    Registered,
    format_table,
    promote,
    register_run,
    rollback,
    version_table,
)
from taglens.lifecycle.registry import Registry, RegistryError, unlock
from taglens.model.pyfunc import ModelStoreError
from taglens.params import Params, RegisterParams
from taglens.serving import model_ref

logger = logging.getLogger(__name__)

# where per_class.json and per_image.json sit relative to metrics.json's folder (for help texts)
PER_CLASS_BESIDE = artifacts.PER_CLASS.at(artifacts.evaluated_beside("")).as_posix()
PER_IMAGE_BESIDE = artifacts.PER_IMAGE.at(artifacts.evaluated_beside("")).as_posix()


def _first_line(exc: Exception) -> str:
    """An exception's first line, at most 200 characters, for a one-line reason."""
    return str(exc).splitlines()[0][:200] if str(exc) else ""


def champion_rescorer(params: Params, *, raw: Path, clean: Path) -> ChampionRescorer | None:
    """Score a registered version on the current test split, as evaluate scores a new model.

    None when `clean` holds no split (nothing to re-score on).
    """
    if not MANIFEST.at(clean).is_file():
        return None

    def rescore(version: Any, classes: list[str]) -> Evaluation:
        from taglens.lifecycle.evaluation import hashtag_params, score_test_split

        uri = f"models:/{params.register.model_name}/{version.version}"
        try:
            predictor = model_ref.load(uri, params.featurize.engine)
        except (EngineMissingError, ModelStoreError) as exc:  # this machine, the store: fixable
            raise RegistryError(
                f"cannot load champion version {version.version} to pair it with this model: "
                f"{exc}; nothing was registered or promoted: run register again once that is "
                "fixed"
            ) from None
        except TaglensError as exc:  # the version itself: another format, unconvertible
            raise NotComparableError(
                f"champion version {version.version} cannot be loaded from {uri} "
                f"({type(exc).__name__}: {_first_line(exc)})"
            ) from None
        except Exception as exc:  # noqa: BLE001 - the store, the network, memory: they may pass
            # A decision is final once tagged: a failure that may pass must not become one.
            raise RegistryError(
                f"cannot load champion version {version.version} from {uri} "
                f"({type(exc).__name__}: {_first_line(exc)}); nothing was registered or "
                "promoted: fix the tracking store or server and run register again (if that "
                "version cannot be loaded any more, promote another by hand: `python -m "
                "stages.register promote VERSION`)"
            ) from None
        if list(predictor.classes) != list(classes):
            raise NotComparableError(
                f"champion version {version.version} predicts other classes "
                f"({', '.join(predictor.classes)}) than this model ({', '.join(classes)})"
            )
        predictor = dataclasses.replace(predictor, params=hashtag_params(params.hashtags))
        top_k = params.evaluate.top_k
        scored = score_test_split(predictor, top_k, raw=Path(raw), clean=Path(clean))
        scores = dict(scored.scores)
        per_class = scores.pop("per_class")
        scores.pop("confusion")
        return Evaluation(
            scores,
            {name: row["recall"] for name, row in per_class.items()},
            {row["sha256"]: row["correct"] for row in scored.per_image},
        )

    return rescore


def run(
    register: RegisterParams,
    *,
    models: Path,
    metrics: Path,
    out: Path,
    per_class: Path | None = None,
    per_image: Path | None = None,
    history: Path | None = None,
    rescorer: ChampionRescorer | None = None,
) -> Registered:
    """Register the model of the train run in `models/` and write the decision to `out`.

    With a `rescorer` (`champion_rescorer`), the champion is re-scored on the current test split
    and the gate pairs it with this model image by image.

    Raises:
        FileNotFoundError: model_info.json, metrics.json or per_image.json is missing.
        EvidenceError: metrics.json names no run or another run, or lacks its test fingerprint.
        ValueError: the run id is missing, the metric is unknown, or MLflow lacks the run.
        RegistryError: the registry cannot be read or written; nothing was promoted.
    """
    # register.json is a persisted DVC output (never restored from the run-cache), which DVC
    # leaves in place when the stage runs: a failed run must not leave the last one's decision
    # looking like this model's
    Path(out).unlink(missing_ok=True)
    return register_run(
        register,
        models=models,
        metrics=metrics,
        out=out,
        per_class=per_class,
        per_image=per_image,
        history=history or artifacts.PROMOTIONS.at(Path(out).parent),
        rescorer=rescorer,
    )


def build_parser() -> argparse.ArgumentParser:
    """Paths and `--params` for the stage, plus the admin subcommands."""
    parser = argparse.ArgumentParser(
        prog="python -m stages.register",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--params",
        type=Path,
        default=argparse.SUPPRESS,
        help="the params file (default params.yaml)",
    )
    common.add_argument(
        "--history",
        type=Path,
        default=argparse.SUPPRESS,
        help=f"promotion history (default {artifacts.PROMOTIONS.default})",
    )
    parser.add_argument(
        "--params",
        type=Path,
        default=Path("params.yaml"),
        help="the params file (default %(default)s)",
    )
    parser.add_argument(
        "--history",
        type=Path,
        default=None,
        help=f"promotion history (default: {artifacts.PROMOTIONS.name} beside --out)",
    )
    parser.add_argument(
        "--models",
        type=Path,
        default=artifacts.MODELS_DIR,
        help="the trained model folder (default %(default)s)",
    )
    parser.add_argument(
        "--metrics",
        type=Path,
        default=artifacts.METRICS.default,
        help="the evaluation metrics (default %(default)s)",
    )
    parser.add_argument(
        "--per-class",
        type=Path,
        default=None,
        help=f"per-class recall (default: <metrics dir>/{PER_CLASS_BESIDE})",
    )
    parser.add_argument(
        "--per-image",
        type=Path,
        default=None,
        help=f"each test image right or wrong (default: <metrics dir>/{PER_IMAGE_BESIDE})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=artifacts.DECISION.default,
        help="where the decision is written (default %(default)s)",
    )
    parser.add_argument(
        "--raw",
        type=Path,
        default=None,
        help="data/raw: with --clean, re-score a champion evaluated elsewhere",
    )
    parser.add_argument(
        "--clean",
        type=Path,
        default=None,
        help="data/clean: its manifest names the current test split",
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("list", parents=[common], help="versions with scores and aliases")
    sub.add_parser("history", parents=[common], help="the promotion history, oldest first")
    promote = sub.add_parser("promote", parents=[common], help="make VERSION champion by hand")
    promote.add_argument("version", help="the registered version to make champion")
    promote.add_argument("--reason", required=True, help="why, recorded in the promotion history")
    rollback = sub.add_parser("rollback", parents=[common], help="back to the previous champion")
    rollback.add_argument("--reason", required=True, help="why, recorded in the promotion history")
    sub.add_parser(
        "unlock",
        parents=[common],
        help="remove a registry lock left on the MLflow server by a killed process",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the stage, or an admin subcommand."""
    args = build_parser().parse_args(argv)
    return run_with_params(args, lambda params: _command(args, params))


def _command(args: argparse.Namespace, params: Params) -> int:
    from taglens.tracking import configure_tracking

    configure_tracking(params.base.experiment)
    if args.command is None:
        rescorer = None
        if args.raw is not None and args.clean is not None:
            rescorer = champion_rescorer(params, raw=args.raw, clean=args.clean)
        result = run(
            params.register,
            models=args.models,
            metrics=args.metrics,
            out=args.out,
            per_class=args.per_class,
            per_image=args.per_image,
            history=args.history,
            rescorer=rescorer,
        )
        print(result.summary())
        return 0
    registry = Registry(params.register.model_name, args.history or artifacts.PROMOTIONS.default)
    if args.command == "list":
        print(format_table(version_table(registry, params.register.primary_metric)))
    elif args.command == "history":
        for row in registry.history():
            print(json.dumps(row, sort_keys=True))
    elif args.command == "promote":
        row = promote(registry, args.version, args.reason)
        print(f"version {row['version']} is now champion (was {row['previous']})")
    elif args.command == "unlock":
        removed = unlock(params.register.model_name)
        print(
            f"removed the registry lock of {params.register.model_name}"
            if removed
            else f"{params.register.model_name} has no registry lock on the server"
        )
    elif args.command == "rollback":
        row = rollback(registry, args.reason)
        print(f"rolled back: version {row['version']} is champion again (was {row['previous']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
