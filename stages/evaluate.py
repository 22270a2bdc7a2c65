"""evaluate: the saved model on the test split, scored and plotted, logged to the model's run."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from taglens import artifacts
from taglens.cli import add_stage_inputs, run_stage
from taglens.lifecycle import evaluation
from taglens.lifecycle.evaluation import EvaluateResult, hashtag_params, score_test_split
from taglens.params import BaseParams, EvaluateParams, HashtagParams

logger = logging.getLogger(__name__)


def run(
    base: BaseParams,
    params: EvaluateParams,
    hashtags: HashtagParams,
    *,
    raw: Path,
    clean: Path,
    models: Path,
    out: Path,
) -> EvaluateResult:
    """Score models/ on the test split; write reports/metrics.json, confusion.csv and plots.

    A model train quantized (model_info.json `precision: int8`) is scored as it is served, on
    its INT8 model (`openvino-int8`); any other on Keras.

    Raises:
        MissingArtifactError: models/, the manifest or posts are missing.
        TaglensError: the model's classes differ from the manifest's, or the test split is empty.
    """
    from taglens.features.engines import INT8_ENGINE, on_engine
    from taglens.model.predictor import HashtagPredictor

    predictor = HashtagPredictor.from_dir(models, params=hashtag_params(hashtags))
    if predictor.info.get("precision") == "int8":
        predictor = on_engine(predictor, INT8_ENGINE)
    scored = score_test_split(predictor, params.top_k, raw=Path(raw), clean=Path(clean))
    scores, per_class = evaluation.write_reports(
        scored,
        predictor.classes,
        predictor.image_size,
        Path(out),
        misclassified_max=params.misclassified_max,
        model_run_id=str(predictor.info.get("run_id") or ""),
    )
    evaluation.log_to_run(
        predictor.info,
        scores,
        per_class,
        Path(out) / evaluation.PLOTS_DIR,
        log_photos=base.log_photos,
    )
    logger.info("evaluate: %s", {k: v for k, v in scores.items() if not k.startswith("top")})
    return EvaluateResult(scores, artifacts.METRICS.at(out))


def main(argv: list[str] | None = None) -> int:
    """Command line: `python -m stages.evaluate --params params.yaml --models models ...`."""
    parser = argparse.ArgumentParser(description=__doc__)
    add_stage_inputs(parser, "params", "raw", "clean", "models")
    parser.add_argument(
        "--out",
        type=Path,
        default=artifacts.REPORTS_DIR,
        help=(
            f"{artifacts.METRICS.name}, {artifacts.CONFUSION.name}, "
            f"{evaluation.PLOTS_DIR}/ plots (default %(default)s)"
        ),
    )
    args = parser.parse_args(argv)
    return run_stage(
        args,
        lambda params: run(
            params.base,
            params.evaluate,
            params.hashtags,
            raw=args.raw,
            clean=args.clean,
            models=args.models,
            out=args.out,
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
