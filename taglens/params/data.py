"""Params of the data stages: the shared `base`, where images come from, and what is accepted."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from taglens.params.section import Section

PAPER_CLASSES = (
    "animals", "art", "fashion", "fitness", "flowers",
    "food", "instagood", "nature", "selfie", "sports",
)  # fmt: skip


class BaseParams(Section):
    """Settings shared by every stage."""

    seed: int = Field(ge=0, le=2**32 - 1)  # numpy and Keras accept 32-bit seeds
    # None: the classes the source finds (folder names, Instagram hashtags, the demo's ten).
    classes: Annotated[tuple[str, ...], Field(min_length=2)] | None
    experiment: str = Field(min_length=1)
    log_photos: bool  # contact sheets and misclassified-image grids go to MLflow only if true


class DemoSourceParams(Section):
    """The synthetic demo image set."""

    images_per_class: int = Field(ge=3, le=10_000)
    image_size: int = Field(ge=32, le=1024)


class InstagramSourceParams(Section):
    """Instagram collection through Instaloader (login comes from a session file, never here)."""

    hashtags: tuple[str, ...] = Field(min_length=1)
    posts_per_hashtag: int = Field(ge=1)  # per run: posts newer than the newest already held
    keep_days: Annotated[int, Field(ge=1)] | None  # rolling window; None keeps every post
    order: Literal["top", "recent"]
    skip_videos: bool
    since: str | None  # ISO date, inclusive
    until: str | None  # ISO date, exclusive
    max_wait_seconds: float = Field(ge=0)
    owner_salt_env: str = Field(min_length=1)


class ScrapeParams(Section):
    """Where raw images and captions come from."""

    source: Literal["demo", "folder", "instagram"]
    folder: str | None
    demo: DemoSourceParams
    instagram: InstagramSourceParams

    @model_validator(mode="after")
    def _folder_needs_path(self) -> ScrapeParams:
        if self.source == "folder" and not self.folder:
            raise ValueError("scrape.folder must name a directory when scrape.source is 'folder'")
        return self


class IngestParams(Section):
    """What an image must be to be accepted."""

    max_pixels: int = Field(ge=1024)
    min_side: int = Field(ge=1)
    max_side: int = Field(ge=32, le=65_500)
    animated: Literal["first_frame", "reject"]
    jpeg_quality: int = Field(ge=50, le=100)
