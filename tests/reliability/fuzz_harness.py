"""Run one fuzz target under atheris: `python fuzz_harness.py TARGET [libFuzzer flags] [CORPUS]`.

Exit status 0 means the run ended within its budget without an unexpected exception; a crash
writes the input to `-artifact_prefix` (and libFuzzer exits non-zero).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    """Fuzz the target named by the first argument; the rest goes to libFuzzer.

    With TAGLENS_FUZZ_PILLOW=1 (what `make fuzz` sets) Pillow and its Python format plugins are
    instrumented too, so the fuzzer is guided by coverage inside the image parsers themselves.
    """
    # The parsers import lazily: the first call imports them inside the instrumented block,
    # which gives libFuzzer coverage feedback from taglens' own code.
    pillow = os.environ.get("TAGLENS_FUZZ_PILLOW") == "1"
    with atheris.instrument_imports(include=["taglens", "yaml", *(["PIL"] if pillow else [])]):
        if pillow:
            from PIL import Image

            Image.init()  # imports every format plugin now, inside the instrumented block
        import fuzz_targets

        target = fuzz_targets.targets()[sys.argv[1]]
        fuzz_targets.check(target, b"")

    def one_input(data: bytes) -> None:
        fuzz_targets.check(target, data)

    atheris.Setup([sys.argv[0], *sys.argv[2:]], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
