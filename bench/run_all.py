"""Run every benchmark in turn (`make bench`); each prints its ratios and writes bench/results/.

They need the real photos in ../shared/datasets/flowers (and the MobileNet weights in
../shared/weights). The web load test starts its own servers and is run on its own:
`python -m bench.load_web --clients 1 32` (BENCHMARKS.md). At the end BENCHMARKS.md is
re-rendered from bench/results/ (`python -m bench.render`).
"""

from __future__ import annotations

import sys

from bench import featurize, fine_tune, nightly, predict, render, search, train, views_cost

BENCHMARKS = (  # the commands BENCHMARKS.md shows
    ("featurize", featurize.main, ["--taglens", "tensorflow"]),  # VGG-19, every engine
    ("featurize", featurize.main, ["--backbone", "mobilenet", "--images", "320",
                                   "--taglens", "tensorflow"]),
    ("train", train.main, []),
    ("search", search.main, []),
    ("fine_tune", fine_tune.main, []),
    ("views_cost", views_cost.main, []),
    ("predict", predict.main, ["--engine", "tensorflow"]),  # MobileNet's fastest engine here
    ("nightly", nightly.main, []),  # 1,000 new photos after 10,000 scored
)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; return the first non-zero exit code, or 0."""
    status = 0
    for name, bench_main, args in BENCHMARKS:
        print(f"== bench.{name} {' '.join(args)}".rstrip(), flush=True)
        code = bench_main(args)
        status = status or code
    render.main([])  # BENCHMARKS.md from the results just written
    return status


if __name__ == "__main__":
    sys.exit(main())
