"""Imports run one way: each import in taglens/, stages/ and flows/ points to its layer or below.

Every import statement counts: module level, inside functions (lazy imports) and under
`if TYPE_CHECKING:`. A module belongs to the layer of the longest prefix in LAYERS that names
it; a module that no prefix names fails the test, so a new package is placed before it is used.
Within a layer imports may go either way, but never round in a circle (a cycle through a
package's `__init__` counts too).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("taglens", "stages", "flows")

# Lowest first: a module may import from its own layer and from the layers before it.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "foundation",
        ("taglens", "taglens.errors", "taglens.atomic", "taglens.progress", "taglens.toolenv"),
    ),
    ("params", ("taglens.params",)),
    ("artifacts", ("taglens.artifacts",)),
    ("tracking", ("taglens.tracking", "taglens.lineage")),
    ("data", ("taglens.data",)),
    ("features", ("taglens.features",)),
    ("training", ("taglens.training",)),
    ("model", ("taglens.model",)),
    ("lifecycle", ("taglens.lifecycle",)),
    ("serving", ("taglens.serving",)),
    (
        "entry",
        ("taglens.cli", "taglens.services", "taglens.run_reports", "taglens.serving.web.__main__"),
    ),
    ("stages", ("stages",)),
    ("flows", ("flows",)),
)
# While the restructuring is under way: the violations not fixed yet, each as
# "importer -> imported" (an entry that no longer occurs fails too, so the lists only shrink).
KNOWN_UPWARD: set[str] = set()
KNOWN_CYCLES: list[list[str]] = []


def module_files() -> dict[str, Path]:
    """Every project module by dotted name (a package by its own name, for its __init__)."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


MODULES = module_files()


def layer_of(module: str) -> int:
    """The index in LAYERS of the longest prefix that names `module` (ValueError if none)."""
    best: tuple[int, int] | None = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            named = module == prefix or module.startswith(prefix + ".")
            if named and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    if best is None:
        raise ValueError(f"{module} is in no layer: add its package to LAYERS")
    return best[0]


def imports_in(source: str, module: str, is_package: bool) -> Iterator[tuple[str, int]]:
    """(dotted name, line) of everything `source` imports, relative imports made absolute.

    `from pkg import name` yields `pkg.name`; the caller decides whether that is a module.
    """
    here = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            parts = here[: len(here) - node.level + 1] if node.level else []
            base = ".".join([*parts, *([node.module] if node.module else [])])
            for alias in node.names:
                yield f"{base}.{alias.name}", node.lineno


def nearest_module(name: str) -> str | None:
    """The project module an imported name lives in (`a.b.func` -> `a.b`), None outside."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def project_imports(module: str) -> set[tuple[str, int]]:
    """(project module, line) for each import in `module` of another project module."""
    path = MODULES[module]
    found = set()
    for name, line in imports_in(path.read_text(encoding="utf-8"), module, path.stem == "__init__"):
        target = nearest_module(name) if name.split(".")[0] in PACKAGES else None
        if target is not None and target != module:
            found.add((target, line))
    return found


EDGES = sorted(
    (module, target, line) for module in MODULES for target, line in project_imports(module)
)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The components of more than one module (Tarjan's algorithm, without recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(sorted(graph[root])))]
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while not component or component[-1] != node:
                    component.append(stack.pop())
                    on_stack.discard(component[-1])
                if len(component) > 1:
                    cycles.append(sorted(component))
    return sorted(cycles)


def test_every_module_has_a_layer():
    unplaced = []
    for module in MODULES:
        try:
            layer_of(module)
        except ValueError:
            unplaced.append(module)
    assert unplaced == []


def test_no_import_points_to_a_higher_layer():
    upward = {
        f"{module} -> {target}": f"{MODULES[module].relative_to(ROOT)}:{line}"
        for module, target, line in EDGES
        if layer_of(target) > layer_of(module)
    }
    assert {edge: where for edge, where in upward.items() if edge not in KNOWN_UPWARD} == {}
    assert KNOWN_UPWARD - set(upward) == set(), "fixed: remove these from KNOWN_UPWARD"


def test_no_import_cycles():
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for module, target, _ in EDGES:
        graph[module].add(target)
    assert strongly_connected(graph) == sorted(KNOWN_CYCLES)


@pytest.mark.parametrize(
    ("module", "layer"),
    [
        ("taglens.params.features", "params"),
        ("taglens.serving.web.app", "serving"),
        ("taglens.model.predictor", "model"),
        ("taglens.serving.web.__main__", "entry"),
        ("flows.predict", "flows"),
    ],
)
def test_a_module_takes_the_layer_of_its_longest_prefix(module, layer):
    assert LAYERS[layer_of(module)][0] == layer


def test_lazy_type_checking_and_relative_imports_are_all_read():
    # given a module whose imports hide in a function, under TYPE_CHECKING and behind dots
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from taglens.params import Params\n"
        "def load():\n"
        "    import taglens.errors\n"
        "    from ..model import predictor\n"
    )
    # when its imports are read as those of taglens.serving.model_ref
    found = sorted(imports_in(source, "taglens.serving.model_ref", is_package=False))
    # then every one is there, the relative one made absolute
    assert found == [
        ("taglens.errors", 5),
        ("taglens.model.predictor", 6),
        ("taglens.params.Params", 3),
        ("typing.TYPE_CHECKING", 1),
    ]


def test_a_cycle_is_found_and_a_chain_is_not():
    cycle = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(cycle) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": set()}) == []
