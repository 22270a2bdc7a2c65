"""The rows of a batch predict output: columns, formats, the resume key, and reading them back.

One row per input image: its path and sha256 (together the resume key), the ranked hashtags,
the top class, the model's registered name and version, and the error that kept it from being
scored (None when scored). `batch_outputs.OutputWriter` writes them as CSV, JSON lines or
Parquet; every reader here streams any of the three. A `.parquet` output is a folder with one
part per run (`batch_dataset`); an output written before that, one Parquet file, reads the same.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taglens.errors import TaglensError

if TYPE_CHECKING:
    from taglens.serving.model_ref import ModelRef

COLUMNS = (
    "path", "sha256", "hashtags", "top_class", "top_probability",
    "model_name", "model_version", "error",
)  # fmt: skip
FORMATS = (".csv", ".jsonl", ".parquet")
Key = tuple[str, str]  # (path, sha256)
KEY_COLUMNS = ("path", "sha256", "model_name", "model_version")
# The file's size and mtime when it was hashed: staged Parquet parts and the dataset's index
# carry them so that a later run recognises an unchanged file without reading it again.
STAT_COLUMNS = ("size", "mtime_ns")
RUN_GLOB = "run-*.parquet"  # the parts of a Parquet dataset output, one per run, in run order


def row_key(row: dict[str, Any]) -> Key:
    """The resume key of a row: the same file content at the same path."""
    return (str(row["path"]), str(row.get("sha256") or ""))


def check_format(path: Path) -> str:
    """The output's suffix, lower-cased, once it is known to be one of FORMATS."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise TaglensError(
            f"output {path} must end with one of {', '.join(FORMATS)} (the suffix picks the format)"
        )
    return suffix


def parquet_schema():
    """The Parquet schema of an output: COLUMNS with hashtags as a list of (tag, score)."""
    import pyarrow as pa

    tag = pa.struct([("tag", pa.string()), ("score", pa.float64())])
    return pa.schema(
        [
            ("path", pa.string()),
            ("sha256", pa.string()),
            ("hashtags", pa.list_(tag)),
            ("top_class", pa.string()),
            ("top_probability", pa.float64()),
            ("model_name", pa.string()),
            ("model_version", pa.string()),
            ("error", pa.string()),
        ]
    )


def staging_schema():
    """The schema of a staged Parquet part: the output's columns plus STAT_COLUMNS."""
    import pyarrow as pa

    schema = parquet_schema()
    for name in STAT_COLUMNS:
        schema = schema.append(pa.field(name, pa.int64()))
    return schema


def run_parts(dataset: Path) -> list[Path]:
    """The run parts of a Parquet dataset output, oldest first (empty if it is no folder)."""
    return sorted(dataset.glob(RUN_GLOB)) if dataset.is_dir() else []


def _from_csv(record: dict[str, str]) -> dict[str, Any]:
    row: dict[str, Any] = {key: (record.get(key) or None) for key in COLUMNS}
    row["hashtags"] = json.loads(record["hashtags"]) if record.get("hashtags") else []
    prob = record.get("top_probability")
    row["top_probability"] = float(prob) if prob else None
    return row


def csv_values(row: dict[str, Any]) -> list[str]:
    """A row as CSV cells in COLUMNS order (hashtags as compact JSON)."""
    values = []
    for key in COLUMNS:
        value = row.get(key)
        if key == "hashtags":
            value = json.dumps(value or [], separators=(",", ":"))
        values.append("" if value is None else str(value))
    return values


def read_rows(
    path: Path | str, chunk_rows: int = 4096, columns: list[str] | None = None
) -> Iterator[dict[str, Any]]:
    """Stream the rows of an output file (any format) as dicts with `hashtags` as a list.

    `columns` limits what Parquet reads (the other formats always give every column).

    Raises:
        ValueError: the suffix is not a known format.
    """
    path = Path(path)
    suffix = check_format(path)
    if not path.exists():
        return
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        for file in run_parts(path) if path.is_dir() else [path]:
            parquet = pq.ParquetFile(file)
            for batch in parquet.iter_batches(batch_size=chunk_rows, columns=columns):
                yield from batch.to_pylist()
        return
    with open(path, encoding="utf-8", newline="") as handle:
        if suffix == ".jsonl":
            for line in handle:
                if line.endswith("\n") and line.strip():
                    yield json.loads(line)
        else:
            yield from (_from_csv(record) for record in csv.DictReader(handle))


def sealed_parts(parts_dir: Path) -> list[Path]:
    """The sealed Parquet parts of an unfinished run, in the order they were written."""
    return sorted(parts_dir.glob("part-*.parquet")) if parts_dir.is_dir() else []


def existing_rows(path: Path | str, columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Rows of an output and, for Parquet, of the sealed parts of an unfinished run (read-only)."""
    path = Path(path)
    yield from read_rows(path, columns=columns)
    if path.suffix.lower() == ".parquet":
        for part in sealed_parts(path.with_name(path.name + ".parts")):
            yield from read_rows(part, columns=columns or list(COLUMNS))


def done_keys(path: Path | str, model_name: str, model_version: str) -> set[Key]:
    """Resume keys of the rows `model_name`/`model_version` has written to an output."""
    return {
        row_key(row)
        for row in existing_rows(path, columns=list(KEY_COLUMNS))
        if (row.get("model_name"), str(row.get("model_version"))) == (model_name, model_version)
    }


def scored_row(
    path: Path,
    sha: str,
    model: ModelRef,
    error: str | None = None,
    prediction: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The output row of one input: its prediction, or the error that kept it from one."""
    prediction = prediction or {}
    return {
        "path": str(path),
        "sha256": sha,
        "hashtags": [
            {"tag": h["tag"], "score": float(h["score"])} for h in prediction.get("hashtags", [])
        ],
        "top_class": prediction.get("top_class"),
        "top_probability": prediction.get("top_probability"),
        "model_name": model.name,
        "model_version": model.version,
        "error": error,
    }
