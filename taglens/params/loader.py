"""The whole params.yaml: read, validate, override dotted keys, flatten for MLflow."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from taglens.params.data import BaseParams, IngestParams, ScrapeParams
from taglens.params.features import CleanParams, FeaturizeParams, ModelParams
from taglens.params.section import ParamsError, Section
from taglens.params.serving import PredictParams, RegisterParams, ServeParams
from taglens.params.team import TeamParams
from taglens.params.training import EvaluateParams, HashtagParams, TrainParams

with warnings.catch_warnings():
    # `register` shadows ABCMeta.register on the class only; instances read the field as usual.
    warnings.filterwarnings("ignore", message='Field name "register"')

    class Params(Section):
        """The whole params.yaml."""

        base: BaseParams
        scrape: ScrapeParams
        ingest: IngestParams
        model: ModelParams
        featurize: FeaturizeParams
        clean: CleanParams
        train: TrainParams
        evaluate: EvaluateParams
        hashtags: HashtagParams
        register: RegisterParams
        predict: PredictParams
        serve: ServeParams
        team: TeamParams


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "params"
    ctx = error.get("ctx") or {}
    got = error.get("input")
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{key} is not a known key (check its spelling)"
    if kind == "missing":
        return f"{key} is missing"
    bounds = {
        "greater_than": ">",
        "greater_than_equal": ">=",
        "less_than": "<",
        "less_than_equal": "<=",
    }
    if kind in bounds:
        limit = next(iter(ctx.values()))
        return f"{key} must be {bounds[kind]} {limit}, got {got!r}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return f"{key}: {error['msg']}, got {got!r}"


def parse_params(raw: Any) -> Params:
    """Validate a parsed params mapping.

    Raises:
        ParamsError: naming every offending key.

    """
    if not isinstance(raw, dict):
        raise ParamsError(f"params must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(error) for error in exc.errors()]
        raise ParamsError("invalid params: " + "; ".join(lines)) from None


def load_params(
    path: Path | str = "params.yaml", overrides: dict[str, Any] | None = None
) -> Params:
    """Read and validate a params file, optionally overriding dotted keys (`train.epochs`).

    Raises:
        ParamsError: the file is missing, is not YAML, or holds a bad value.

    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"params file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{path} is not UTF-8 (byte {exc.start}): save it as UTF-8") from None
    except RecursionError:
        raise ParamsError(f"{path} nests too deeply to be a params file") from None
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    return parse_params(raw)


def _set_dotted(raw: Any, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for part in parents:
        if not isinstance(node, dict) or part not in node:
            raise ParamsError(f"cannot override {dotted}: {part} is not a section")
        node = node[part]
    node[leaf] = value


def flatten(params: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Flatten a params model to `section.key` pairs, as MLflow's compare view lines them up."""
    flat: dict[str, Any] = {}
    for name, value in params:
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            flat.update(flatten(value, prefix=f"{key}."))
        elif isinstance(value, tuple):
            flat[key] = ",".join(str(item) for item in value)
        else:
            flat[key] = value
    return flat
