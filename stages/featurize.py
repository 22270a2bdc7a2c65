"""featurize: every accepted image through the backbone once, cached by content in the store."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import numpy as np

from taglens.cli import add_stage_inputs, run_main, setup_logging
from taglens.data.posts import POSTS_FILE, read_posts
from taglens.errors import TaglensError
from taglens.features import store as features
from taglens.features.backbones import BACKBONES, build_feature_extractor, weights_identity
from taglens.features.views import build_view_extractor
from taglens.params import FeaturizeParams, ModelParams, load_params

logger = logging.getLogger(__name__)


def run(
    model: ModelParams,
    params: FeaturizeParams,
    *,
    seed: int,
    raw: Path,
    out: Path,
    progress: bool = True,
) -> dict:
    """Fill the store with the vectors it lacks, then write features.npz and meta.json.

    Returns:
        meta.json's contents plus `computed` / `cached` counts of this run.

    Raises:
        FileNotFoundError: posts.jsonl or an image is missing.
        ValueError: posts.jsonl is empty or invalid, or an image cannot be decoded.
        BackboneWeightsError: the backbone's weights cannot be loaded.
        EngineError: featurize.engine is not installed or cannot convert the backbone.
    """
    raw, out = Path(raw), Path(out)
    posts_path = raw / POSTS_FILE
    if not posts_path.is_file():
        raise FileNotFoundError(f"no {posts_path}: run the scrape stage first")
    posts = read_posts(posts_path)
    if not posts:
        raise TaglensError(f"{posts_path} holds no posts: scrape accepted no images")
    if params.jit_compile and BACKBONES[model.backbone].xla_slow:
        logger.warning(
            "featurize.jit_compile is true, but XLA runs %s's depthwise convolutions about 10x "
            "slower on CPU: set featurize.jit_compile: false for this backbone",
            model.backbone,
        )
    key = features.FeatureKey(model.backbone, model.image_size, weights_identity(model, seed))
    store = features.FeatureStore(out / features.STORE_DIR, key)
    vectors, update = features.fill_store(
        store,
        [(post.sha256, raw / post.image) for post in posts],
        lambda: build_feature_extractor(model, seed),
        batch_size=params.batch_size,
        shard_size=params.shard_size,
        jit_compile=params.jit_compile,
        progress=progress,
        engine=params.engine,
    )
    matrix = np.stack([vectors[post.sha256] for post in posts]).astype("float32")
    views = {}
    for view in params.views:  # each view in its own store: adding a view reuses the others
        view_store = features.FeatureStore(out / features.STORE_DIR,
                                           dataclasses.replace(key, view=view))  # fmt: skip
        by_sha, _ = features.fill_store(
            view_store, [(post.sha256, raw / post.image) for post in posts],
            lambda view=view: build_view_extractor(model, seed, view), batch_size=params.batch_size,
            shard_size=params.shard_size, jit_compile=params.jit_compile, progress=progress,
        )  # fmt: skip
        views[view] = np.stack([by_sha[post.sha256] for post in posts]).astype("float32")
    meta = {
        "backbone": model.backbone,
        "image_size": model.image_size,
        "weights_identity": key.weights_identity,
        "dim": int(matrix.shape[1]),
        "count": len(posts),
        "store": key.dirname,
        "views": list(views),
    }
    features.write_features(out, [post.sha256 for post in posts], matrix, meta, views)
    logger.info(
        "featurize: %d posts, %d unique images (%d cached, %d computed), dim %d",
        len(posts), update.requested, update.cached, update.computed, meta["dim"],
    )  # fmt: skip
    return {**meta, "computed": update.computed, "cached": update.cached}


def main(argv: list[str] | None = None) -> int:
    """Command line: `python -m stages.featurize --params params.yaml --raw data/raw --out ...`."""
    parser = argparse.ArgumentParser(description=__doc__)
    add_stage_inputs(parser, "params", "raw")
    parser.add_argument("--out", type=Path, default=Path("data/features"),
                        help="the feature store folder (default %(default)s)")
    args = parser.parse_args(argv)
    setup_logging()

    def body() -> int:
        params = load_params(args.params)
        run(params.model, params.featurize, seed=params.base.seed, raw=args.raw, out=args.out)
        return 0

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
