"""Benchmark: the default search (params.yaml's train.search) on about 7,000 cached vectors.

    .venv/bin/python -m bench.search [--rows 7000] [--cache DIR] [--out DIR]

Featurizes the flowers photos once (MobileNet 1.0 ImageNet from ../shared/weights at 128 px,
with the flip view; cached in --cache), then brings them to --rows rows by repeating photos with
a little Gaussian noise (1% of the features' spread: the cost of a fit depends on the row count,
not on where the rows come from), splits them 70/15/15 and runs the train stage's search with
its MLflow child runs against a throwaway store. Reports wall and CPU minutes.

The search runs twice in one process: first with one batch per call of Keras' compiled training
step (the baseline), then with the batches per call the train stage uses
(`taglens.training.head.HEAD_STEPS_PER_EXECUTION`). Both must choose the same setting with the
same validation accuracy; the CPU ratio is what the batching saves.
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
SHARED = ROOT.parent / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet_v1_1.0_imagenet_no_top.weights.h5"
NOISE = 0.01


FLOWERS = SHARED / "datasets" / "flowers"


def flowers_features(cache: Path, params) -> tuple[dict[str, np.ndarray], np.ndarray, list[Path]]:
    """Vectors of every flowers photo per view ('' = the image itself), labels and files."""
    import hashlib

    from taglens.features import store as features
    from taglens.features.backbones import weights_identity
    from taglens.features.views import IMAGE, build_views_model

    classes = sorted(p.name for p in FLOWERS.iterdir() if p.is_dir())
    files = [
        (f, c) for c, name in enumerate(classes) for f in sorted((FLOWERS / name).glob("*.jpg"))
    ]
    items = [(hashlib.sha256(f.read_bytes()).hexdigest(), f) for f, _ in files]
    key = features.FeatureKey("mobilenet", 128, weights_identity(params, 0), "fp32")
    stores = features.feature_stores(cache, key, ["flip"])
    vectors, _ = features.fill_stores(
        stores,
        items,
        lambda outputs: build_views_model(params, 0, outputs),
        batch_size=32,
        shard_size=512,
        jit_compile=False,
        engine="tensorflow",
        progress=True,
    )
    out = {
        "" if name == IMAGE else name: np.stack([by_sha[sha] for sha, _ in items])
        for name, by_sha in vectors.items()
    }
    return out, np.array([c for _, c in files]), [f for f, _ in files]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=7000)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "taglens-bench")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)

    import mlflow

    from bench.results_io import save_results
    from taglens.params import ModelParams, flatten, load_params
    from taglens.training.head import fit_head
    from taglens.training.search import default_search, run_sweep, setting_name

    params = load_params(ROOT / "params.yaml")
    model = ModelParams(backbone="mobilenet", image_size=128, weights=str(WEIGHTS))
    views, labels, _ = flowers_features(args.cache, model)
    rng = np.random.default_rng(0)
    picks = rng.permutation(np.resize(np.arange(len(labels)), args.rows))
    spread = views[""].std(axis=0)
    noise = {view: rng.normal(0, NOISE, (args.rows, spread.size)) * spread for view in views}
    x = {view: (array[picks] + noise[view]).astype("float32") for view, array in views.items()}
    y = labels[picks]
    n_train, n_val = int(0.7 * args.rows), int(0.15 * args.rows)
    tr, va = slice(0, n_train), slice(n_train, n_train + n_val)
    settings = default_search(params.train.search, params.base.seed)

    def fit_one(train_params, on_epoch):
        return fit_head(
            (x[""][tr], y[tr]),
            (x[""][va], y[va]),
            int(y.max()) + 1,
            train_params,
            params.base.seed,
            on_epoch,
            flips=(x["flip"][tr], x["flip"][va]),
        )

    import taglens.training.head as head

    def timed_search(steps_per_execution: int) -> dict:
        head.HEAD_STEPS_PER_EXECUTION = steps_per_execution
        with tempfile.TemporaryDirectory() as store:
            mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
            # artifacts beside the throwaway database, not in the checkout's mlruns/
            artifacts = (Path(store) / "artifacts").as_uri()
            mlflow.set_experiment(experiment_id=mlflow.create_experiment("bench-search", artifacts))
            wall, cpu = time.perf_counter(), time.process_time()
            with mlflow.start_run(run_name="train"):
                trials, best = run_sweep(params.train, settings, fit_one, flatten(params))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return {
            "steps_per_execution": steps_per_execution,
            "candidates": len(trials),
            "wall_min": round(wall / 60, 2),
            "cpu_min": round(cpu / 60, 2),
            "best_setting": setting_name(trials[best].setting),
            "best_val_accuracy": round(trials[best].fit.val_accuracy, 4),
        }

    batched = head.HEAD_STEPS_PER_EXECUTION
    runs = [timed_search(1), timed_search(batched)]
    same = all(runs[0][key] == runs[1][key] for key in ("best_setting", "best_val_accuracy"))
    result = {
        "rows": args.rows,
        "train_rows": n_train,
        "val_rows": n_val,
        "runs": runs,
        "cpu_ratio": round(runs[1]["cpu_min"] / runs[0]["cpu_min"], 2),
        "same_choice": same,
        "load_average_1m": round(os.getloadavg()[0], 1),
    }
    table = (
        "| rows (train/val) | batches per call | candidates | wall min | CPU min "
        "| best on validation |\n|---|---|---|---|---|---|\n"
    )
    for run in runs:
        table += (
            f"| {args.rows} ({n_train}/{n_val}) | {run['steps_per_execution']} | "
            f"{run['candidates']} | {run['wall_min']} | {run['cpu_min']} | "
            f"{run['best_setting']} ({run['best_val_accuracy']}) |\n"
        )
    table += (
        f"\nCPU ratio (batched / one per call): {result['cpu_ratio']}; the same choice: "
        f"{'yes' if same else 'no'}; load average {result['load_average_1m']}.\n"
    )
    save_results(args.out, "search", result, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
