"""Content hashes DVC recorded in dvc.lock: how runs and model versions name their data version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def _stages(lock: Path) -> dict[str, Any]:
    if not lock.is_file():
        return {}
    return (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages") or {}


def _digest(entry: dict[str, Any]) -> str | None:
    # DVC 3 writes `hash: md5` beside the `md5:` value; older locks have only `md5:`.
    digest = entry.get("md5") or entry.get(entry.get("hash", "md5"))
    return str(digest) if digest else None


def out_hashes(lock: Path) -> dict[str, str]:
    """Map every stage output path in `lock` to its hash (`.dir` suffix for directories).

    An absent lock file (nothing reproduced yet) gives an empty mapping.
    """
    hashes: dict[str, str] = {}
    for stage in _stages(lock).values():
        for out in stage.get("outs") or []:
            digest = _digest(out)
            if out.get("path") and digest:
                hashes[str(out["path"]).rstrip("/")] = digest
    return hashes


def dep_hashes(lock: Path, stage: str) -> dict[str, str]:
    """Map each dependency path of one stage to the hash it had when that stage last ran."""
    hashes: dict[str, str] = {}
    for dep in (_stages(lock).get(stage) or {}).get("deps") or []:
        digest = _digest(dep)
        if dep.get("path") and digest:
            hashes[str(dep["path"]).rstrip("/")] = digest
    return hashes
