"""dvc.yaml lists, for every stage, each project module the stage's code can import.

DVC re-runs a stage when one of its deps changes, so a module missing from the list would let a
code change leave stale outputs in place. The closure is static and conservative: every import
in a module counts, including the ones inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from taglens import artifacts

ROOT = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES = ("taglens", "stages")


def module_file(name: str) -> Path | None:
    """The file of a project module (a module or a package's __init__), if it exists."""
    path = ROOT / (name.replace(".", "/") + ".py")
    if path.is_file():
        return path
    package = ROOT / name.replace(".", "/") / "__init__.py"
    return package if package.is_file() else None


def imported_names(path: Path) -> set[str]:
    """Every project module name a file imports (`from a import b` counts a and a.b)."""
    package = list(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.split(".")[0] in PROJECT_PACKAGES}


def import_closure(module: str) -> set[Path]:
    """The files of every project module reachable from `module` by imports."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        path = module_file(todo.pop())
        if path is not None and path not in seen:
            seen.add(path)
            todo.extend(imported_names(path))
    return seen


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_module_a_stage_imports_is_one_of_its_deps(stage):
    spec = STAGES[stage]
    module = "stages." + spec["cmd"].split("stages.")[1].split()[0]
    deps = [dep if isinstance(dep, str) else next(iter(dep)) for dep in spec["deps"]]
    files = {str(path.relative_to(ROOT)) for path in import_closure(module)}
    assert f"stages/{stage}.py" in files  # the closure starts at the stage's own module
    covered = {f for f in files if any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)}
    missing = sorted(f for f in files - covered if not f.endswith("__init__.py"))
    assert missing == [], f"dvc.yaml stage {stage!r} lacks deps: {missing}"


def test_the_closure_follows_lazy_and_relative_imports():
    files = {str(p.relative_to(ROOT)) for p in import_closure("stages.register")}
    # register imports the test-split scoring inside a function, which reads the manifest
    needed = {
        "taglens/lifecycle/evaluation.py",
        "taglens/training/splits.py",
        "taglens/lifecycle/registry.py",
    }
    assert needed <= files


def test_dvc_yaml_runs_the_stages_in_the_one_order():
    assert list(STAGES) == list(artifacts.STAGES)
