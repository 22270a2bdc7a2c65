"""A long fuzzing campaign over every parser target: what `make fuzz` runs.

    python tests/reliability/fuzz_campaign.py --seconds 300 [--targets ingest_image,upload_image]

Each target runs under atheris for `--seconds` with Pillow's Python plugins instrumented, a
per-input time limit (`--timeout`, libFuzzer's -timeout) and memory limit (`--rss-limit-mb` above
the harness's starting peak, libFuzzer's -rss_limit_mb). The corpus of each target is kept under
`--work` (default `.fuzz/`), so a later campaign starts where this one stopped; crashing, slow or
memory-hungry inputs are written to `<work>/crashes/<target>/`. What ran is written to
`bench/results/fuzz.json` and `fuzz.md` (docs/reliability.md quotes them).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import fuzz_targets  # noqa: E402 - after the path set-up, as the harness does

from bench.results_io import save_results  # noqa: E402

_STATS = ("number_of_executed_units", "average_exec_per_sec", "new_units_added", "peak_rss_mb")


def run_target(target: str, *, seconds: int, timeout: int, rss_mb: int, work: Path) -> dict:
    """Fuzz one target and return what libFuzzer reported."""
    corpus, crashes = work / "corpus" / target, work / "crashes" / target
    scratch = work / "scratch" / target
    for folder in (corpus, crashes, scratch):
        folder.mkdir(parents=True, exist_ok=True)
    for seed in fuzz_targets.seeds(target):
        (corpus / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    before = {p.name for p in crashes.iterdir()}
    inherited = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    args = [
        sys.executable,
        str(HERE / "fuzz_harness.py"),
        target,
        f"-max_total_time={seconds}",
        f"-timeout={timeout}",
        f"-rss_limit_mb={inherited + rss_mb}",
        "-print_final_stats=1",
        f"-artifact_prefix={crashes}/",
        str(corpus),
    ]
    env = {
        **os.environ,
        "TAGLENS_FUZZ_PILLOW": "1",
        "TAGLENS_FUZZ_SCRATCH": str(scratch),
        "PYTHONPATH": str(ROOT),
    }
    start = time.monotonic()
    result = subprocess.run(
        args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=seconds + timeout + 600
    )
    log = result.stderr
    stats = {
        key: float(m.group(1))
        for key in _STATS
        if (m := re.search(rf"stat::{key}:\s*([\d.]+)", log))
    }
    coverage = re.findall(r"cov: (\d+) ft: (\d+) corp: (\d+)", log)
    found = sorted({p.name for p in crashes.iterdir()} - before)
    (work / f"{target}.log").write_text(log[-20000:], encoding="utf-8")
    return {
        "target": target,
        "seconds": round(time.monotonic() - start, 1),
        "inputs": int(stats.get("number_of_executed_units", 0)),
        "inputs_per_second": stats.get("average_exec_per_sec"),
        "new_corpus_units": int(stats.get("new_units_added", 0)),
        "corpus_files": len(list(corpus.iterdir())),
        "coverage_edges": int(coverage[-1][0]) if coverage else None,
        "features": int(coverage[-1][1]) if coverage else None,
        "peak_rss_mb": stats.get("peak_rss_mb"),
        "findings": found,
        "exit_code": result.returncode,
    }


def table(rows: list[dict], settings: dict) -> str:
    """The markdown summary of a campaign."""
    lines = [
        f"Fuzz campaign: {settings['seconds']} s per target, Pillow instrumented, per-input limits "
        f"{settings['timeout']} s and +{settings['rss_limit_mb']} MB RSS; {settings['machine']}.",
        "",
        "| target | inputs run | inputs/s | coverage edges | corpus files | peak RSS MB "
        "| findings |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        found = ", ".join(row["findings"]) or "none"
        lines.append(
            f"| {row['target']} | {row['inputs']} | {row['inputs_per_second']:.0f} | "
            f"{row['coverage_edges']} | {row['corpus_files']} | {row['peak_rss_mb']:.0f} "
            f"| {found} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the campaign; exit 1 if any target found a crash, a timeout or an out-of-memory."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=300, help="fuzzing time per target")
    parser.add_argument("--targets", default="all", help="comma-separated names, or all")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take")
    parser.add_argument(
        "--rss-limit-mb",
        type=int,
        default=2048,
        help="memory one run may grow by before it counts as a finding",
    )
    parser.add_argument("--work", type=Path, default=ROOT / ".fuzz")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    names = sorted(fuzz_targets.targets()) if args.targets == "all" else args.targets.split(",")
    unknown = set(names) - set(fuzz_targets.targets())
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; known: {sorted(fuzz_targets.targets())}")
    rows = []
    for name in names:
        print(f"fuzzing {name} for {args.seconds} s ...", flush=True)
        rows.append(
            run_target(
                name,
                seconds=args.seconds,
                timeout=args.timeout,
                rss_mb=args.rss_limit_mb,
                work=args.work,
            )
        )
    settings = {
        "seconds": args.seconds,
        "timeout": args.timeout,
        "rss_limit_mb": args.rss_limit_mb,
        "machine": f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f}",
    }
    save_results(args.out, "fuzz", {"settings": settings, "targets": rows}, table(rows, settings))
    return 1 if any(row["findings"] or row["exit_code"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
