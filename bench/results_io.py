"""Where benchmarks leave their numbers: `bench/results/<stem>.json` and a markdown table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from taglens.atomic import atomic_write_json, atomic_write_text


def save_results(out: Path, stem: str, result: dict[str, Any], table: str) -> None:
    """Write the raw result as JSON and its table as markdown, then print the table."""
    atomic_write_json(out / f"{stem}.json", result)
    atomic_write_text(out / f"{stem}.md", table)
    print(table)
