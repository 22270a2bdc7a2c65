"""A tiny but real models/ directory (Keras model + model_info.json + hashtags.json) for tests."""

from __future__ import annotations

import json
from pathlib import Path

from taglens.data.posts import Post
from taglens.params import Params

IMAGE_SIZE = 32


def tiny_posts(classes: list[str]) -> list[Post]:
    """Three captioned posts per class: the class tag, a class-specific tag and a generic one."""
    posts = []
    for c, name in enumerate(classes):
        for i in range(3):
            n = c * 3 + i
            caption = f"#{name} #{name}_life #photooftheday" + (" #shared" if i == 0 else "")
            posts.append(
                Post(
                    id=f"p{n}",
                    label=name,
                    image=f"images/{n:064x}.jpg",
                    sha256=f"{n:064x}",
                    width=32,
                    height=32,
                    caption=caption,
                    likes=10 * (i + 1),
                    source="test",
                )
            )
    return posts


def build_tiny_models(dest: Path, params: Params, seed: int = 0) -> Path:
    """Write a random 32 px conv net (preprocessing inside), model_info.json and hashtags.json."""
    import keras

    from taglens.features.backbones import preprocess_layer
    from taglens.model.hashtags import fit_hashtag_stats

    classes = list(params.base.classes)
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="image")
    x = preprocess_layer("tf", name="preprocess")(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(classes), activation="softmax")(x)
    dest.mkdir(parents=True, exist_ok=True)
    keras.Model(inputs, outputs).save(dest / "model.keras")
    info = {
        "classes": classes,
        "image_size": IMAGE_SIZE,
        "backbone": "tiny",
        "run_id": None,
        "weights_identity": f"random-seed{seed}",
        "experiment": params.base.experiment,
        "params": {},
    }
    (dest / "model_info.json").write_text(json.dumps(info))
    stats = fit_hashtag_stats(tiny_posts(classes), classes, params.hashtags)
    stats.save(dest / "hashtags.json")
    return dest
