"""Batch predict benchmark: the whole command against a cold featurize, and flat memory.

Measured in one run, interleaved repeats (the machine is shared, so both see the same load):
- `python -m stages.predict` (list, read, hash, decode, model, hashtags, write Parquet) against
  `python -m stages.featurize` into an empty feature store (read, decode, backbone, write
  shards), each timed as a whole command, on the same photos with the same backbone and engine.
  The photos are the flowers set re-encoded as 640x640 JPEGs, the size Instagram serves, so
  decoding costs what it costs on scraped posts;
- peak RSS of the batch predict job in fresh subprocesses at two input counts (photos repeated).

    python -m bench.predict --images 800 --repeats 3 --rss 1000 10000
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

import numpy as np

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

    from taglens.features.backbones import BACKBONES

    keras.utils.set_random_seed(0)
    if name == "mobilenet":
        weights = WEIGHTS["mobilenet" if alpha == 1.0 else "mobilenet_025"]
        return keras.applications.MobileNet(
            input_shape=(size, size, 3),
            alpha=alpha,
            include_top=False,
            pooling="avg",
            weights=str(weights) if weights.is_file() else None,
        )
    constructor = getattr(keras.applications, BACKBONES[name].constructor)
    return constructor(input_shape=(size, size, 3), include_top=False, pooling="avg", weights=None)


def build_models(
    dest: Path,
    size: int,
    alpha: float,
    backbone_name: str = "mobilenet",
    *,
    flip: bool = True,
    colour: bool = True,
) -> Path:
    """A models/ dir: the backbone with its preprocessing + a softmax over the 5 flower classes.

    Assembled as train assembles the served model (`taglens.model.full_model.assemble`). The
    defaults give the costliest shape train writes with the default params: the image and its
    mirror image averaged (when validation picks a flip setting) and the colour view.
    """
    import keras

    from taglens.data.posts import Post
    from taglens.features.backbones import BACKBONES, preprocess_layer
    from taglens.model.full_model import assemble
    from taglens.model.hashtags import fit_hashtag_stats
    from taglens.params import load_params

    classes = sorted(p.name for p in FLOWERS.iterdir() if p.is_dir())
    backbone = _backbone(backbone_name, size, alpha)
    inputs = keras.Input((size, size, 3), name="image")
    mode = BACKBONES[backbone_name].mode
    extractor = keras.Model(
        inputs, backbone(preprocess_layer(mode, name="preprocess")(inputs), training=False)
    )
    vectors = keras.Input(extractor.output_shape[1:], name="vectors")
    head = keras.Model(vectors, keras.layers.Dense(len(classes), activation="softmax")(vectors))
    dest.mkdir(parents=True, exist_ok=True)
    assemble(extractor, head, flip=flip, colour=colour).save(dest / "model.keras")
    info = {
        "classes": classes,
        "image_size": size,
        "backbone": f"{backbone_name}-{alpha}",
        "run_id": None,
        "weights_identity": "bench",
        "experiment": "bench",
        "params": {},
    }
    (dest / "model_info.json").write_text(json.dumps(info))
    posts = [
        Post(
            id=f"{c}{i}",
            label=c,
            image=f"images/{i:064x}.jpg",
            sha256=f"{i:064x}",
            width=size,
            height=size,
            caption=f"#{c} #{c}_love #photooftheday",
            likes=i,
            source="bench",
        )
        for c in classes
        for i in range(3)
    ]
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
    from taglens.serving.batch.scoring import predict_to_file
    from taglens.serving.model_ref import ModelRef

    out.unlink(missing_ok=True)
    stamped = _Stamped(predictor)
    start = time.perf_counter()
    predict_to_file(paths, out, stamped, ModelRef("bench", "1"), batch_size=batch, progress=False)
    return _rates(len(paths), batch, start, time.perf_counter(), stamped.stamps)


def _rss_mb() -> float:
    """This process's resident memory now (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(count: int, models: Path, batch: int, fmt: str, engine: str) -> None:
    """Score `count` images into a fresh output; print rate and memory (MB) as JSON.

    `loaded_rss_mb` is after loading the model and a warm-up batch, `job_peak_rss_mb` the highest
    resident memory sampled every 20 ms while the job runs, `peak_rss_mb` the process's maximum.
    """
    import threading

    from taglens.serving import model_ref

    predictor = model_ref.load(str(models), engine)  # as the job loads it
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
    print(
        json.dumps(
            {
                "images": count,
                "img_s": rate,
                "loaded_rss_mb": loaded,
                "job_peak_rss_mb": peak[0],
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def rss_runs(counts, models: Path, batch: int, fmt: str, engine: str) -> list[dict]:
    rows = []
    for count in counts:
        cmd = [
            sys.executable,
            "-m",
            "bench.predict",
            "--child",
            str(count),
            "--models",
            str(models),
            "--batch",
            str(batch),
            "--format",
            fmt,
            "--engine",
            engine,
        ]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def reencode_photos(count: int, dest: Path, side: int = 640, quality: int = 90) -> list[Path]:
    """`count` distinct flowers photos as side x side JPEGs under `dest/images`, with posts.jsonl.

    `dest` is then a raw data directory as the scrape stage writes it (featurize reads it), and
    `dest/images` an input folder for batch predict.
    """
    import hashlib

    from PIL import Image

    from taglens.data.posts import POSTS_FILE, Post, write_posts

    sources = sorted(FLOWERS.rglob("*.jpg"))
    if len(sources) < count:
        sys.exit(f"error: --images {count} is more than the {len(sources)} flowers photos")
    step = len(sources) // count
    (dest / "images").mkdir(parents=True, exist_ok=True)
    posts, paths = [], []
    for number, source in enumerate(sources[::step][:count]):
        path = dest / "images" / f"{number:05d}.jpg"
        with Image.open(source) as image:
            image.convert("RGB").resize((side, side), Image.BICUBIC).save(path, quality=quality)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        posts.append(
            Post(
                id=f"p{number}",
                label=source.parent.name,
                image=f"images/{path.name}",
                sha256=sha,
                width=side,
                height=side,
                source="bench",
            )
        )
        paths.append(path)
    write_posts(dest / POSTS_FILE, posts)
    return paths


def bench_params(dest: Path, args) -> Path:
    """params.yaml with the benchmark's backbone, size, batch and engine."""
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    weights = WEIGHTS["mobilenet"] if args.backbone == "mobilenet" else None
    raw["model"].update(
        backbone=args.backbone,
        image_size=args.size,
        weights=str(weights) if weights and weights.is_file() else None,
    )
    raw["featurize"].update(batch_size=args.batch, engine=args.engine, jit_compile=False)
    raw["predict"]["batch_size"] = args.batch
    dest.write_text(yaml.safe_dump(raw))
    return dest


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, all threads) of one command run from the project root.

    On a shared machine the wall time depends on what else runs; the CPU time hardly does.
    A failing command stops the benchmark.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def commands(args, tmp: Path) -> dict:
    """Whole `stages.predict` against whole cold `stages.featurize`, interleaved, best of each."""
    import pandas as pd

    from taglens.params import load_params

    raw = tmp / "raw"
    paths = reencode_photos(args.images, raw)
    params = bench_params(tmp / "params.yaml", args)
    views = list(load_params(params).featurize.views)
    models = build_models(tmp / "models", args.size, alpha=1.0, backbone_name=args.backbone)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
    }
    py = sys.executable

    def featurize(run: int) -> list[str]:
        return [
            py,
            "-m",
            "stages.featurize",
            "--params",
            str(params),
            "--raw",
            str(raw),
            "--out",
            str(tmp / f"features-{run}"),
        ]

    def predict(run: int, inputs: Path = raw / "images") -> list[str]:
        return [
            py,
            "-m",
            "stages.predict",
            "--params",
            str(params),
            "--input",
            str(inputs),
            "--output",
            str(tmp / f"predict-{run}.parquet"),
            "--model-uri",
            str(models),
        ]

    warm = tmp / "warm"  # creates the MLflow database once, as a user's store already exists
    warm.mkdir()
    (warm / "a.jpg").write_bytes(paths[0].read_bytes())
    timed(predict(-1, warm), env)
    times: dict[str, list[float]] = {"featurize": [], "predict": []}
    cpu: dict[str, list[float]] = {"featurize": [], "predict": []}
    for run in range(args.repeats):  # alternate which goes first
        order = ("featurize", "predict") if run % 2 == 0 else ("predict", "featurize")
        for name in order:
            wall, cpu_s = timed((featurize if name == "featurize" else predict)(run), env)
            times[name].append(wall)
            cpu[name].append(cpu_s)
        rows = pd.read_parquet(tmp / f"predict-{run}.parquet")
        if len(rows) != args.images or rows["error"].notna().any():
            sys.exit(f"error: batch predict wrote {len(rows)} rows for {args.images} images")
        print(
            json.dumps({k: (v[-1], cpu[k][-1]) for k, v in times.items()}),
            file=sys.stderr,
            flush=True,
        )
    best = {name: min(values) for name, values in times.items()}
    best_cpu = {name: min(values) for name, values in cpu.items()}
    return {
        "engine": args.engine,
        "photo_side": 640,
        "command_seconds": times,
        "command_cpu_seconds": cpu,
        "featurize_img_s": args.images / best["featurize"],
        "predict_img_s": args.images / best["predict"],
        "predict_over_featurize": best["featurize"] / best["predict"],
        "predict_over_featurize_cpu": best_cpu["featurize"] / best_cpu["predict"],
        # issue 25's figure: featurize with the default views at >= 0.9 of batch predict
        "featurize_over_predict": best["predict"] / best["featurize"],
        "featurize_over_predict_cpu": best_cpu["predict"] / best_cpu["featurize"],
        "views": views,
        "predict_over_featurize_by_repeat": [
            f / p for f, p in zip(times["featurize"], times["predict"], strict=True)
        ],
    }


def run(args) -> dict:
    result = {
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg()[0],
        "backbone": args.backbone,
        "image_size": args.size,
        "batch_size": args.batch,
        "images": args.images,
    }
    with tempfile.TemporaryDirectory() as tmp:
        if not args.rss_only:
            result.update(commands(args, Path(tmp)))
        if not args.no_rss:
            small = build_models(Path(tmp) / "small", args.rss_size, alpha=0.25)
            result["rss"] = rss_runs(args.rss, small, args.batch, args.format, args.engine)
            result["rss_engine"] = args.engine
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
        times = r["command_seconds"]
        lines += [
            "",
            f"{_describe(r.get('backbone', 'mobilenet'))} assembled as train assembles the "
            "served model (the image and its mirror image averaged, plus the colour view), "
            f"{r['image_size']} px, batch "
            f"{r['batch_size']}, `featurize.engine: {r['engine']}`, {r['images']} flowers photos "
            f"re-encoded as {r['photo_side']}x{r['photo_side']} JPEGs; whole commands, "
            f"{len(times['predict'])} interleaved repeats, best of each.",
            "",
            "| command | wall s (every repeat) | img/s (best) | vs featurize, wall "
            "| CPU s (every repeat) | vs featurize, CPU |",
            "|---|---|---|---|---|---|",
        ]
        cpu = r["command_cpu_seconds"]
        for name, label, ratio, ratio_cpu in (
            ("featurize", "`python -m stages.featurize` (empty feature store)", 1.0, 1.0),
            (
                "predict",
                "`python -m stages.predict` (Parquet output)",
                r["predict_over_featurize"],
                r["predict_over_featurize_cpu"],
            ),
        ):
            lines.append(
                f"| {label} | {', '.join(f'{x:.1f}' for x in times[name])} "
                f"| {r[f'{name}_img_s']:.1f} | **{ratio:.2f}** "
                f"| {', '.join(f'{x:.1f}' for x in cpu[name])} | **{ratio_cpu:.2f}** |"
            )
        pairs = r.get("predict_over_featurize_by_repeat", [])
        if pairs:
            lines += [
                "",
                "Wall-time ratio within each repeat (the two commands back to back): "
                + ", ".join(f"{x:.2f}" for x in pairs)
                + f"; median {float(np.median(pairs)):.2f}.",
            ]
        if "featurize_over_predict" in r:
            lines += [
                "",
                f"Featurize (views: {', '.join(r['views']) or 'none'}) over batch "
                f"predict: **{r['featurize_over_predict']:.2f}** by wall time (target >= "
                f"0.9), {r['featurize_over_predict_cpu']:.2f} per CPU-second.",
            ]
    if "rss" not in r:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        f"Memory of the job (MobileNet 0.25, {r['rss_size']} px, {r['rss_format']} output, "
        f"`featurize.engine: {r.get('rss_engine', 'tensorflow')}`, a fresh process each; MB "
        "resident):",
        "",
        "| images | after model load | peak during the job | process peak | img/s |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {x['images']} | {x['loaded_rss_mb']:.0f} | {x['job_peak_rss_mb']:.0f} "
        f"| {x['peak_rss_mb']:.0f} | {x['img_s']:.1f} |"
        for x in r["rss"]
    ]
    lines.append(f"\nlargest / smallest peak during the job: {r['rss_ratio']:.2f}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; write `predict.json` / `predict.md` under --out."""
    from taglens.features.engines import FP32_ENGINES as ENGINES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=800, help="distinct photos, 640x640")
    parser.add_argument("--backbone", default="mobilenet", help="a taglens.features.backbones name")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default=None,
        help="featurize.engine for both commands (default: params.yaml's)",
    )
    parser.add_argument("--rss", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--rss-size", type=int, default=64)
    parser.add_argument("--format", default="parquet", choices=["csv", "jsonl", "parquet"])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--rss-only", action="store_true", help="only the memory runs")
    parser.add_argument("--no-rss", action="store_true", help="only the throughput runs")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--models", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from taglens.features.backbones import BACKBONES
    from taglens.params import load_params

    args.engine = args.engine or load_params(ROOT / "params.yaml").featurize.engine
    if args.backbone not in BACKBONES:
        parser.error(f"--backbone must be one of {sorted(BACKBONES)}, got {args.backbone!r}")
    if args.rss_only and args.no_rss:
        parser.error("--rss-only and --no-rss exclude each other")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.child:
        child(args.child, args.models, args.batch, args.format, args.engine)
        return 0
    result = run(args)
    from bench.results_io import save_results

    stem = "predict" if args.backbone == "mobilenet" else f"predict-{args.backbone}-{args.size}px"
    save_results(args.out, stem, result, to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
