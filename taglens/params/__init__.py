"""Typed, frozen parameter models for params.yaml: a typo or an out-of-range value fails at once.

One module per group of sections, in pipeline order: `data` (base, scrape, ingest), `features`
(model, featurize, clean), `training` (train, evaluate, hashtags), `serving` (register,
predict, serve) and `team` (the shared services); `loader` holds the whole-file model and reads
it. Every default lives in params.yaml only: the models hold bounds, never values. Import from
`taglens.params`.
"""

from taglens.params.data import (
    PAPER_CLASSES,
    BaseParams,
    DemoSourceParams,
    IngestParams,
    InstagramSourceParams,
    ScrapeParams,
)
from taglens.params.features import (
    BACKBONES,
    ENGINES,
    BackboneSpec,
    CleanParams,
    EngineSpec,
    FeaturizeParams,
    Int8Params,
    ModelParams,
    View,
)
from taglens.params.loader import Params, flatten, load_params, parse_params
from taglens.params.section import ParamsError, Probability, Section
from taglens.params.serving import DriftParams, PredictParams, RegisterParams, ServeParams
from taglens.params.team import TeamParams
from taglens.params.training import (
    EvaluateParams,
    FineTuneParams,
    HashtagParams,
    Normalise,
    RankingSearchParams,
    SearchParams,
    SweepParams,
    TrainParams,
)

__all__ = [
    "BACKBONES",
    "ENGINES",
    "BackboneSpec",
    "EngineSpec",
    "View",
    "PAPER_CLASSES",
    "BaseParams",
    "CleanParams",
    "DemoSourceParams",
    "DriftParams",
    "EvaluateParams",
    "FeaturizeParams",
    "Int8Params",
    "FineTuneParams",
    "HashtagParams",
    "IngestParams",
    "InstagramSourceParams",
    "ModelParams",
    "Normalise",
    "Params",
    "ParamsError",
    "PredictParams",
    "Probability",
    "RegisterParams",
    "ScrapeParams",
    "RankingSearchParams",
    "SearchParams",
    "Section",
    "ServeParams",
    "SweepParams",
    "TeamParams",
    "TrainParams",
    "flatten",
    "load_params",
    "parse_params",
]
