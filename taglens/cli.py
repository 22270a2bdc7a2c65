"""Shared plumbing for command-line entry points: logging and turning user errors into messages."""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Callable

from taglens.params import ParamsError

# A full disk or quota is the user's to fix too; other OS errors keep their traceback.
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
# Errors a user can fix: shown as one line, without a traceback. The library's own user errors
# (ParamsError, BackboneWeightsError, ModelNotFoundError, RegistryError, ...) subclass ValueError,
# so every entry point treats them alike without registering them one by one.
USER_ERRORS: tuple[type[BaseException], ...] = (ParamsError, FileNotFoundError, ValueError)

_QUIET_TOOLS = {
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
}


def setup_logging(level: int = logging.INFO) -> None:
    """Log to stderr with timestamps, and keep the tools from phoning home."""
    for key, value in _QUIET_TOOLS.items():
        os.environ.setdefault(key, value)
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
        print(f"error: {exc.strerror}{where}: free disk space and run again (outputs are written "
              "atomically, so finished work is kept and nothing half-written is left)",
              file=sys.stderr)  # fmt: skip
        return 2
