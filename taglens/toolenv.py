"""The environment every entry point gives the tools: quiet logs, no telemetry, offline-safe waits.

Written once here; `taglens.cli.setup_logging`, MLflow's set-up, the flows' stage runner and the
tests apply it, and the Makefile reads it from `python -m taglens.toolenv` (one `KEY=VALUE` per
line) for the tools it starts itself (dvc, prefect, mlflow). Standard library only, so that
works before the virtual environment exists.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

TOOL_ENV: dict[str, str] = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow's C++ info and warning lines
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # else `mlflow server` leaves jobs behind
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # Prefect's default 20 s is too short for a temporary server on a busy 2-core machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "DVC_NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "1",  # the cross-tool convention, for anything the names above miss
}


def apply(env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Set each of TOOL_ENV's keys that `env` (default: this process's) does not set already.

    A value the user set wins, so a person can still turn a tool's logging up.

    Returns:
        `env`, for chaining into a subprocess call.
    """
    target = os.environ if env is None else env
    for key, value in TOOL_ENV.items():
        target.setdefault(key, value)
    return target


def main() -> int:
    """Print TOOL_ENV as `KEY=VALUE` lines (read by the Makefile)."""
    for key, value in TOOL_ENV.items():
        print(f"{key}={value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
