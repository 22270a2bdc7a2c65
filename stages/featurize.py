"""featurize: every accepted image through the backbone once, cached by content in the store."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from taglens import artifacts
from taglens.cli import add_stage_inputs, run_stage
from taglens.data.posts import read_raw_posts
from taglens.features import int8_backbone
from taglens.features import store as features
from taglens.features.backbones import BACKBONES, weights_identity
from taglens.features.engines import INT8_ENGINE, precision_of
from taglens.features.store import FeaturizeResult, feature_meta
from taglens.features.views import IMAGE, build_views_model
from taglens.params import CleanParams, FeaturizeParams, ModelParams

logger = logging.getLogger(__name__)


def run(
    model: ModelParams,
    params: FeaturizeParams,
    clean: CleanParams,
    *,
    seed: int,
    raw: Path,
    out: Path,
    progress: bool = True,
) -> FeaturizeResult:
    """Fill the stores with the vectors they lack, then write features.npz and meta.json.

    The image and every `featurize.views` entry are computed together, in one forward call per
    batch on `featurize.engine`. With openvino-int8 the views model is first quantized (or its
    cached decision read), calibrated and checked on the photos clean's split will call training
    and validation photos (`clean` gives its fractions); the vectors go to the stores of the
    precision kept (INT8, or FP32 when INT8 lost too much accuracy).

    Raises:
        MissingArtifactError: posts.jsonl is missing.
        FileNotFoundError: an image is missing.
        TaglensError: posts.jsonl is empty or invalid, or an image cannot be decoded.
        BackboneWeightsError: the backbone's weights cannot be loaded.
        EngineError: featurize.engine is not installed or cannot convert the backbone.
        QuantizeError: openvino-int8 has too few labelled photos to calibrate and check on.
    """
    raw = Path(raw)
    out = Path(out)
    posts = read_raw_posts(raw)
    if params.jit_compile and BACKBONES[model.backbone].xla_slow:
        logger.warning(
            "featurize.jit_compile is true, but XLA runs %s's depthwise convolutions about 10x "
            "slower on CPU: set featurize.jit_compile: false for this backbone",
            model.backbone,
        )
    identity = weights_identity(model, seed)
    engine = params.engine
    int8 = None

    def build(outputs: tuple[str, ...]):
        return build_views_model(model, seed, outputs)

    if engine == INT8_ENGINE:
        int8 = int8_backbone.prepare(
            model, params, clean, seed=seed, weights_identity=identity, posts=posts, raw=raw
        )
        engine = int8.engine
        build = int8.model_factory(model, seed)
    key = features.FeatureKey(model.backbone, model.image_size, identity, precision_of(engine))
    items = [(post.sha256, raw / post.image) for post in posts]
    vectors, updates = features.fill_stores(
        features.feature_stores(out / features.STORE_DIR, key, params.views),
        items,
        build,
        batch_size=params.batch_size,
        shard_size=params.shard_size,
        jit_compile=params.jit_compile,
        engine=engine,
        progress=progress,
    )
    rows = {name: np.stack([by_sha[sha] for sha, _ in items]) for name, by_sha in vectors.items()}
    matrix = rows.pop(IMAGE).astype("float32")
    views = {view: rows[view].astype("float32") for view in params.views}
    update = updates[IMAGE]
    meta = feature_meta(key, matrix, views, engine, int8.decision if int8 else None)
    features.write_features(out, [post.sha256 for post in posts], matrix, meta, views)
    logger.info(
        "featurize: %d posts, %d unique images (%d cached, %d computed), dim %d",
        len(posts),
        update.requested,
        update.cached,
        update.computed,
        meta["dim"],
    )
    return FeaturizeResult(meta, update.computed, update.cached)


def main(argv: list[str] | None = None) -> int:
    """Command line: `python -m stages.featurize --params params.yaml --raw data/raw --out ...`."""
    parser = argparse.ArgumentParser(description=__doc__)
    add_stage_inputs(parser, "params", "raw")
    parser.add_argument(
        "--out",
        type=Path,
        default=artifacts.FEATURES_DIR,
        help="the feature store folder (default %(default)s)",
    )
    args = parser.parse_args(argv)
    return run_stage(
        args,
        lambda params: run(
            params.model,
            params.featurize,
            params.clean,
            seed=params.base.seed,
            raw=args.raw,
            out=args.out,
        ),
        tracked=False,
    )


if __name__ == "__main__":
    raise SystemExit(main())
