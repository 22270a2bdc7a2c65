"""Every file a stage writes is named once, in taglens/artifacts.py: other code uses its constants.

The test reads the string literals of taglens/, stages/ and flows/ (docstrings aside: they may
mention a file for the reader) and fails on any that holds an artifact's file name.
"""

from __future__ import annotations

import ast
from pathlib import Path

from taglens import artifacts

ROOT = Path(__file__).resolve().parents[2]
# (an artifact named inside a subfolder, such as clean/distances.png, counts by its file name)
NAMES = sorted(
    {
        Path(value.name).name
        for value in vars(artifacts).values()
        if isinstance(value, artifacts.Artifact)
    }
)
# Not artifacts, but the same text: the folder source reads DIR/posts.jsonl, an input.
ALLOWED = {("taglens/data/sources/folder.py", "posts.jsonl")}


def literals(path: Path) -> list[tuple[int, str]]:
    """(line, text) of each string literal in `path` that is not a docstring."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def test_the_names_come_from_artifacts():
    assert {"metrics.json", "register.json", "promotions.jsonl", "posts.jsonl"} <= set(NAMES)


def test_no_other_module_spells_an_artifact_name():
    found = []
    for package in ("taglens", "stages", "flows"):
        for path in sorted((ROOT / package).rglob("*.py")):
            where = str(path.relative_to(ROOT))
            if where == "taglens/artifacts.py":
                continue
            for line, text in literals(path):
                found += [
                    f"{where}:{line} {name}"
                    for name in NAMES
                    if name in text and (where, name) not in ALLOWED
                ]
    assert found == []
