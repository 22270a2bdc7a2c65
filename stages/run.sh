#!/bin/sh
# Runs `python -m MODULE ARGS...` with the interpreter that has taglens installed, whichever
# `python` is first on PATH: dvc.yaml calls every stage through this, so `.venv/bin/dvc repro`
# and `.venv/bin/dvc exp run` work without activating the virtual environment.
# Order: $TAGLENS_PYTHON, ./.venv (what `make` creates), the active virtualenv, then python3.
# Usage: sh stages/run.sh MODULE ARGS... (MODULE as for `python -m`). When TAGLENS_STAGE_EXIT_FILE
# is set, the command's exit code is written there: the Prefect flow tells a user error (2) from
# a crash without reading DVC's human output.
set -eu
module="$1"
shift
if [ -n "${TAGLENS_PYTHON:-}" ]; then
    python="$TAGLENS_PYTHON"
elif [ -x .venv/bin/python ]; then
    python=.venv/bin/python
elif [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
    python="$VIRTUAL_ENV/bin/python"
else
    python=python3
fi
if [ -z "${TAGLENS_STAGE_EXIT_FILE:-}" ]; then
    exec "$python" -m "$module" "$@"
fi
# The flow's case: keep the exit code, and pass a stop request on to the stage.
"$python" -m "$module" "$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM INT HUP
status=0
wait "$child" || status=$?
if kill -0 "$child" 2>/dev/null; then  # a signal interrupted wait: wait for the stage itself
    status=0
    wait "$child" || status=$?
fi
echo "$status" > "$TAGLENS_STAGE_EXIT_FILE"
exit "$status"
