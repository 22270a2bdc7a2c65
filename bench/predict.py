"""Batch predict benchmark: throughput against featurize and a naive loop, and flat memory.

Measured in one run on real photos (../shared/datasets/flowers), same backbone and image size:
- batch predict (`taglens.batch_predict.predict_to_file`, hashing, decode, model, hashtags,
  writing included) against featurize (`taglens.features.featurize_paths`, the backbone alone)
  and against a naive loop calling `model.predict` on one image at a time;
- peak RSS of the whole job in fresh subprocesses at two input counts (photos repeated).

    python -m bench.predict --images 512 --size 128 --rss 1000 10000
    python -m bench.predict --backbone vgg19 --images 96 --size 224 --batch 16 --no-rss

Any other backbone than MobileNet 1.0 gets random weights (its cost does not depend on them);
its results go to `predict-<backbone>-<size>px.json` / `.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FLOWERS = SHARED / "datasets" / "flowers"
WEIGHTS = {
    "mobilenet": SHARED / "weights" / "mobilenet_v1_1.0_imagenet_no_top.weights.h5",
    "mobilenet_025": SHARED / "weights" / "mobilenet_v1_0.25_imagenet_no_top.h5",
}


def photos(count: int) -> list[Path]:
    """`count` flowers photos, cycling through the sorted set when more are asked for."""
    found = sorted(FLOWERS.rglob("*.jpg"))
    if not found:
        sys.exit(f"error: no photos under {FLOWERS} (the benchmark needs ../shared/datasets)")
    return [found[i % len(found)] for i in range(count)]


def _backbone(name: str, size: int, alpha: float):
    """MobileNet with the ImageNet weights from ../shared, or any other backbone, random."""
    import keras

    from taglens.backbones import BACKBONES

    keras.utils.set_random_seed(0)
    if name == "mobilenet":
        weights = WEIGHTS["mobilenet" if alpha == 1.0 else "mobilenet_025"]
        return keras.applications.MobileNet(
            input_shape=(size, size, 3), alpha=alpha, include_top=False, pooling="avg",
            weights=str(weights) if weights.is_file() else None,
        )  # fmt: skip
    constructor = getattr(keras.applications, BACKBONES[name].constructor)
    return constructor(input_shape=(size, size, 3), include_top=False, pooling="avg", weights=None)


def build_models(dest: Path, size: int, alpha: float, backbone_name: str = "mobilenet") -> Path:
    """A models/ dir: the backbone with its preprocessing + a softmax over the 5 flower classes."""
    import keras

    from taglens.backbones import BACKBONES, preprocess_layer
    from taglens.hashtags import fit_hashtag_stats
    from taglens.params import load_params
    from taglens.posts import Post

    classes = sorted(p.name for p in FLOWERS.iterdir() if p.is_dir())
    backbone = _backbone(backbone_name, size, alpha)
    inputs = keras.Input((size, size, 3), name="image")
    mode = BACKBONES[backbone_name].mode
    x = backbone(preprocess_layer(mode, name="preprocess")(inputs), training=False)
    outputs = keras.layers.Dense(len(classes), activation="softmax")(x)
    dest.mkdir(parents=True, exist_ok=True)
    keras.Model(inputs, outputs).save(dest / "model.keras")
    info = {"classes": classes, "image_size": size, "backbone": f"{backbone_name}-{alpha}",
            "run_id": None, "weights_identity": "bench", "experiment": "bench", "params": {}}
    (dest / "model_info.json").write_text(json.dumps(info))
    posts = [Post(id=f"{c}{i}", label=c, image=f"images/{i:064x}.jpg", sha256=f"{i:064x}",
                  width=size, height=size, caption=f"#{c} #{c}_love #photooftheday",
                  likes=i, source="bench") for c in classes for i in range(3)]  # fmt: skip
    hashtag_params = load_params(ROOT / "params.yaml").hashtags
    fit_hashtag_stats(posts, classes, hashtag_params).save(dest / "hashtags.json")
    return dest


class _Stamped:
    """Wraps a predictor and records when each batch's predictions were ready."""

    def __init__(self, predictor):
        self.predictor, self.image_size, self.stamps = predictor, predictor.image_size, []

    def predict_pixels(self, batch):
        out = self.predictor.predict_pixels(batch)
        self.stamps.append(time.perf_counter())
        return out


