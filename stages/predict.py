"""Batch predict: score a folder, glob or list of images with the champion into csv/jsonl/parquet.

python -m stages.predict --input photos/ --output predictions/photos.parquet
python -m stages.predict --input 'photos/**/*.jpg' --output out.csv --model-uri models:/taglens/3
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from taglens.cli import add_stage_inputs, run_main, setup_logging
from taglens.params import Params, load_params
from taglens.serving.batch_predict import (
    ModelRef,
    ScoreReport,
    graph_predictor,
    list_inputs,
    predict_to_file,
)
from taglens.serving.predictor import HashtagPredictor

logger = logging.getLogger(__name__)


def local_models_dir(uri: str | None) -> Path | None:
    """The directory if `uri` is a models/ directory the train stage wrote, else None."""
    local = Path(uri).expanduser() if uri else None
    return local if local is not None and (local / "model.keras").is_file() else None


def resolve_model(model_uri: str | None, model_name: str) -> tuple[str, ModelRef]:
    """Pin a model URI to one version, so every shard of a job uses the same model.

    `None` means `models:/<model_name>@champion`. An alias is looked up once and replaced by
    `models:/NAME/VERSION`. A `models/` directory written by the train stage is used as is.

    Raises:
        pyfunc.ModelNotFoundError: the alias or version does not exist (the message says
            how to train and register one).
    """
    uri = model_uri or f"models:/{model_name}@champion"
    local = local_models_dir(uri)
    if local is not None:
        return str(local), ModelRef(name=str(local), version="local")
    if not uri.startswith("models:/"):
        return uri, ModelRef(name=uri, version="")
    from taglens.serving.pyfunc import pin_version

    pinned, name, version = pin_version(uri)
    return pinned, ModelRef(name=name, version=version)


def load_model(uri: str, engine: str = "tensorflow") -> HashtagPredictor:
    """Load a pinned URI from `resolve_model` (a models/ directory or an MLflow model URI).

    The model is wrapped to run on `engine` (`featurize.engine`), as batch scoring wants.
    """
    local = Path(uri)
    if local.is_dir() and (local / "model.keras").is_file():
        return graph_predictor(HashtagPredictor.from_dir(local), engine)
    from taglens.serving.pyfunc import load_predictor

    return graph_predictor(load_predictor(uri), engine)


def run(
    params: Params,
    *,
    input: str,  # noqa: A002 - the CLI's own word
    output: Path,
    model_uri: str | None = None,
    progress: bool = True,
) -> ScoreReport:
    """Score every image of `input` into `output`, skipping those already scored there."""
    paths = list_inputs(input)
    uri, model = resolve_model(model_uri, params.register.model_name)
    predictor = load_model(uri, params.featurize.engine)
    logger.info("scoring %d images with %s version %s", len(paths), model.name, model.version)
    return predict_to_file(paths, Path(output), predictor, model,
                           batch_size=params.predict.batch_size, progress=progress,
                           max_pixels=params.ingest.max_pixels)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True,
                        help="a folder (recursive), a glob, an image, or a text file of paths")
    parser.add_argument("--output", required=True, type=Path,
                        help="the output file: .csv, .jsonl or .parquet (resumed if it exists)")
    parser.add_argument("--model-uri", default=None,
                        help="models:/NAME/VERSION, models:/NAME@ALIAS, runs:/ID/model or a "
                             "models/ directory (default: models:/<register.model_name>@champion)")
    add_stage_inputs(parser, "params")
    args = parser.parse_args(argv)  # fmt: skip

    def body() -> int:
        from taglens.lifecycle.tracking import configure_tracking

        setup_logging()
        params = load_params(args.params)
        if local_models_dir(args.model_uri) is None:  # a local models/ dir needs no MLflow
            configure_tracking(params.base.experiment)
        report = run(params, input=args.input, output=args.output, model_uri=args.model_uri)
        print(f"{args.output}: {report.scored} scored, {report.skipped} already done, "
              f"{report.errors} errors ({report.images_per_second:.1f} img/s)")  # fmt: skip
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
