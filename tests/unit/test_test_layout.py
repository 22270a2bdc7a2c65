"""The test tree has no two test modules of one name: pytest imports them by basename.

tests/ has no __init__.py files (rootdir-relative imports), so two `test_x.py` in different
folders make collection stop with "import file mismatch" and the whole suite fails to start.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_module_has_a_name_of_its_own():
    names = Counter(path.name for path in TESTS.rglob("test_*.py"))
    assert len(names) > 100  # the whole tree was found
    assert [name for name, count in names.items() if count > 1] == []
