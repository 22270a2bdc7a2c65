"""Nightly scoring benchmark: N new photos after M already scored, against the N alone.

The nightly run scores a folder that keeps every photo it ever received. Its cost should follow
the new photos, not the history: this times the whole job (list the folder, recognise what the
Parquet output holds, score the rest, add a part) in two situations, interleaved:

- alone: a folder of the N new photos, into a new output;
- after history: the same N photos in a folder that also holds M photos the output has scored.

The model is a tiny conv net at 32 px (`--size`), so the forward pass is cheap and what grows
with history (listing, stat'ing, recognising, writing) shows; the photos are JPEGs of
`--side` px, so reading and hashing a photo costs what it costs on real files.

    python -m bench.nightly --new 1000 --history 10000 --repeats 5
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]


def write_photos(folder: Path, start: int, count: int, side: int) -> None:
    """`count` distinct JPEG photos (smooth colour fields with noise), numbered from `start`."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 1, side, dtype=np.float32)
    for number in range(start, start + count):
        rng = np.random.default_rng(number)
        base = rng.uniform(0, 255, 3).astype(np.float32)
        tilt = rng.uniform(-80, 80, (2, 3)).astype(np.float32)
        pixels = base + ramp[:, None, None] * tilt[0] + ramp[None, :, None] * tilt[1]
        pixels += rng.normal(0, 12, (side, side, 3)).astype(np.float32)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=85)
        (folder / f"{number:06d}.jpg").write_bytes(buffer.getvalue())


