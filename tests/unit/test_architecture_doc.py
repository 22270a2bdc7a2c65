"""docs/architecture.md's module map and layer line say what the tree holds.

Each row of the "Module map" table names a folder and, in backticks, the modules in it (with or
without `.py`; a subpackage's modules inside its own parentheses in its parent's row). Every
library, stage and flow module must be named in the row of its folder, every `.py` the table names
must exist there, and the "Layers:" line must be the layer order the import test holds.
"""

from __future__ import annotations

import re
from pathlib import Path

from test_import_layers import LAYERS

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")


def rows() -> dict[str, str]:
    """Folder (`taglens/data/`) -> the rest of its row in the module map table."""
    table = DOC.split("## Module map", 1)[1]
    found = {}
    for line in table.splitlines():
        match = re.match(r"\| `([\w/]+/)` \|(.*)\|$", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


ROWS = rows()


def row_of(path: Path) -> str:
    """The folder row that holds `path`: the longest folder of the table it lies under."""
    where = path.relative_to(ROOT).as_posix()
    return max((folder for folder in ROWS if where.startswith(folder)), key=len)


def test_the_table_has_a_row_per_package():
    assert {"taglens/", "taglens/model/", "taglens/lifecycle/", "stages/", "flows/"} <= set(ROWS)


def test_every_module_is_named_in_its_folders_row():
    unnamed = []
    for package in ("taglens", "stages", "flows"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.stem == "__init__":
                continue
            names = set(re.findall(r"`([\w./]+?)(?:\.py)?`", ROWS[row_of(path)]))
            if path.stem not in names:
                unnamed.append(str(path.relative_to(ROOT)))
    assert unnamed == []


def test_every_file_the_table_names_exists():
    missing = []
    for folder, text in ROWS.items():
        for name in re.findall(r"`([\w]+\.py)`", text):
            if not list((ROOT / folder).rglob(name)):
                missing.append(f"{folder}{name}")
    assert missing == []


def test_the_layer_line_is_the_import_tests_order():
    [line] = [line for line in DOC.splitlines() if line.startswith("Layers: ")]
    assert line == "Layers: " + " -> ".join(name for name, _ in LAYERS)
