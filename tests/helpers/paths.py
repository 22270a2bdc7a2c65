"""Where the project, the test fixtures and the shared real data sets are."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
SHARED = ROOT.parent / "shared"
FLOWERS = SHARED / "datasets" / "flowers"
WEIGHTS = SHARED / "weights"
