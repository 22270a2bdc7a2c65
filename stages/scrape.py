"""The scrape stage: read the configured source (demo, folder or instagram) and ingest it."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from taglens.atomic import atomic_write_json
from taglens.cli import add_stage_inputs, run_main, setup_logging
from taglens.data.ingest import IngestReport, ingest
from taglens.data.posts import normalize_hashtag
from taglens.data.sources.base import SourceItem
from taglens.errors import TaglensError
from taglens.params import PAPER_CLASSES, Params, load_params
from taglens.progress import progress_bar

logger = logging.getLogger(__name__)

REPORT_FILE = "ingest.json"


def _instagram(
    params: Params, *, session_file: Path | None, cache: Path
) -> tuple[Iterable[SourceItem], list[str]]:
    # imports instaloader only when it is used
    from taglens.data.sources import instagram, instagram_loader, instagram_posts

    settings = params.scrape.instagram
    classes = params.base.classes
    unknown = [t for t in settings.hashtags if classes and normalize_hashtag(t) not in classes]
    if unknown:
        raise TaglensError(
            f"scrape.instagram.hashtags {unknown} are not in base.classes: each hashtag searched "
            "is a class, so add them to base.classes or remove them"
        )
    salt = instagram_posts.owner_salt(settings)
    session_env = os.environ.get(instagram_loader.SESSION_ENV)
    session = session_file or (Path(session_env) if session_env else None)
    loader = instagram_loader.make_loader(session, settings.max_wait_seconds)
    collection = instagram.collect(loader, settings, cache=cache, salt=salt)
    notes = list(collection.notes)
    notes.append(
        f"instagram: {sum(collection.per_tag.values())} posts collected in {cache} "
        f"({collection.downloaded} images downloaded now, {collection.failed} failed, "
        f"{collection.videos_skipped} videos skipped)"
    )
    return instagram.collected_items(cache, settings), notes


def run(
    params: Params, *, out: Path, reports: Path, session_file: Path | None = None,
    cache: Path | None = None,
) -> IngestReport:  # fmt: skip
    """Read `scrape.source` and ingest it into `out` (images, posts.jsonl, rejected.jsonl).

    Args:
        params: the whole params file (reads base, scrape and ingest).
        out: the raw data directory (data/raw).
        reports: where ingest.json is written.
        session_file: Instaloader session file for the instagram source; defaults to the
            TAGLENS_INSTAGRAM_SESSION environment variable.
        cache: the instagram collection directory, kept between runs so they resume
            (default: `instagram` beside `out`).

    Raises:
        ValueError: unusable source settings, a missing login, or no image accepted at all.
    """
    source = params.scrape.source
    notes: list[str] = []
    total = None
    items: Iterable[SourceItem]
    if source == "demo":
        from taglens.data.sources.demo import generate_demo

        demo = params.scrape.demo
        classes = params.base.classes or PAPER_CLASSES
        items = generate_demo(demo, classes, params.base.seed)
        total = demo.images_per_class * len(classes)
    elif source == "folder":
        from taglens.data.sources.folder import FolderSource

        folder = FolderSource(Path(params.scrape.folder or ""), params.base.classes)
        items, total = folder, len(folder)
        notes = folder.notes  # the same list: notes added while iterating show up too
    else:
        cache = cache or out.parent / "instagram"
        items, notes = _instagram(params, session_file=session_file, cache=cache)
    report = ingest(progress_bar(items, total=total, desc="ingest", unit="image"), params.ingest,
                    out=out, source=source)  # fmt: skip
    report.notes.extend(notes)
    atomic_write_json(reports / REPORT_FILE, report.to_dict())
    print(report.summary())
    if report.accepted == 0:
        raise TaglensError(f"no image was accepted from the {source} source; the reasons are in "
                           f"{out / 'rejected.jsonl'}")  # fmt: skip
    return report


def main(argv: list[str] | None = None) -> int:
    """Command line: `python -m stages.scrape --params params.yaml --out data/raw`."""
    parser = argparse.ArgumentParser(prog="python -m stages.scrape", description=__doc__)
    add_stage_inputs(parser, "params")
    parser.add_argument("--out", type=Path, default=Path("data/raw"),
                        help="images, posts.jsonl, rejected.jsonl (default %(default)s)")
    parser.add_argument("--reports", type=Path, default=Path("reports"),
                        help="directory for ingest.json")  # fmt: skip
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
        run(params, out=args.out, reports=args.reports, session_file=args.session_file,
            cache=args.cache)  # fmt: skip
        return 0

    try:
        return run_main(body)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
