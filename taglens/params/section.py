"""The base of every params section, and the error a bad params file raises."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from taglens.errors import TaglensError

Probability = Annotated[float, Field(gt=0, lt=1)]


class ParamsError(TaglensError):
    """A params file that cannot be used; the message names the offending key."""


class Section(BaseModel):
    """A params.yaml section: frozen, and a key it does not know is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")