def _rates(count: int, batch: int, start: float, end: float, stamps: list[float]) -> dict:
    """Overall img/s, and steady-state img/s after the first batch (no tracing or compiling)."""
    steady = (count - batch) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
    return {"overall": count / (end - start), "steady": steady}


def predict_rate(paths, predictor, out: Path, batch: int) -> dict:
    from taglens.batch_predict import ModelRef, predict_to_file

    out.unlink(missing_ok=True)
    stamped = _Stamped(predictor)
    start = time.perf_counter()
    predict_to_file(paths, out, stamped, ModelRef("bench", "1"), batch_size=batch,
                    progress=False)  # fmt: skip
    return _rates(len(paths), batch, start, time.perf_counter(), stamped.stamps)


def featurize_rate(paths, extractor, size: int, batch: int, jit: bool = True) -> dict:
    from taglens.features import featurize_paths

    stamps: list[float] = []
    start = time.perf_counter()
    featurize_paths(paths, extractor, image_size=size, batch_size=batch, jit_compile=jit,
                    progress=False, on_batch=lambda _: stamps.append(time.perf_counter()))
    return _rates(len(paths), batch, start, time.perf_counter(), stamps)


def naive_rate(paths, model, size: int) -> float:
    """One `model.predict` call per image: what a simple script would do."""
    from taglens.images import load_batch

    model.predict(load_batch(paths[:1], size), verbose=0)
    start = time.perf_counter()
    for path in paths:
        model.predict(load_batch([path], size), verbose=0)
    return len(paths) / (time.perf_counter() - start)


