"""The JSON shapes of the web API, as pydantic models (they are also the OpenAPI schema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ModelInfo(BaseModel):
    """Which registered model answered."""

    name: str = Field(description="registered model name")
    version: str = Field(description="registered model version")


class Hashtag(BaseModel):
    """One suggested hashtag (without the leading '#')."""

    model_config = ConfigDict(extra="allow")

    tag: str
    score: float = Field(
        description="the score of the blend that placed the tag (head or tail of the list)"
    )
    posts: int | None = Field(default=None, description="training posts that carried the tag")
    engagement: float | None = Field(default=None, description="mean engagement of those posts")
    why: Literal["class", "image"] | None = Field(
        default=None,
        description="class: suggested mostly for the predicted class; image: for "
        "what this photo shows (its neighbours, colours or features)",
    )

    @field_validator("score", "engagement", mode="before")
    @classmethod
    def _plain_float(cls, value: Any) -> float | None:
        return None if value is None else float(value)

    @field_validator("posts", mode="before")
    @classmethod
    def _plain_int(cls, value: Any) -> int | None:
        return None if value is None else int(value)


class Prediction(BaseModel):
    """The answer of `POST /predict`."""

    model: ModelInfo
    top_class: str
    top_probability: float = Field(ge=0, le=1)
    probabilities: dict[str, float] = Field(description="class -> probability; they sum to 1")
    hashtags: list[Hashtag] = Field(description="best first")

    @field_validator("top_probability", mode="before")
    @classmethod
    def _plain_float(cls, value: Any) -> float:
        return float(value)

    @field_validator("probabilities", mode="before")
    @classmethod
    def _plain_floats(cls, value: Any) -> dict[str, float]:
        # numpy scalars (float32) are not floats to pydantic; the model hands those back.
        return {str(key): float(prob) for key, prob in dict(value).items()}


class Health(BaseModel):
    """The answer of `GET /health`."""

    status: str = Field(description="'ok' while the server can predict")
    model: ModelInfo
    max_upload_bytes: int = Field(description="the largest photo accepted, in bytes")


class ErrorDetail(BaseModel):
    """Every refusal: a message that says what to do."""

    detail: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorDetail, "description": "the file is empty"},
    413: {"model": ErrorDetail, "description": "the file is over serve.max_upload_mb"},
    415: {"model": ErrorDetail, "description": "the file is not an image of a supported format"},
    422: {
        "model": ErrorDetail,
        "description": "no 'file' field, too many pixels (ingest.max_pixels), or a damaged image",
    },
}
