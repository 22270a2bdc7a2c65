"""Benchmark: re-training on cached features against fitting a frozen-backbone model on images.

Both fit the same head (same params, epochs, batch size, images) after a train-param change:
- cached: read features.npz (written once by a featurize pass, timed separately) and fit the head;
- naive: the usual Keras transfer-learning recipe, a frozen backbone + head fitted on images,
  which runs every image through the backbone again on every epoch.

    .venv/bin/python -m bench.train [--images 400] [--size 64] [--epochs 5] [--out FILE]

Uses ../shared/datasets/flowers when present, else synthetic images; random backbone weights
(the cost of a forward pass does not depend on the weights' values).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
FLOWERS = ROOT.parent / "shared" / "datasets" / "flowers"


def _images(count: int, workdir: Path) -> tuple[list[Path], np.ndarray]:
    """`count` image files and labels: flowers if available, else generated JPEGs."""
    if FLOWERS.is_dir():
        classes = sorted(p.name for p in FLOWERS.iterdir() if p.is_dir())
        per_class = -(-count // len(classes))
        files = [
            (f, c)
            for c, name in enumerate(classes)
            for f in sorted((FLOWERS / name).glob("*.jpg"))[:per_class]
        ]
        files = files[:count]
        return [f for f, _ in files], np.array([c for _, c in files])
    from PIL import Image

    rng = np.random.default_rng(0)
    paths, labels = [], []
    for i in range(count):
        label = i % 5
        pixels = rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG")
        path = workdir / f"{i}.jpg"
        path.write_bytes(buffer.getvalue())
        paths.append(path)
        labels.append(label)
    return paths, np.array(labels)


class _Clock:
    """Wall time and this process's CPU time (all threads).

    The machine is shared, so CPU seconds are the steadier measure of the work done.
    """

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> dict[str, float]:
        return {
            "wall_s": round(time.perf_counter() - self.wall, 2),
            "cpu_s": round(time.process_time() - self.cpu, 2),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--backbone", default="vgg19")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench" / "results" / "train.json",
        help="where to write the results as JSON",
    )
    args = parser.parse_args(argv)

    from taglens.features.backbones import build_feature_extractor
    from taglens.features.featurize import featurize_paths
    from taglens.features.store import write_features
    from taglens.model.full_model import assemble, image_label_dataset
    from taglens.params import ModelParams, load_params
    from taglens.training.head import build_head, class_weights, compile_for_training, fit_head

    params = load_params(ROOT / "params.yaml")
    model = ModelParams(backbone=args.backbone, image_size=args.size, weights=None)
    train = params.train.model_copy(
        update={"epochs": args.epochs, "early_stopping_patience": 0, "learning_rate": 0.0005}
    )
    with tempfile.TemporaryDirectory() as tmp:
        paths, labels = _images(args.images, Path(tmp))
        n_classes = int(labels.max()) + 1
        val = np.arange(len(labels)) % 5 == 0  # the same 20% validation images for both
        extractor = build_feature_extractor(model, params.base.seed)

        clock = _Clock()
        vectors = featurize_paths(
            paths,
            extractor,
            image_size=args.size,
            batch_size=32,
            jit_compile=False,
            engine="tensorflow",
        )  # as first measured
        write_features(Path(tmp) / "features", [str(i) for i in range(len(paths))], vectors, {})
        featurize = clock.stop()

        clock = _Clock()
        with np.load(Path(tmp) / "features" / "features.npz") as npz:
            cached = npz["vectors"]
        fit = fit_head(
            (cached[~val], labels[~val]),
            (cached[val], labels[val]),
            n_classes,
            train,
            params.base.seed,
        )
        cached = clock.stop()

        clock = _Clock()
        naive = assemble(extractor, build_head(vectors.shape[1], n_classes, train, 0))
        compile_for_training(naive, train.optimizer, train.learning_rate, train.label_smoothing)

        def labelled(mask):
            return image_label_dataset(
                [p for p, m in zip(paths, mask, strict=True) if m],
                labels[mask],
                n_classes,
                args.size,
                train.batch_size,
                augment=False,
                seed=0,
            )

        history = naive.fit(
            labelled(~val),
            validation_data=labelled(val),
            epochs=args.epochs,
            verbose=0,
            shuffle=False,
            class_weight=class_weights(labels[~val], n_classes, train.class_weight),
        )
        naive = clock.stop()
    result = {
        "images": len(paths),
        "image_size": args.size,
        "backbone": args.backbone,
        "epochs": args.epochs,
        "load_average_1m": round(os.getloadavg()[0], 1),
        "featurize_once": featurize,
        "retrain_cached": cached,
        "naive_frozen_backbone": naive,
        "speedup_wall": round(naive["wall_s"] / cached["wall_s"], 1),
        "speedup_cpu": round(naive["cpu_s"] / cached["cpu_s"], 1),
        "epochs_run": {"cached": len(fit.history), "naive": len(history.epoch)},
    }
    print(json.dumps(result, indent=2))
    from taglens.atomic import atomic_write_json

    atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
