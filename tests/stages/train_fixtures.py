"""Small on-disk inputs for the train and evaluate stages, in exactly the pipeline's formats."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from taglens.data.images import image_dataset
from taglens.data.posts import Post, write_posts
from taglens.features.backbones import weights_identity
from taglens.features.store import write_features
from taglens.features.views import IMAGE, build_views_model
from taglens.params import Params

CLASSES = ("animals", "food", "sports")
EXTRA_TAGS = {"animals": ("dog", "cute"), "food": ("pizza", "yum"), "sports": ("run", "gym")}
SPLIT_SHARES = (0.6, 0.2, 0.2)


def small_params(params: Params, classes: Sequence[str] = CLASSES, **train) -> Params:
    """`params` restricted to a few classes, with train keys overridden."""
    base = params.base.model_copy(update={"classes": tuple(classes)})
    return params.model_copy(update={"base": base, "train": params.train.model_copy(update=train)})


def _image(label_index: int, number: int, size: int) -> bytes:
    rng = np.random.default_rng(1000 * label_index + number)
    pixels = rng.integers(0, 60, (size, size, 3)).astype("uint8")
    pixels[..., label_index % 3] += 150  # each class dominated by one colour channel
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _split_of(position: int, count: int) -> str:
    train_end = round(SPLIT_SHARES[0] * count)
    val_end = train_end + round(SPLIT_SHARES[1] * count)
    return "train" if position < train_end else "val" if position < val_end else "test"


def write_inputs(
    root: Path,
    params: Params,
    per_class: int = 10,
    sources: dict[str, list[Path]] | None = None,
    captions: dict[Path, str] | None = None,
) -> dict[str, Path]:
    """Write data/raw (images + posts.jsonl), data/features and data/clean/manifest.csv.

    Args:
        root: the directory that gets `data/`.
        params: decides classes, backbone, image size and seed.
        per_class: synthetic images per class (ignored for classes given in `sources`).
        sources: optional real image files per class, copied in place of synthetic ones.
        captions: optional caption per source file (its hashtags replace the made-up ones).
    """
    raw, features, clean = root / "data/raw", root / "data/features", root / "data/clean"
    (raw / "images").mkdir(parents=True)
    posts, rows = [], []
    for c, label in enumerate(params.base.classes):
        files = (sources or {}).get(label)
        blobs = (
            [f.read_bytes() for f in files]
            if files
            else [_image(c, n, 48) for n in range(per_class)]
        )
        for n, data in enumerate(blobs):
            sha = hashlib.sha256(data).hexdigest()
            (raw / "images" / f"{sha}.jpg").write_bytes(data)
            tags = (label, *EXTRA_TAGS.get(label, ("photo",)))
            caption = " ".join(f"#{t}" for t in tags)
            if captions is not None and files:
                caption, tags = captions[files[n]], ()
            posts.append(
                Post(
                    id=f"{label}-{n}",
                    label=label,
                    image=f"images/{sha}.jpg",
                    sha256=sha,
                    width=48,
                    height=48,
                    hashtags=tags,
                    caption=caption,
                    likes=10 + n,
                    source="demo",
                )
            )
            rows.append(
                {
                    "id": f"{label}-{n}",
                    "sha256": sha,
                    "image": f"images/{sha}.jpg",
                    "label": label,
                    "split": _split_of(n, len(blobs)),
                    "distance": 1.0,
                }
            )
    write_posts(raw / "posts.jsonl", posts)
    outputs = (IMAGE, *params.featurize.views)
    model = build_views_model(params.model, params.base.seed, outputs)
    dataset = image_dataset([raw / p.image for p in posts], params.model.image_size, 64)
    views = model.predict(dataset, verbose=0)
    vectors = views.pop(IMAGE)
    meta = {
        "backbone": params.model.backbone,
        "image_size": params.model.image_size,
        "weights_identity": weights_identity(params.model, params.base.seed),
        "dim": int(vectors.shape[1]),
        "count": len(posts),
    }
    write_features(features, [p.sha256 for p in posts], vectors.astype("float32"), meta, views)
    clean.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(clean / "manifest.csv", index=False)
    return {
        "raw": raw,
        "features": features,
        "clean": clean,
        "out": root / "models",
        "reports": root / "reports",
    }


def run_train(params: Params, paths: dict[str, Path], **kwargs) -> dict:
    """The train stage's run() on `write_inputs` paths; returns train.json's contents."""
    from stages import train

    return train.run(
        params.base,
        params.model,
        params.train,
        params.hashtags,
        params.ingest,
        raw=paths["raw"],
        features=paths["features"],
        clean=paths["clean"],
        out=paths["out"],
        reports=paths["reports"],
        engine=params.featurize.engine,
        int8=params.featurize.int8,
        max_upload_mb=params.serve.max_upload_mb,
        **kwargs,
    ).summary


def run_evaluate(params: Params, paths: dict[str, Path]) -> dict:
    """The evaluate stage's run() on the model `run_train` wrote; returns metrics.json."""
    from stages import evaluate

    return evaluate.run(
        params.base,
        params.evaluate,
        params.hashtags,
        raw=paths["raw"],
        clean=paths["clean"],
        models=paths["out"],
        out=paths["reports"],
    ).scores
