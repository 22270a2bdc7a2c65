"""Serve the web page: `python -m taglens.serving.web [--params params.yaml] [--model-uri URI]`.

The model is loaded once, before the server starts: the champion of the registered model
(`models:/<register.model_name>@champion`) unless `--model-uri` names another MLflow model URI
or a local `models/` directory written by the train stage.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
from pathlib import Path

from taglens.cli import run_main, setup_logging
from taglens.errors import TaglensError
from taglens.features.engines import on_engine
from taglens.params import Params, load_params
from taglens.serving.web.app import ModelLabel, Predictor, create_app

logger = logging.getLogger(__name__)


def load_model(params: Params, model_uri: str | None) -> tuple[Predictor, ModelLabel]:
    """Load the model to serve and the name/version to report for it.

    An alias (`models:/NAME@champion`) is resolved to its version first and that exact version
    is loaded, so the version reported is the one serving even if the alias moves meanwhile.

    Raises:
        pyfunc.ModelNotFoundError: no such model, version or alias (e.g. no champion yet).
        FileNotFoundError: a local models directory lacks a file.
    """
    from taglens.serving.batch_predict import graph_predictor
    from taglens.serving.predictor import MODEL_FILE, HashtagPredictor

    # The forward pass runs as a traced graph, as batch scoring runs it: calling the Keras model
    # eagerly costs Python time that the event loop (the page, /health) then waits for.
    if model_uri and (Path(model_uri) / MODEL_FILE).is_file():
        models_dir = Path(model_uri).resolve()
        predictor = graph_predictor(HashtagPredictor.from_dir(models_dir))
        return predictor, ModelLabel(models_dir.name, "local")

    from taglens.lifecycle.tracking import configure_tracking
    from taglens.serving.pyfunc import load_predictor, pin_version

    configure_tracking(params.base.experiment)
    uri = model_uri or f"models:/{params.register.model_name}@champion"
    name, version = uri, "unregistered"
    if uri.startswith("models:/"):
        if "@" in uri:  # an alias: pin the version it points at now
            uri, name, version = pin_version(uri)
        else:  # an explicit version: loading it reports a missing one
            name, _, version = uri.removeprefix("models:/").partition("/")
    logger.info("loading %s", uri)
    return graph_predictor(load_predictor(uri)), ModelLabel(name, str(version))


def build_parser() -> argparse.ArgumentParser:
    """The command line: paths and overrides only; every default comes from params.yaml."""
    parser = argparse.ArgumentParser(prog="python -m taglens.serving.web", description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    parser.add_argument(
        "--model-uri",
        help="an MLflow model URI (models:/NAME/3, runs:/ID/model) or a local models/ "
        "directory; default models:/<register.model_name>@champion",
    )
    parser.add_argument("--host", help="address to bind (default serve.host)")
    parser.add_argument("--port", type=int, help="port (default serve.port)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Load params and the model, then serve until interrupted."""
    args = build_parser().parse_args(argv)
    setup_logging()

    def body() -> int:
        import uvicorn

        params = load_params(args.params)
        host = args.host or params.serve.host
        port = args.port or params.serve.port
        if not 0 < port < 65_536:
            raise TaglensError(f"--port must be 1..65535, got {port}")
        if not _is_loopback(host):
            logger.warning(
                "binding %s: the page is reachable from other machines, which must name it "
                "by one of serve.allowed_hosts (%s)", host, ", ".join(params.serve.allowed_hosts),
            )  # fmt: skip
        predictor, label = load_model(params, args.model_uri)
        predictor = on_engine(predictor, params.featurize.engine)  # as featurize runs the backbone
        serve = params.serve
        app = create_app(
            predictor,
            label,
            int(serve.max_upload_mb * 1_000_000),
            ingest=params.ingest,
            serve=serve,
        )
        logger.info("serving %s version %s on http://%s:%d/", label.name, label.version, host, port)
        uvicorn.run(
            app,
            host=host,
            port=port,
            log_level="info",
            limit_concurrency=serve.limit_concurrency,
            timeout_keep_alive=serve.timeout_keep_alive_s,
            timeout_graceful_shutdown=serve.timeout_graceful_shutdown_s,
        )
        return 0

    return run_main(body)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
