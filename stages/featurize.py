"""featurize: every accepted image through the backbone once, cached by content in the store."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from taglens import artifacts
from taglens.cli import add_stage_inputs, run_stage
from taglens.features import store as features
from taglens.features.backbones import BACKBONES, weights_identity
from taglens.features.featurize_outputs import FeaturizeResult, feature_meta
from taglens.features.views import IMAGE, build_views_model
from taglens.params import FeaturizeParams, ModelParams

logger = logging.getLogger(__name__)


def run(
    model: ModelParams,
    params: FeaturizeParams,
    *,
    seed: int,
    raw: Path,
    out: Path,
    progress: bool = True,
) -> FeaturizeResult:
    """Fill the stores with the vectors they lack, then write features.npz and meta.json.

    The image and every `featurize.views` entry are computed together, in one forward call per
    batch on `featurize.engine`.

    Raises:
        MissingArtifactError: posts.jsonl is missing.
        FileNotFoundError: an image is missing.
        TaglensError: posts.jsonl is empty or invalid, or an image cannot be decoded.
        BackboneWeightsError: the backbone's weights cannot be loaded.
        EngineError: featurize.engine is not installed or cannot convert the backbone.
    """
    raw, out = Path(raw), Path(out)
    posts = artifacts.read_posts(raw)
    if params.jit_compile and BACKBONES[model.backbone].xla_slow:
        logger.warning(
            "featurize.jit_compile is true, but XLA runs %s's depthwise convolutions about 10x "
            "slower on CPU: set featurize.jit_compile: false for this backbone",
            model.backbone,
        )
    key = features.FeatureKey(model.backbone, model.image_size, weights_identity(model, seed))
    items = [(post.sha256, raw / post.image) for post in posts]
    vectors, updates = features.fill_stores(
        features.feature_stores(out / features.STORE_DIR, key, params.views), items,
        lambda outputs: build_views_model(model, seed, outputs), batch_size=params.batch_size,
        shard_size=params.shard_size, jit_compile=params.jit_compile, engine=params.engine,
        progress=progress,
    )  # fmt: skip
    rows = {name: np.stack([by_sha[sha] for sha, _ in items]) for name, by_sha in vectors.items()}
    matrix = rows.pop(IMAGE).astype("float32")
    views = {view: rows[view].astype("float32") for view in params.views}
    update = updates[IMAGE]
    meta = feature_meta(key, matrix, views)
    features.write_features(out, [post.sha256 for post in posts], matrix, meta, views)
    logger.info(
        "featurize: %d posts, %d unique images (%d cached, %d computed), dim %d",
        len(posts), update.requested, update.cached, update.computed, meta["dim"],
    )  # fmt: skip
    return FeaturizeResult(meta, update.computed, update.cached)


def main(argv: list[str] | None = None) -> int:
    """Command line: `python -m stages.featurize --params params.yaml --raw data/raw --out ...`."""
    parser = argparse.ArgumentParser(description=__doc__)
    add_stage_inputs(parser, "params", "raw")
    parser.add_argument("--out", type=Path, default=artifacts.FEATURES_DIR,
                        help="the feature store folder (default %(default)s)")
    args = parser.parse_args(argv)
    return run_stage(args, lambda params: run(
        params.model, params.featurize, seed=params.base.seed, raw=args.raw, out=args.out,
    ), tracked=False)  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
