"""Benchmark: what fine-tuning the backbone's end adds over a head on cached features, per epoch.

    .venv/bin/python -m bench.fine_tune [--epochs 2] [--layers 0] [--learning-rate 1e-5]

Writes bench/results/fine_tune-last-block.json (or fine_tune-last-N-layers.json) and .md.

Flowers at 128 px with MobileNet 1.0 ImageNet weights (../shared/weights; the only pretrained
backbone available offline here), split 60/20/20 per class. Fits params.yaml's head on the cached
features (bench.search's cache), scores the test photos through the assembled model, then runs
`model.full_model.fine_tune` (the last block, or the last --layers layers) and scores again.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]


def _split(labels: np.ndarray, seed: int) -> np.ndarray:
    """'train' / 'val' / 'test' per row: 60/20/20 of each class, shuffled with `seed`."""
    rng = np.random.default_rng(seed)
    split = np.empty(len(labels), dtype=object)
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        n_train, n_val = round(0.6 * len(rows)), round(0.2 * len(rows))
        split[rows[:n_train]], split[rows[n_train : n_train + n_val]] = "train", "val"
        split[rows[n_train + n_val :]] = "test"
    return split


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--layers", type=int, default=0, help="0: the last block")
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "taglens-bench")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)

    from bench.results_io import save_results
    from bench.search import FLOWERS, WEIGHTS, flowers_features
    from taglens.data.images import image_dataset
    from taglens.features.backbones import build_feature_extractor
    from taglens.model.full_model import assemble, fine_tune
    from taglens.params import FineTuneParams, ModelParams, load_params
    from taglens.training.head import fit_head

    params = load_params(ROOT / "params.yaml")
    model_params = ModelParams(backbone="mobilenet", image_size=128, weights=str(WEIGHTS))
    views, labels, files = flowers_features(args.cache, model_params)
    split = _split(labels, params.base.seed)
    tr, va, te = (split == name for name in ("train", "val", "test"))
    train = params.train.model_copy(update={"augment": False})
    fit = fit_head(
        (views[""][tr], labels[tr]),
        (views[""][va], labels[va]),
        int(labels.max()) + 1,
        train,
        params.base.seed,
    )
    model = assemble(build_feature_extractor(model_params, params.base.seed), fit.model)
    test_files = [files[i] for i in np.flatnonzero(te)]

    def test_accuracy() -> float:
        probs = np.concatenate(
            [
                np.asarray(model(batch, training=False)["probabilities"])
                for batch in image_dataset(test_files, 128, 64)
            ]
        )
        return float(np.mean(probs.argmax(axis=1) == labels[te]))

    before = test_accuracy()
    tune = FineTuneParams(
        enabled=True,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        batch_size=params.train.fine_tune.batch_size,
        layers=args.layers,
    )
    pick = lambda mask: ([files[i] for i in np.flatnonzero(mask)], labels[mask])  # noqa: E731
    wall, cpu = time.perf_counter(), time.process_time()
    rows = fine_tune(
        model,
        model_params,
        tune,
        pick(tr),
        pick(va),
        label_smoothing=train.label_smoothing,
        seed=params.base.seed,
    )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    after = test_accuracy()
    result = {
        "backbone": "mobilenet (1.0, ImageNet)",
        "image_size": 128,
        "train_images": int(tr.sum()),
        "test_images": int(te.sum()),
        "epochs": args.epochs,
        "layers": args.layers or "last block",
        "learning_rate": args.learning_rate,
        "test_accuracy_head": round(before, 4),
        "test_accuracy_fine_tuned": round(after, 4),
        "gain": round(after - before, 4),
        "val_accuracy_per_epoch": [round(r.get("val_accuracy", float("nan")), 4) for r in rows],
        "wall_min_per_epoch": round(wall / 60 / args.epochs, 2),
        "cpu_min_per_epoch": round(cpu / 60 / args.epochs, 2),
        "load_average_1m": round(os.getloadavg()[0], 1),
        "photos": str(FLOWERS),
    }
    table = (
        "| backbone, size | unfrozen | epochs | test acc head -> fine-tuned | gain "
        "| min/epoch wall (CPU) | load avg |\n|---|---|---|---|---|---|---|\n"
        f"| MobileNet 1.0, 128 px | {result['layers']} | {args.epochs} | {before:.4f} -> "
        f"{after:.4f} | {after - before:+.4f} | {result['wall_min_per_epoch']} "
        f"({result['cpu_min_per_epoch']}) | {result['load_average_1m']} |\n"
    )
    stem = f"fine_tune-last-{args.layers}-layers" if args.layers else "fine_tune-last-block"
    save_results(args.out, stem, result, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
