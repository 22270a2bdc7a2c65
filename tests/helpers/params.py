"""The tiny test params: tests/fixtures/params-overrides.yaml merged onto the real params.yaml.

The overrides hold only what tests change (image sizes, epochs, ...), so a key added to
params.yaml reaches the tests with its shipped value, and an override naming a key params.yaml
lacks fails at once instead of testing a setting that no longer exists.
"""

from __future__ import annotations

import atexit
import copy
import functools
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from taglens.params import Params, parse_params
from tests.helpers.paths import FIXTURES, ROOT

OVERRIDES = FIXTURES / "params-overrides.yaml"


class UnknownOverride(KeyError):
    """An override names a key the params file does not have."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any], where: str = "") -> dict:
    """`base` with `overrides` laid over it: nested mappings merge, any other value replaces.

    Raises:
        UnknownOverride: naming the first dotted key of `overrides` that `base` lacks.
    """
    merged = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        dotted = f"{where}{key}"
        if key not in merged:
            raise UnknownOverride(f"{dotted} is overridden but params.yaml has no such key")
        if isinstance(value, Mapping) and isinstance(merged[key], Mapping):
            merged[key] = merge(merged[key], value, f"{dotted}.")
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def nest(dotted: Mapping[str, Any]) -> dict:
    """`{"train.epochs": 3}` as `{"train": {"epochs": 3}}`, to merge like the overrides file."""
    nested: dict = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def tiny_params_raw(
    changes: Mapping[str, Any] | None = None,
    *,
    base: Path = ROOT / "params.yaml",
    overrides: Path = OVERRIDES,
) -> dict:
    """The merged mapping, with dotted `changes` (each must exist) applied last."""
    raw = yaml.safe_load(base.read_text(encoding="utf-8"))
    merged = merge(raw, yaml.safe_load(overrides.read_text(encoding="utf-8")) or {})
    return merge(merged, nest(changes or {}))


def write_tiny_params(dest: Path, changes: Mapping[str, Any] | None = None) -> Path:
    """Write the tiny params (with dotted `changes`) to the file `dest`; return `dest`."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(tiny_params_raw(changes), sort_keys=False)
    dest.write_text(text, encoding="utf-8")
    return dest


@functools.cache
def tiny_params_path() -> Path:
    """The tiny params as a file, written once per test process to a directory removed at exit.

    For tests that need a path but no directory of their own: module constants, servers and
    other subprocesses started with `--params`.
    """
    folder = Path(tempfile.mkdtemp(prefix="taglens-tiny-params-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return write_tiny_params(folder / "params.yaml")


def tiny_params(changes: Mapping[str, Any] | None = None) -> Params:
    """The tiny params, validated (with dotted `changes`, each of which must exist)."""
    return parse_params(tiny_params_raw(changes))
