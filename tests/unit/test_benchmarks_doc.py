"""BENCHMARKS.md quotes only figures that a results file under bench/results/ holds."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# measured figures: 3.45, 0.95, 19.6x, 4.8e-07 (integers such as 224 px or batch 16 are settings)
DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?:e[-+]\d+)?(?!\.?\d)")


def sections(text: str) -> dict[str, str]:
    """The document's `## ` sections by heading."""
    parts = re.split(r"^## ", text, flags=re.MULTILINE)
    return {part.splitlines()[0]: part for part in parts[1:]}


def test_every_decimal_in_benchmarks_md_is_in_a_results_file():
    results = "\n".join(path.read_text() for path in sorted((ROOT / "bench" / "results").glob("*"))
                        if path.suffix in (".md", ".json"))  # fmt: skip
    own = {heading: body for heading, body in sections((ROOT / "BENCHMARKS.md").read_text())
           .items() if not heading.lower().startswith("web")}  # fmt: skip
    assert own, "BENCHMARKS.md has no sections"
    missing = {(heading, number) for heading, body in own.items()
               for number in DECIMAL.findall(body) if number not in results}  # fmt: skip
    assert not missing, f"figures in BENCHMARKS.md that no bench/results file holds: {missing}"


def test_the_figure_pattern_finds_measured_numbers():
    text = "ran at 0.76 (19.6x, 4.8e-07 relative) at 224 px, batch 16, 1e-4, v1.2.3"
    assert DECIMAL.findall(text) == ["0.76", "19.6", "4.8e-07"]


def test_every_results_file_named_in_benchmarks_md_exists():
    text = (ROOT / "BENCHMARKS.md").read_text()
    named = set(re.findall(r"bench/results/[\w.-]+\.(?:json|md)", text))
    assert named, "BENCHMARKS.md names no results file"
    assert {name for name in named if not (ROOT / name).is_file()} == set()