def _rss_mb() -> float:
    """This process's resident memory now (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(count: int, models: Path, batch: int, fmt: str) -> None:
    """Score `count` images into a fresh output; print rate and memory (MB) as JSON.

    `loaded_rss_mb` is after loading the model and a warm-up batch, `job_peak_rss_mb` the highest
    resident memory sampled every 20 ms while the job runs, `peak_rss_mb` the process's maximum.
    """
    import threading

    from stages.predict import load_model

    predictor = load_model(str(models))  # as the job loads it
    with tempfile.TemporaryDirectory() as tmp:
        predict_rate(photos(batch), predictor, Path(tmp) / f"warm.{fmt}", batch)
        loaded = _rss_mb()
        peak, running = [loaded], [True]

        def sample() -> None:
            while running[0]:
                peak[0] = max(peak[0], _rss_mb())
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rate = predict_rate(photos(count), predictor, Path(tmp) / f"out.{fmt}", batch)["overall"]
        running[0] = False
        sampler.join()
    print(json.dumps({"images": count, "img_s": rate, "loaded_rss_mb": loaded,
                      "job_peak_rss_mb": peak[0],
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def rss_runs(counts, models: Path, batch: int, fmt: str) -> list[dict]:
    rows = []
    for count in counts:
        cmd = [sys.executable, "-m", "bench.predict", "--child", str(count), "--models",
               str(models), "--batch", str(batch), "--format", fmt]  # fmt: skip
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def throughput(args, tmp: Path) -> dict:
    """Batch predict against featurize (XLA and plain graph) and a naive loop, same network."""
    import keras

    from stages.predict import load_model

    result: dict = {}
    models = build_models(tmp / "models", args.size, alpha=1.0, backbone_name=args.backbone)
    predictor = load_model(str(models))  # as the job loads it (a traced graph)
    model = predictor.model.model  # the plain Keras model
    # featurize's network: the same preprocessing and backbone (shared weights), no head
    image = keras.Input((args.size, args.size, 3))
    extractor = keras.Model(image, model.layers[-2](model.layers[-3](image)))
    paths = photos(args.images)
    predict_rate(paths[: args.batch * 2], predictor, tmp / "warm.jsonl", args.batch)
    feats, plain, preds = [], [], []
    for _ in range(args.repeats):  # alternate, so all see the same machine load
        feats.append(featurize_rate(paths, extractor, args.size, args.batch))
        plain.append(featurize_rate(paths, extractor, args.size, args.batch, jit=False))
        preds.append(predict_rate(paths, predictor, tmp / "out.jsonl", args.batch))
    # best of the repeats; "steady" leaves out the first batch (tracing, XLA compiling)
    for name, runs in (("featurize_xla", feats), ("featurize", plain), ("predict", preds)):
        result[f"{name}_img_s"] = max(r["steady"] for r in runs)
        result[f"{name}_overall_img_s"] = max(r["overall"] for r in runs)
    result["naive_img_s"] = naive_rate(paths[: args.naive], model, args.size)
    result["predict_over_featurize"] = result["predict_img_s"] / result["featurize_img_s"]
    result["predict_over_naive"] = result["predict_img_s"] / result["naive_img_s"]
    print(json.dumps(result), file=sys.stderr)
    return result


def run(args) -> dict:
    result = {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()[0],
              "backbone": args.backbone, "image_size": args.size, "batch_size": args.batch,
              "images": args.images}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        if not args.rss_only:
            result.update(throughput(args, Path(tmp)))
        if not args.no_rss:
            small = build_models(Path(tmp) / "small", args.rss_size, alpha=0.25)
            result["rss"] = rss_runs(args.rss, small, args.batch, args.format)
    if not args.no_rss:
        result["rss_size"], result["rss_format"] = args.rss_size, args.format
        peaks = [row["job_peak_rss_mb"] for row in result["rss"]]
        result["rss_ratio"] = max(peaks) / min(peaks)
    result["loadavg_end"] = os.getloadavg()[0]
    return result


def _describe(backbone: str) -> str:
    if backbone == "mobilenet":
        return "MobileNet 1.0 (ImageNet weights)"
    return f"{backbone} (random weights)"


def to_markdown(r: dict) -> str:
    """A section for BENCHMARKS.md."""
    load = f"{r['loadavg_start']:.1f} -> {r['loadavg_end']:.1f}"
    lines = [f"Load average {load} on {r['cpus']} CPUs (shared machine)."]
    if "predict_img_s" in r:
        f = r["featurize_img_s"]
        lines += [
            "",
            f"{_describe(r.get('backbone', 'mobilenet'))} + softmax head, {r['image_size']} px, "
            f"batch {r['batch_size']}, {r['images']} flowers photos, best of the repeats. Steady = "
            "after the first batch (no tracing or compiling).",
            "",
            "| job | steady img/s | overall img/s | steady vs featurize |",
            "|---|---|---|---|",
            f"| featurize, plain graph (`featurize.jit_compile: false`) | {f:.1f} "
            f"| {r['featurize_overall_img_s']:.1f} | 1.00 |",
            f"| featurize, XLA (`featurize.jit_compile: true`) | {r['featurize_xla_img_s']:.1f} "
            f"| {r['featurize_xla_overall_img_s']:.1f} | {r['featurize_xla_img_s'] / f:.2f} |",
            f"| batch predict (read, hash, decode, model, hashtags, write) "
            f"| {r['predict_img_s']:.1f} | {r['predict_overall_img_s']:.1f} "
            f"| {r['predict_over_featurize']:.2f} |",
            f"| naive loop, `model.predict` per image | {r['naive_img_s']:.1f} | - "
            f"| {r['naive_img_s'] / f:.2f} |",
        ]
    if "rss" not in r:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        f"Memory of the job (MobileNet 0.25, {r['rss_size']} px, {r['rss_format']} output, a "
        "fresh process each; MB resident):",
        "",
        "| images | after model load | peak during the job | process peak | img/s |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {x['images']} | {x['loaded_rss_mb']:.0f} | {x['job_peak_rss_mb']:.0f} "
              f"| {x['peak_rss_mb']:.0f} | {x['img_s']:.1f} |" for x in r["rss"]]  # fmt: skip
    lines.append(f"\nlargest / smallest peak during the job: {r['rss_ratio']:.2f}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; write `predict.json` / `predict.md` under --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--backbone", default="mobilenet", help="a taglens.backbones name")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--naive", type=int, default=64, help="images for the naive loop")
    parser.add_argument("--rss", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--rss-size", type=int, default=64)
    parser.add_argument("--format", default="parquet", choices=["csv", "jsonl", "parquet"])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--rss-only", action="store_true", help="only the memory runs")
    parser.add_argument("--no-rss", action="store_true", help="only the throughput runs")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--models", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from taglens.backbones import BACKBONES

    if args.backbone not in BACKBONES:
        parser.error(f"--backbone must be one of {sorted(BACKBONES)}, got {args.backbone!r}")
    if args.rss_only and args.no_rss:
        parser.error("--rss-only and --no-rss exclude each other")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.child:
        child(args.child, args.models, args.batch, args.format)
        return 0
    result = run(args)
    from bench.results_io import save_results

    stem = "predict" if args.backbone == "mobilenet" else f"predict-{args.backbone}-{args.size}px"
    save_results(args.out, stem, result, to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
