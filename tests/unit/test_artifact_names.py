"""Every file a stage writes is named once, in taglens/artifacts.py: other code uses its constants.

The test reads the string literals of taglens/, stages/ and flows/ (docstrings aside: they may
mention a file for the reader) and fails on any that holds an artifact's file name.
"""

from __future__ import annotations

import ast
from pathlib import Path

from taglens import artifacts

ROOT = Path(__file__).resolve().parents[2]
NAMES = sorted(
    {value.name for value in vars(artifacts).values() if isinstance(value, artifacts.Artifact)}
)
# Not artifacts, but the same text: the folder source reads DIR/posts.jsonl, an input.
ALLOWED = {("taglens/data/sources/folder.py", "posts.jsonl")}
# While the restructuring is under way: the literals not replaced yet, as "path name"
# (an entry that no longer occurs fails too, so the list only shrinks).
KNOWN = {
    "taglens/cli.py posts.jsonl",
    "taglens/data/posts.py posts.jsonl",
    "taglens/data/posts.py rejected.jsonl",
    "taglens/features/extract.py posts.jsonl",
    "taglens/lifecycle/gate.py per_image.json",
    "taglens/lifecycle/gate.py model_info.json",
    "taglens/serving/predictor.py hashtags.json",
    "taglens/serving/pyfunc_inputs.py ingest.json",
    "taglens/training/hashtag_ranking.py hashtags.json",
    "taglens/training/hashtags.py hashtags.json",
    "stages/clean.py dropped.csv",
    "stages/clean.py manifest.csv",
    "stages/evaluate.py confusion.csv",
    "stages/evaluate.py metrics.json",
    "stages/register.py per_class.json",
    "stages/register.py per_image.json",
    "stages/register.py metrics.json",
    "stages/register.py register.json",
    "stages/scrape.py posts.jsonl",
    "stages/scrape.py rejected.jsonl",
    "stages/scrape.py ingest.json",
    "stages/train.py history.csv",
    "stages/train.py train.json",
    "flows/featurize.py posts.jsonl",
    "flows/predict.py drift_reference.json",
}


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
    assert {"metrics.json", "register.json", "posts.jsonl"} <= set(NAMES)


def test_no_other_module_spells_an_artifact_name():
    found: dict[str, list[int]] = {}
    for package in ("taglens", "stages", "flows"):
        for path in sorted((ROOT / package).rglob("*.py")):
            where = str(path.relative_to(ROOT))
            if where == "taglens/artifacts.py":
                continue
            for line, text in literals(path):
                for name in NAMES:
                    if name in text and (where, name) not in ALLOWED:
                        found.setdefault(f"{where} {name}", []).append(line)
    assert {hit: lines for hit, lines in found.items() if hit not in KNOWN} == {}
    assert KNOWN - set(found) == set(), "fixed: remove these from KNOWN"