def build_tiny_models(dest: Path, size: int) -> Path:
    """A models/ dir with a tiny random conv net (preprocessing inside) and hashtag stats."""
    import keras

    from taglens.data.posts import Post
    from taglens.features.backbones import preprocess_layer
    from taglens.model.hashtags import fit_hashtag_stats
    from taglens.params import load_params

    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3), name="image")
    x = preprocess_layer("tf", name="preprocess")(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax")(x)
    dest.mkdir(parents=True, exist_ok=True)
    keras.Model(inputs, outputs).save(dest / "model.keras")
    info = {
        "classes": CLASSES,
        "image_size": size,
        "backbone": "tiny",
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
        for c in CLASSES
        for i in range(3)
    ]
    hashtag_params = load_params(ROOT / "params.yaml").hashtags
    fit_hashtag_stats(posts, CLASSES, hashtag_params).save(dest / "hashtags.json")
    return dest


def nightly_run(folder: Path, output: Path, predictor, batch: int) -> tuple[float, dict]:
    """The whole job as the nightly flow runs it locally: list, recognise, score, add a part.

    Returns:
        Wall seconds, and the counts with the process's CPU seconds (every thread).
    """
    from taglens.serving.batch.inputs import list_inputs
    from taglens.serving.batch.scoring import predict_to_file
    from taglens.serving.model_ref import ModelRef

    start, cpu_start = time.perf_counter(), time.process_time()
    paths = list_inputs(folder)
    report = predict_to_file(
        paths, output, predictor, ModelRef("bench", "1"), batch_size=batch, progress=False
    )
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    counts = {"scored": report.scored, "skipped": report.skipped, "total": report.total}
    return seconds, {**counts, "cpu_seconds": cpu}


def run(args: argparse.Namespace) -> dict:
    """Prepare the photos and the scored history, then time both situations, interleaved."""
    import pandas as pd

    from taglens.features.engines import on_engine
    from taglens.model.predictor import HashtagPredictor
    from taglens.serving.batch.outputs import run_parts

    tmp = Path(tempfile.mkdtemp(prefix="bench-nightly-"))
    try:
        alone, everything = tmp / "alone", tmp / "inbox"
        write_photos(everything, 0, args.history + args.new, args.side)
        alone.mkdir()
        for number in range(args.history, args.history + args.new):
            os.link(everything / f"{number:06d}.jpg", alone / f"{number:06d}.jpg")
        history_list = tmp / "history.txt"
        names = (everything / f"{n:06d}.jpg" for n in range(args.history))
        history_list.write_text("\n".join(map(str, names)) + "\n", encoding="utf-8")
        predictor = on_engine(
            HashtagPredictor.from_dir(build_tiny_models(tmp / "models", args.size)), args.engine
        )
        history = tmp / "history.parquet"  # the output as it stands after M photos
        nightly_run(history_list, history, predictor, args.batch)
        nightly_run(alone, tmp / "warm.parquet", predictor, args.batch)  # trace the model once
        times: dict[str, list[float]] = {"alone": [], "after_history": []}
        cpu: dict[str, list[float]] = {"alone": [], "after_history": []}
        counts = {}
        loadavg_start = os.getloadavg()[0]
        for repeat in range(args.repeats):
            order = ("alone", "after_history") if repeat % 2 == 0 else ("after_history", "alone")
            for name in order:
                output = tmp / f"{name}-{repeat}.parquet"
                if name == "after_history":
                    shutil.copytree(history, output)
                folder = alone if name == "alone" else everything
                seconds, counts[name] = nightly_run(folder, output, predictor, args.batch)
                times[name].append(seconds)
                cpu[name].append(counts[name].pop("cpu_seconds"))
                if name == "after_history":
                    table = pd.read_parquet(output, columns=["path"])
                    if len(table) != args.history + args.new or table.path.nunique() != len(table):
                        raise SystemExit(
                            f"error: {len(table)} rows after the run, expected "
                            f"{args.history + args.new} distinct"
                        )
                    if len(run_parts(output)) != 2:
                        raise SystemExit("error: the run rewrote the history's part")
                shutil.rmtree(output)
        loadavg_end = os.getloadavg()[0]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    by_repeat = [h / a for h, a in zip(times["after_history"], times["alone"], strict=True)]
    cpu_by_repeat = [h / a for h, a in zip(cpu["after_history"], cpu["alone"], strict=True)]
    return {
        "new": args.new,
        "history": args.history,
        "side": args.side,
        "image_size": args.size,
        "batch_size": args.batch,
        "engine": args.engine,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "loadavg_start": loadavg_start,
        "loadavg_end": loadavg_end,
        "seconds": times,
        "counts": counts,
        "ratio_best": min(times["after_history"]) / min(times["alone"]),
        "ratio_by_repeat": by_repeat,
        "ratio_median": statistics.median(by_repeat),
        "cpu_seconds": cpu,
        "cpu_ratio_best": min(cpu["after_history"]) / min(cpu["alone"]),
        "cpu_ratio_by_repeat": cpu_by_repeat,
        "cpu_ratio_median": statistics.median(cpu_by_repeat),
    }


def to_markdown(r: dict) -> str:
    """The result as the table BENCHMARKS.md quotes."""

    def listed(values: list[float]) -> str:
        return ", ".join(f"{value:.2f}" for value in values)

    lines = [
        f"{r['new']} new photos ({r['side']}x{r['side']} JPEG) scored by a tiny conv net at "
        f"{r['image_size']} px, batch {r['batch_size']}, `{r['engine']}` engine, Parquet output; "
        f"{r['repeats']} interleaved repeats. Load average {r['loadavg_start']:.1f} -> "
        f"{r['loadavg_end']:.1f} on {r['cpus']} CPUs.",
        "",
        "| situation | folder holds | scored | skipped | wall s (every repeat) | best "
        "| CPU s (every repeat) | best |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, label, held in (
        ("alone", "the new photos alone, new output", r["new"]),
        ("after_history", f"after {r['history']} scored", r["history"] + r["new"]),
    ):
        c = r["counts"][name]
        lines.append(
            f"| {label} | {held} | {c['scored']} | {c['skipped']} | {listed(r['seconds'][name])} "
            f"| {min(r['seconds'][name]):.2f} | {listed(r['cpu_seconds'][name])} "
            f"| {min(r['cpu_seconds'][name]):.2f} |"
        )
    lines += [
        "",
        f"after history / alone, wall: best {r['ratio_best']:.2f}; by repeat "
        f"{listed(r['ratio_by_repeat'])}; median {r['ratio_median']:.2f}",
        "",
        f"after history / alone, CPU: best {r['cpu_ratio_best']:.2f}; by repeat "
        f"{listed(r['cpu_ratio_by_repeat'])}; median {r['cpu_ratio_median']:.2f}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; write `nightly.json` / `nightly.md` under --out."""
    from taglens.features.engines import FP32_ENGINES as ENGINES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new", type=int, default=1000, help="photos new tonight (N)")
    parser.add_argument("--history", type=int, default=10000, help="photos scored before (M)")
    parser.add_argument("--side", type=int, default=320, help="photo side in pixels")
    parser.add_argument("--size", type=int, default=32, help="the model's input side")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--engine", choices=ENGINES, default="tensorflow")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from bench.results_io import save_results

    result = run(args)
    save_results(args.out, "nightly", result, to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
