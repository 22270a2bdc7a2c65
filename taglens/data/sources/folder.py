"""The `folder` source: DIR/<class>/<image files>, with optional per-image metadata.

Class = folder name. With `base.classes: null` every folder is a class; with a list, only folders
named in it are read and any other folder is reported and skipped, so a stray folder never adds
a class the model was not configured for. Every
non-hidden file in a class folder is a candidate (ingest refuses what is not an image, with a
reason). `DIR/posts.jsonl`, if present, gives per-image metadata: `image` (path relative to DIR;
an absolute path or one with `..` is an error), `sha256` (optional: the hash of the file's bytes;
a file that does not match it is rejected), `caption`, `hashtags`, `likes`, `comments`, `date`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from taglens.atomic import read_jsonl
from taglens.data.posts import SHA256_PATTERN, ImagePath, naive_utc
from taglens.data.sources.base import SourceItem
from taglens.errors import TaglensError

logger = logging.getLogger(__name__)

METADATA_FILE = "posts.jsonl"


class FolderPostMeta(BaseModel):
    """One line of DIR/posts.jsonl."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    image: ImagePath
    sha256: str | None = Field(default=None, pattern=SHA256_PATTERN)
    caption: str = ""
    hashtags: tuple[str, ...] = ()
    likes: int | None = Field(default=None, ge=0)
    comments: int | None = Field(default=None, ge=0)
    date: str | None = None

    @field_validator("date")
    @classmethod
    def _iso_utc(cls, value: str | None) -> str | None:
        parsed = naive_utc(value, f"not an ISO 8601 date: {value!r}")
        return None if parsed is None else parsed.isoformat()


def read_metadata(root: Path) -> dict[str, FolderPostMeta]:
    """Read DIR/posts.jsonl keyed by the image path relative to DIR (POSIX form).

    Raises:
        ValueError: a line is not JSON or does not match the schema (file, line and field named).
    """
    path = root / METADATA_FILE
    rows: dict[str, FolderPostMeta] = {}
    for number, row in enumerate(read_jsonl(path), start=1):
        try:
            meta = FolderPostMeta.model_validate(row)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "line"
            raise TaglensError(
                f"{path}:{number}: {where}: {first['msg']} (fix or remove that line)"
            ) from None
        rows[Path(meta.image).as_posix()] = meta
    return rows


class FolderSource:
    """Iterates DIR/<class>/<files> for the classes, in class order then file name.

    The classes are the configured ones (folders of other names are skipped with a note), or,
    when none are configured (`base.classes: null`), every folder, in name order.
    """

    def __init__(self, root: Path | str, classes: Sequence[str] | None):
        """Check the layout and load the metadata.

        Raises:
            FileNotFoundError: DIR does not exist.
            TaglensError: DIR has no folder named after a configured class (or, with no classes
                configured, fewer than two folders), or bad metadata.
        """
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"scrape.folder {self.root} is not a directory: point it at DIR/<class>/<images>"
            )
        folders = {p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")}
        if classes is None:
            if len(folders) < 2:
                raise TaglensError(
                    f"{self.root} has {len(folders)} class folder(s) "
                    f"({', '.join(sorted(folders))}); a classifier needs at least two: expected "
                    "DIR/<class>/<image files>"
                )
            classes = sorted(folders)
        self.classes = [name for name in classes if name in folders]
        self.skipped_folders = sorted(folders - set(classes))
        self.missing_classes = [name for name in classes if name not in folders]
        if not self.classes:
            raise TaglensError(
                f"{self.root} has no folder named after a class in base.classes "
                f"({', '.join(classes)}); expected DIR/<class>/<image files>, or set "
                "base.classes: null to use the folder names"
            )
        self.metadata = read_metadata(self.root)
        self.notes: list[str] = []
        if self.skipped_folders:
            self.notes.append(
                f"skipped folders not in base.classes: {', '.join(self.skipped_folders)} "
                "(base.classes: null uses every folder)"
            )
        if self.missing_classes:
            self.notes.append(f"classes with no folder: {', '.join(self.missing_classes)}")
        for note in self.notes:
            logger.warning("%s: %s", self.root, note)

    def files(self) -> list[Path]:
        """The candidate files, in the order they are yielded."""
        found = []
        for name in self.classes:
            children = sorted((self.root / name).iterdir(), key=lambda p: p.name)
            found += [p for p in children if p.is_file() and not p.name.startswith(".")]
        return found

    def __len__(self) -> int:
        return len(self.files())

    def __iter__(self) -> Iterator[SourceItem]:
        used: set[str] = set()
        for path in self.files():
            relative = path.relative_to(self.root).as_posix()
            try:
                data = path.read_bytes()
            except OSError as exc:
                note = f"cannot read {path}: {exc.strerror or exc}"
                logger.warning(note)
                self.notes.append(note)
                continue
            meta = self.metadata.get(relative)
            if meta is not None:
                used.add(relative)
            yield SourceItem(
                id=relative,
                label=path.parent.name,
                data=data,
                origin=str(path),
                caption=meta.caption if meta else "",
                hashtags=meta.hashtags if meta else (),
                likes=meta.likes if meta else None,
                comments=meta.comments if meta else None,
                date=meta.date if meta else None,
                sha256=meta.sha256 if meta else None,
            )
        unused = len(set(self.metadata) - used)
        if unused:
            note = f"{unused} lines of {METADATA_FILE} name no image in a class folder"
            logger.warning("%s: %s", self.root, note)
            self.notes.append(note)
