"""The `taglens` command, and what every entry point shares: logging, one-line user errors.

`taglens` has one subcommand per stage, batch predict, the web page, the registry admin and the
flows. Each hands its arguments to the module that `python -m` runs (`taglens clean ...` is
`python -m stages.clean ...`), so dvc.yaml, Prefect and a person all run the same code.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taglens import artifacts, toolenv
from taglens.errors import TaglensError

if TYPE_CHECKING:
    from taglens.params import Params

# A full disk or quota is the user's to fix too; other OS errors keep their traceback.
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
# Errors a user can fix: shown as one line, without a traceback. The library's own user errors
# (ParamsError, BackboneWeightsError, ModelNotFoundError, RegistryError, ...) are TaglensErrors;
# a missing input file is the user's to provide. Anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (TaglensError, FileNotFoundError)

# subcommand -> (module whose main(argv) runs it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "scrape": ("stages.scrape", "collect images and captions from the configured source"),
    "featurize": ("stages.featurize", "one backbone forward pass per image, cached by content"),
    "clean": ("stages.clean", "drop outliers far from their class centroid, split the rest"),
    "train": ("stages.train", "fit the classifier head (or a sweep) on the cached features"),
    "evaluate": ("stages.evaluate", "score the trained model on the test split"),
    "register": ("stages.register", "register the model; the gate decides on champion"),
    "registry": ("stages.register", "registry admin: list, history, promote, rollback, unlock"),
    "predict": ("stages.predict", "score a folder, glob or list of images (batch job)"),
    "serve": ("taglens.serving.web.__main__", "the web page: upload a photo, get hashtags"),
    "summary": ("stages.summary", "where the last pipeline run left its results"),
    "retrain": ("flows.training", "the Prefect training flow once (dvc repro, report)"),
    "deploy": ("flows.deploy", "register the scheduled deployments on a Prefect server"),
    "schedule": ("flows.schedule", "serve both scheduled flows in this process (one machine)"),
    "services": ("taglens.services", "start|stop|status the team's services on this machine"),
}
REGISTRY_ADMIN = frozenset({"list", "history", "promote", "rollback", "unlock"})


# The inputs several stages read, with the dvc.yaml layout as defaults: one wording for every stage.
STAGE_INPUTS: dict[str, tuple[Path, str]] = {
    "params": (Path("params.yaml"), "the params file"),
    "raw": (
        artifacts.RAW_DIR,
        f"scrape's output: {artifacts.RAW_IMAGES} and {artifacts.POSTS.name}",
    ),
    "features": (artifacts.FEATURES_DIR, "featurize's feature store"),
    "clean": (artifacts.CLEAN_DIR, "the manifest of kept images and their split"),
    "models": (artifacts.MODELS_DIR, "train's model folder"),
}


def add_stage_inputs(parser: argparse.ArgumentParser, *names: str) -> None:
    """Add `--NAME PATH` options for the named STAGE_INPUTS, each with its default and help."""
    for name in names:
        default, text = STAGE_INPUTS[name]
        parser.add_argument(
            f"--{name}", type=Path, default=default, help=f"{text} (default %(default)s)"
        )


def setup_logging(level: int = logging.INFO) -> None:
    """Log to stderr with timestamps, and keep the tools from phoning home."""
    toolenv.apply()
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def run_main(body: Callable[[], int], extra_errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run a CLI body; a user error becomes `error: ...` on stderr and exit code 2."""
    try:
        return body()
    except USER_ERRORS + extra_errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in _DISK_FULL:
            raise
        where = f" while writing {exc.filename}" if exc.filename else ""
        print(
            f"error: {exc.strerror}{where}: free disk space and run again (outputs are written "
            "atomically, so finished work is kept and nothing half-written is left)",
            file=sys.stderr,
        )
        return 2


def run_with_params(args: argparse.Namespace, body: Callable[[Params], int]) -> int:
    """An entry point's body: logging set up, `args.params` loaded, user errors as one line."""
    from taglens.params import load_params

    setup_logging()
    return run_main(lambda: body(load_params(args.params)))


def run_stage(
    args: argparse.Namespace,
    call: Callable[[Params], Any],
    *,
    tracked: bool = True,
    text: Callable[[Any], str] = lambda result: result.summary(),
) -> int:
    """A stage's main once its arguments are parsed: params in, one summary line out.

    Loads params, sets up MLflow for stages that log to it (`tracked`), runs `call(params)` and
    prints `text(result)`; user errors become one line, as every entry point reports them.
    """

    def body(params: Params) -> int:
        if tracked:
            from taglens.tracking import configure_tracking

            configure_tracking(params.base.experiment)
        print(text(call(params)))
        return 0

    return run_with_params(args, body)


def package_version() -> str:
    """The installed taglens version, or the source tree's when it is run uninstalled."""
    try:
        return version("taglens")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser; each subcommand's own options are its module's (`CMD --help`)."""
    parser = argparse.ArgumentParser(
        prog="taglens",
        description="Suggest hashtags for photos: the taglens pipeline's stages, "
        "batch predict, the web page, the registry admin and the Prefect flows.",
        epilog="`taglens COMMAND --help` lists a command's options. Inside the pipeline, "
        "`dvc repro` runs the stages in order.",
    )
    parser.add_argument("--version", action="version", version=f"taglens {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        # add_help=False: `taglens clean --help` reaches the stage's own parser.
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """`taglens COMMAND [options]`: run COMMAND's module with the remaining arguments."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    module_name = COMMANDS[args.command][0]
    if args.command == "registry" and not REGISTRY_ADMIN.intersection(rest) and "-h" not in rest:
        if "--help" not in rest:  # without one, stages.register would register the model
            parser.error(f"registry needs one of: {', '.join(sorted(REGISTRY_ADMIN))}")
    # The modules' parsers name themselves after argv[0]: make usage lines read `taglens CMD`.
    sys.argv[0] = f"taglens {args.command}"
    return importlib.import_module(module_name).main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
