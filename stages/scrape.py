"""The scrape stage: read the configured source (demo, folder or instagram) and ingest it."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taglens import artifacts
from taglens.atomic import atomic_write_json
from taglens.cli import add_stage_inputs, run_main, setup_logging
from taglens.data.ingest import ingest, open_source
from taglens.errors import TaglensError
from taglens.params import BaseParams, IngestParams, ScrapeParams, load_params
from taglens.progress import progress_bar

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScrapeResult:
    """What the ingest accepted: ingest.json's contents and the summary for the terminal."""

    report: dict[str, Any]
    summary: str

    @property
    def accepted(self) -> int:
        """Images written to data/raw."""
        return int(self.report["accepted"])

    @property
    def duplicates(self) -> list[dict[str, str]]:
        """Each duplicate dropped: the kept and the dropped post's ids and labels."""
        return list(self.report["duplicate_items"])


def run(
    base: BaseParams,
    scrape: ScrapeParams,
    ingest_params: IngestParams,
    *,
    out: Path,
    reports: Path,
    session_file: Path | None = None,
    cache: Path | None = None,
) -> ScrapeResult:
    """Read `scrape.source` and ingest it into `out` (images, posts.jsonl, rejected.jsonl).

    Args:
        base: the classes and the seed.
        scrape: the source and its settings.
        ingest_params: what an accepted image must be.
        out: the raw data directory (data/raw).
        reports: where ingest.json is written.
        session_file: Instaloader session file for the instagram source; defaults to the
            TAGLENS_INSTAGRAM_SESSION environment variable.
        cache: the instagram collection directory, kept between runs so they resume
            (default: `instagram` beside `out`).

    Raises:
        TaglensError: unusable source settings, a missing login, or no image accepted at all.
    """
    source = open_source(base, scrape, out=out, session_file=session_file, cache=cache)
    report = ingest(
        progress_bar(source.items, total=source.total, desc="ingest", unit="image"),
        ingest_params,
        out=out,
        source=scrape.source,
    )
    report.notes.extend(source.notes)
    atomic_write_json(artifacts.INGEST_REPORT.at(reports), report.to_dict())
    if report.accepted == 0:
        logger.warning("ingest:\n%s", report.summary())  # what was refused, before the error
        raise TaglensError(
            f"no image was accepted from the {scrape.source} source; the reasons "
            f"are in {artifacts.REJECTED.at(out)}"
        )
    return ScrapeResult(report.to_dict(), report.summary())


def main(argv: list[str] | None = None) -> int:
    """Command line: `python -m stages.scrape --params params.yaml --out data/raw`."""
    parser = argparse.ArgumentParser(prog="python -m stages.scrape", description=__doc__)
    add_stage_inputs(parser, "params")
    parser.add_argument(
        "--out",
        type=Path,
        default=artifacts.RAW_DIR,
        help=(
            f"{artifacts.RAW_IMAGES}, {artifacts.POSTS.name}, {artifacts.REJECTED.name} "
            "(default %(default)s)"
        ),
    )
    parser.add_argument(
        "--reports",
        type=Path,
        default=artifacts.REPORTS_DIR,
        help=f"directory for {artifacts.INGEST_REPORT.name}",
    )
    parser.add_argument(
        "--session-file",
        type=Path,
        default=None,
        help="Instaloader session file (or set TAGLENS_INSTAGRAM_SESSION)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="instagram collection directory (default: beside --out)",
    )
    args = parser.parse_args(argv)
    setup_logging()

    def body() -> int:
        params = load_params(args.params)
        result = run(
            params.base,
            params.scrape,
            params.ingest,
            out=args.out,
            reports=args.reports,
            session_file=args.session_file,
            cache=args.cache,
        )
        print(result.summary)
        return 0

    try:
        return run_main(body)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
