"""Serve the web page: `python -m taglens.serving.web [--params params.yaml] [--model-uri URI]`.

The model is loaded once, before the server starts: the champion of the registered model
(`models:/<register.model_name>@champion`) unless `--model-uri` names another MLflow model URI
or a local `models/` directory written by the train stage (`taglens.serving.model_ref`). An
alias (the champion by default) is then followed: every `serve.follow_seconds` the server asks
where it points and swaps in a new version while it answers (`model_slot`); a pinned version or
a local directory is served as is.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import ipaddress
import logging
import time
from pathlib import Path

from fastapi import FastAPI

from taglens.cli import run_with_params
from taglens.errors import TaglensError
from taglens.params import Params
from taglens.serving.model_ref import ModelRef
from taglens.serving.web.app import create_app
from taglens.serving.web.model_slot import AliasSource, Predictor, warm_up
from taglens.serving.web.request_log import LOG_FORMATS, use_log_format

logger = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h): M_ARENA_MAX and M_MMAP_THRESHOLD.
_M_ARENA_MAX = -8
_M_MMAP_THRESHOLD = -3
# Two arenas for the threads that allocate pixels, and every block from 128 KiB up (a decoded
# photo, a batch) in its own mapping, returned to the system when freed.
_ARENAS = 2
_MMAP_THRESHOLD_BYTES = 128 * 1024


def load_model(params: Params, model_uri: str | None) -> tuple[Predictor, ModelRef]:
    """Load the model to serve, on `featurize.engine`, and the name/version to report for it.

    The URI is resolved by `taglens.serving.model_ref` (an alias is pinned to its version first,
    so the version reported is the one serving even if the alias moves meanwhile). The forward
    pass runs on the engine, as batch scoring runs it: calling the Keras model eagerly costs
    Python time that the event loop (the page, /health) would then wait for.

    Raises:
        ModelNotFoundError: no such model, version or alias (e.g. no champion yet).
        FileNotFoundError: a local models directory lacks a file.
    """
    from taglens.serving import model_ref

    if model_ref.local_models_dir(model_uri) is None:  # a local models/ dir needs no MLflow
        from taglens.tracking import configure_tracking

        configure_tracking(params.base.experiment)
    resolved = model_ref.resolve(model_uri, params.register.model_name)
    logger.info("loading %s", resolved.uri)
    return model_ref.load(resolved.uri, params.featurize.engine), resolved.ref


def build_app(params: Params, model_uri: str | None) -> tuple[FastAPI, ModelRef]:
    """Load the model, warm it up, and build the app around it; return the app and its model.

    With `serve.warm_up` the model runs once at every batch size up to `serve.batch_max_size`
    before the server answers (`model_slot.warm_up`). An alias URI (the champion by default) is
    followed when `serve.follow_seconds` > 0.
    """
    from taglens.serving import model_ref

    predictor, label = load_model(params, model_uri)
    warm_batches = params.serve.batch_max_size if params.serve.warm_up else 1
    started = time.perf_counter()
    warm_up(predictor, warm_batches)
    seconds = time.perf_counter() - started
    logger.info("warmed up at batch sizes 1..%d in %.1f s", warm_batches, seconds)
    follow = None
    if model_ref.follows_alias(model_uri) and params.serve.follow_seconds > 0:
        uri = model_uri or model_ref.champion_uri(params.register.model_name)
        follow = AliasSource(uri, params.register.model_name, params.featurize.engine, warm_batches)
        logger.info("following %s: polled every %g s", uri, params.serve.follow_seconds)
    app = create_app(
        predictor,
        label,
        int(params.serve.max_upload_mb * 1_000_000),
        ingest=params.ingest,
        serve=params.serve,
        follow=follow,
    )
    return app, label


def steady_malloc() -> bool:
    """Keep glibc's heap from creeping up under a steady load; False where there is no glibc.

    The server's threads (decode workers, the batcher, the engine's) allocate and free
    megabyte-sized pixel arrays. glibc gives each thread an arena and, once a large block has
    been freed, raises its mmap threshold so later ones come from the arenas, which fragment:
    under the 10-minute soak (bench/soak_web.py) the RSS rose in steps and was not level by the
    end. With two arenas and a fixed 128 KiB threshold (as `MALLOC_ARENA_MAX=2
    MALLOC_MMAP_THRESHOLD_=131072` would set) it stayed level (docs/reliability.md).
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt"):  # musl, macOS: another allocator
        return False
    arenas = libc.mallopt(_M_ARENA_MAX, _ARENAS)
    threshold = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    return arenas == 1 and threshold == 1


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
    parser.add_argument(
        "--log-format", choices=LOG_FORMATS, help="text or json lines (default serve.log_format)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Load params and the model, then serve until interrupted."""
    args = build_parser().parse_args(argv)
    return run_with_params(args, lambda params: run_server(params, args))


def run_server(params: Params, args: argparse.Namespace) -> int:
    """Serve the model `args` name with `params`' settings until interrupted."""
    import uvicorn

    use_log_format(args.log_format or params.serve.log_format)
    if not steady_malloc():
        logger.info("no glibc mallopt here: the allocator keeps its own settings")
    host = args.host or params.serve.host
    port = args.port or params.serve.port
    if not 0 < port < 65_536:
        raise TaglensError(f"--port must be 1..65535, got {port}")
    if not _is_loopback(host):
        logger.warning(
            "binding %s: the page is reachable from other machines, which must name it "
            "by one of serve.allowed_hosts (%s)",
            host,
            ", ".join(params.serve.allowed_hosts),
        )
    app, label = build_app(params, args.model_uri)
    logger.info("serving %s version %s on http://%s:%d/", label.name, label.version, host, port)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="info",
        log_config=None,  # uvicorn's records go through the root handler: text or JSON alike
        access_log=False,  # request_log.RequestLog writes one line per request, with its id
        limit_concurrency=params.serve.limit_concurrency,
        timeout_keep_alive=params.serve.timeout_keep_alive_s,
        timeout_graceful_shutdown=params.serve.timeout_graceful_shutdown_s,
    )
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
