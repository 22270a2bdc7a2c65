"""Where benchmarks leave their numbers: `bench/results/<stem>.json` and a markdown table."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from taglens.atomic import atomic_write_json, atomic_write_text

Item = TypeVar("Item")


def in_order(items: Iterable[tuple[str, Item]], order: Sequence[str]) -> list[tuple[str, Item]]:
    """(name, value) pairs in the order of `order`, names it lacks last, alphabetically.

    A saved result's JSON sorts its keys: a table rendered from it must still list its rows as
    the run did, so the order is stated once, in the bench, not taken from the dict.
    """
    return sorted(
        items, key=lambda item: (order.index(item[0]) if item[0] in order else len(order), item[0])
    )


def save_results(out: Path, stem: str, result: dict[str, Any], table: str) -> None:
    """Write the raw result as JSON and its table as markdown, then print the table."""
    atomic_write_json(out / f"{stem}.json", result)
    atomic_write_text(out / f"{stem}.md", table)
    print(table)
