"""Batch predict: score a folder, glob or list of images with the champion into csv/jsonl/parquet.

python -m stages.predict --input photos/ --output predictions/photos.parquet
python -m stages.predict --input 'photos/**/*.jpg' --output out.csv --model-uri models:/taglens/3
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from taglens.cli import add_stage_inputs, run_with_params
from taglens.params import FeaturizeParams, IngestParams, Params, PredictParams
from taglens.serving import model_ref
from taglens.serving.batch.inputs import list_inputs
from taglens.serving.batch.scoring import PredictResult, predict_to_file

logger = logging.getLogger(__name__)


def run(
    predict: PredictParams,
    featurize: FeaturizeParams,
    ingest: IngestParams,
    *,
    model: model_ref.ResolvedModel,
    input: str,  # noqa: A002 - the CLI's own word
    output: Path,
    progress: bool = True,
) -> PredictResult:
    """Score every image of `input` into `output` with `model` on `featurize.engine`.

    Images this model version already scored in `output` are skipped.
    """
    paths = list_inputs(input)
    predictor = model_ref.load(model.uri, featurize.engine)
    logger.info(
        "scoring %d images with %s version %s", len(paths), model.ref.name, model.ref.version
    )
    report = predict_to_file(
        paths,
        Path(output),
        predictor,
        model.ref,
        batch_size=predict.batch_size,
        progress=progress,
        max_pixels=ingest.max_pixels,
    )
    return PredictResult(model.ref, Path(output), report)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--input",
        required=True,
        help="a folder (recursive), a glob, an image, or a text file of paths",
    )
    parser.add_argument(
        "--output",
        required=True,
        type=Path,
        help="the output: .csv, .jsonl, or .parquet (a folder gaining a part "
        "per run); resumed if it exists",
    )
    parser.add_argument(
        "--model-uri",
        default=None,
        help="models:/NAME/VERSION, models:/NAME@ALIAS, runs:/ID/model or a "
        "models/ directory (default: models:/<register.model_name>@champion)",
    )
    add_stage_inputs(parser, "params")
    args = parser.parse_args(argv)
    return run_with_params(args, lambda params: _score(args, params))


def _score(args: argparse.Namespace, params: Params) -> int:
    from taglens.tracking import configure_tracking

    if model_ref.local_models_dir(args.model_uri) is None:  # a models/ dir needs no MLflow
        configure_tracking(params.base.experiment)
    model = model_ref.resolve(args.model_uri, params.register.model_name)
    result = run(
        params.predict,
        params.featurize,
        params.ingest,
        model=model,
        input=args.input,
        output=args.output,
    )
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
