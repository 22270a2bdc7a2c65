"""Where a model came from, recorded once: the same `lineage.*` tags on its run and its version.

The record holds the content hashes of the data it was trained on (DVC's own hash from dvc.lock
when DVC tracks the folder, so the tag names a version `dvc checkout` restores; otherwise an md5
over the files' bytes), one short data version over them, and the backbone and weights. The git
commit is MLflow's own run tag (mlflow.source.git.commit), not repeated here. The train stage
tags its MLflow run with the record; register copies the run's record onto the model version it
creates. The splits themselves are logged as MLflow dataset inputs (tracking.log_split_datasets),
under the clean data's hash.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import yaml

from taglens.artifacts import CLEAN_DIR, FEATURES_DIR, RAW_DIR

logger = logging.getLogger(__name__)

TAG_PREFIX = "lineage."
# The data a model is trained on, by the name its tag carries: lineage.data.raw, ...
TRAINING_DATA = {"raw": RAW_DIR, "features": FEATURES_DIR, "clean": CLEAN_DIR}
DATA_VERSION = "data_version"


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


def data_record(root: Path, paths: dict[str, Path]) -> dict[str, str]:
    """`data.NAME` -> the hash of each folder, plus `data_version`: one short id over them all.

    Args:
        root: the repository whose dvc.lock may record the folders.
        paths: the data by name (`raw`, `features`, `clean`) -> its folder.
    """
    locked = out_hashes(root / "dvc.lock")
    hashes = {}
    for name, path in paths.items():
        key = _relative(path, root)
        if key in locked:
            hashes[name] = locked[key]
        elif path.exists():
            hashes[name] = _md5_tree(path)
    if not hashes:
        return {}
    joined = "\n".join(f"{name}:{digest}" for name, digest in sorted(hashes.items()))
    record = {f"data.{name}": digest for name, digest in hashes.items()}
    record[DATA_VERSION] = hashlib.sha256(joined.encode()).hexdigest()[:12]
    return record


def repo_data_tags(repo: Path) -> dict[str, str]:
    """The `lineage.data.*` tags of the training data in a checkout (its dvc.lock's hashes)."""
    return as_tags(data_record(repo, {name: repo / path for name, path in TRAINING_DATA.items()}))


def record(root: Path, data: dict[str, Path], model: dict[str, Any]) -> dict[str, str]:
    """The whole lineage record of a training run: data hashes and model identity.

    Args:
        root: the repository whose dvc.lock may record the data.
        data: the training data by name -> folder (see TRAINING_DATA).
        model: backbone, image_size, weights_identity, experiment (None values are left out).
    """
    entries = {key: str(value) for key, value in model.items() if value is not None}
    return {**entries, **data_record(root, data)}


def as_tags(lineage: dict[str, Any]) -> dict[str, str]:
    """The record as MLflow tags: each key under `lineage.`."""
    return {TAG_PREFIX + key: str(value) for key, value in lineage.items()}


def from_tags(tags: dict[str, str]) -> dict[str, str]:
    """The record back from a run's or a version's tags."""
    return {
        key[len(TAG_PREFIX) :]: value for key, value in tags.items() if key.startswith(TAG_PREFIX)
    }


def run_record(run_id: str) -> dict[str, str]:
    """The lineage record the train run `run_id` was tagged with (empty if it has none)."""
    import mlflow

    record_ = from_tags(mlflow.MlflowClient().get_run(run_id).data.tags)
    if not record_:
        logger.warning("run %s carries no %s tags: its model version gets none", run_id, TAG_PREFIX)
    return record_


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return Path(path).as_posix()


def _md5_tree(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(file.relative_to(path.parent).as_posix().encode())
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
