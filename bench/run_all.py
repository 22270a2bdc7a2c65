"""Run every benchmark in turn (`make bench`); each prints its ratios and writes bench/results/.

The commands are exactly the ones BENCHMARKS.md shows beside its figures (a test in
tests/unit/test_benchmarks_doc.py holds the two lists equal), in document order; then BENCHMARKS.md
is re-rendered from bench/results/ (`python -m bench.render`). They need the real photos in
../shared/datasets/flowers and the MobileNet weights in ../shared/weights. On 2 cores the whole
set takes a few hours (the quality benchmark runs the pipeline twice; the server benchmarks want
a quiet machine; the soak takes ten minutes): `--only NAME ...` runs the benchmarks of those
modules alone, `--skip NAME ...` all but those, e.g.
`python -m bench.run_all --only load_web serve_compare`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHMARKS = (  # (module under bench/, its arguments): the commands BENCHMARKS.md shows
    ("featurize", "--images 320 --taglens tensorflow"),  # VGG-19, every engine
    ("featurize", "--images 320 --engines openvino --taglens --stem featurize-openvino"),
    ("featurize", "--backbone mobilenet --images 320 --taglens tensorflow"),
    (
        "featurize",
        "--backbone mobilenet --images 320 --engines openvino --taglens "
        "--stem featurize-mobilenet-openvino",
    ),
    ("int8", "--part speed --calibration 100 --validation 100 --max-drop 0.99 --images 160"),
    ("int8", "--part accuracy --calibration 100 --validation 100 --max-iterations 5"),
    ("predict", "--images 800 --repeats 3 --rss 1000 10000"),
    ("nightly", "--new 1000 --history 10000 --repeats 7"),  # 1,000 new after 10,000 scored
    ("train", ""),
    ("load_web", "--clients 1 32 --size 224 --duration 20 --repeats 3"),
    ("serve_compare", "--clients 1 32 --duration 10 --repeats 2"),
    ("soak_web", "--duration 600 --clients 32"),
    ("search", ""),
    ("fine_tune", ""),
    ("fine_tune", "--layers 12 --learning-rate 0.0001"),
    ("views_cost", ""),
    ("quality", ""),
)


def command(name: str, args: str) -> str:
    """The command line as BENCHMARKS.md shows it."""
    return f".venv/bin/python -m bench.{name} {args}".rstrip()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; return the first non-zero exit code, or 0."""
    names = sorted({name for name, _ in BENCHMARKS})
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=names, help="run only these modules' commands")
    parser.add_argument("--skip", nargs="+", choices=names, default=[], help="leave these out")
    args = parser.parse_args(argv)
    status = 0
    for name, bench_args in BENCHMARKS:
        if (args.only and name not in args.only) or name in args.skip:
            continue
        print(f"== {command(name, bench_args)}", flush=True)
        code = importlib.import_module(f"bench.{name}").main(bench_args.split())
        status = status or code
    from bench import render

    render.main([])  # BENCHMARKS.md from the results just written
    return status


if __name__ == "__main__":
    sys.exit(main())
