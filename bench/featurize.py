"""Featurize benchmark: how close the batched forward pass gets to this machine's FLOP bound.

Measured in one run: the float32 matmul peak (GFLOP/s), each backbone's FLOPs per image counted
from its layers, hence the best possible images/s, the achieved images/s of
`taglens.features.featurize_paths` on real photos, and decode-only throughput.

    python -m bench.featurize --images 160 --out bench/results [--onednn on|off]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FLOWERS = ROOT.parent / "shared" / "datasets" / "flowers"
MOBILENET = ROOT.parent / "shared" / "weights" / "mobilenet_v1_1.0_imagenet_no_top.weights.h5"


def layer_flops(model) -> int:
    """FLOPs (2 x multiply-adds) of one image through conv, depthwise-conv and dense layers.

    Pooling, batch norm and activations are elementwise and add well under 1% for these nets.
    """
    import keras

    total = 0
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:  # a nested backbone model
            total += layer_flops(layer)
            continue
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw, cin, mult = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            total += 2 * h * w * kh * kw * cin * mult
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            total += 2 * h * w * kh * kw * (cin // layer.groups) * cout
        elif isinstance(layer, keras.layers.Dense):
            cin, cout = layer.kernel.shape
            total += 2 * cin * cout
    return int(total)


def matmul_peak(seconds: float = 4.0) -> dict[str, float]:
    """Best float32 matmul rate over a few square sizes: GFLOP per wall second and per CPU second.

    The CPU-second rate (this process's user+system time over all its threads) hardly depends on
    what else runs on the machine, so efficiency ratios built on it survive a shared CPU.
    """
    import tensorflow as tf

    best = {"wall": 0.0, "cpu": 0.0}
    for n in (1024, 2048, 3072):
        a = tf.random.uniform((n, n), dtype=tf.float32)
        b = tf.random.uniform((n, n), dtype=tf.float32)
        matmul = tf.function(lambda x, y: tf.reduce_sum(tf.matmul(x, y)))
        matmul(a, b).numpy()  # trace and warm up
        reps, start, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - start < seconds / 3:
            matmul(a, b).numpy()
            reps += 1
        gflop = 2 * n**3 * reps / 1e9
        best["wall"] = max(best["wall"], gflop / (time.perf_counter() - start))
        best["cpu"] = max(best["cpu"], gflop / (time.process_time() - cpu))
    return best


def sample_photos(count: int) -> list[Path]:
    """`count` flowers photos spread evenly over the sorted set (all five classes)."""
    photos = sorted(FLOWERS.rglob("*.jpg"))
    if not photos:
        sys.exit(f"error: no photos under {FLOWERS} (the benchmark needs ../shared/datasets)")
    step = max(1, len(photos) // count)
    return photos[::step][:count]


def decode_rate(paths: list[Path], size: int, batch: int) -> dict[str, float]:
    """Images per wall second and per CPU second of the tf.data read + decode + resize alone."""
    from taglens.images import image_dataset

    for _ in image_dataset(paths[:batch], size, batch):  # warm up the pipeline once
        pass
    start, cpu = time.perf_counter(), time.process_time()
    for _ in image_dataset(paths, size, batch):
        pass
    return {
        "wall": len(paths) / (time.perf_counter() - start),
        "cpu": len(paths) / (time.process_time() - cpu),
    }


def featurize_rate(paths, extractor, size: int, batch: int, jit: bool, gflop: float) -> dict:
    """Achieved rate of featurize_paths, paired batch by batch with the matmul peak.

    The CPU is shared with other jobs whose load changes by the second. So after every batch a
    burst of 2048x2048 matmuls (about a quarter of the batch's FLOPs) runs, and each batch is
    compared with the burst right after it: both saw the same load. The first batch (tracing,
    XLA compilation) and a short last batch are left out.
    """
    import tensorflow as tf

    from taglens.features import featurize_paths

    n = 2048
    a, b = tf.random.uniform((n, n)), tf.random.uniform((n, n))
    matmul = tf.function(lambda x, y: tf.reduce_sum(tf.matmul(x, y)))
    matmul(a, b).numpy()
    burst_gflop = 2 * n**3 / 1e9
    reps = max(1, round(batch * gflop / 4 / burst_gflop))
    pairs: list[tuple[int, float, float, float, float]] = []
    last = [time.perf_counter(), time.process_time()]
    start = last[0]

    def on_batch(vectors) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(reps):
            matmul(a, b).numpy()
        pairs.append((len(vectors), wall - last[0], cpu - last[1],
                      time.perf_counter() - wall, time.process_time() - cpu))  # fmt: skip
        last[:] = [time.perf_counter(), time.process_time()]

    featurize_paths(paths, extractor, image_size=size, batch_size=batch, jit_compile=jit,
                    progress=False, on_batch=on_batch)  # fmt: skip
    first_batch_s = pairs[0][1]
    steady = [p for p in pairs[1:] if p[0] == batch] or pairs
    images = sum(p[0] for p in steady)
    mm_gflop = reps * burst_gflop * len(steady)
    ratios = [(k * gflop / bw) / (reps * burst_gflop / mw) for k, bw, _, mw, _ in steady]
    return {
        "achieved_img_s": images / sum(p[1] for p in steady),
        "matmul_gflops": mm_gflop / sum(p[3] for p in steady),
        "achieved_over_possible": float(np.median(ratios)),
        "ratio_min": min(ratios), "ratio_max": max(ratios), "pairs": len(steady),
        "cpu_efficiency": (images * gflop / sum(p[2] for p in steady))
        / (mm_gflop / sum(p[4] for p in steady)),
        "first_batch_s": first_batch_s, "wall_s": time.perf_counter() - start,
    }  # fmt: skip


def run(images: int, size: int, batch: int) -> dict:
    """All measurements; returns a JSON-ready dict."""
    import psutil

    from taglens.backbones import build_feature_extractor
    from taglens.params import ModelParams

    process = psutil.Process()
    cpu0, wall0 = sum(process.cpu_times()[:2]), time.perf_counter()
    result: dict = {
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg()[0],
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
        "image_size": size,
        "batch_size": batch,
    }
    result["matmul_gflops"] = matmul_peak()["wall"]
    paths = sample_photos(images)
    decode = decode_rate(paths, size, batch)
    result["decode_img_s"], result["decode_img_per_cpu_s"] = decode["wall"], decode["cpu"]
    weights = str(MOBILENET) if MOBILENET.is_file() else None
    cases = [  # (backbone, weights, images, XLA): MobileNet under XLA is slow, so fewer
        ("vgg19", None, images, True),
        ("vgg19", None, images // 2, False),
        ("mobilenet", weights, images * 2, False),
        ("mobilenet", weights, images // 2, True),
    ]
    result["models"] = []
    for backbone, weights, count, jit in cases:
        params = ModelParams(backbone=backbone, image_size=size, weights=weights)
        extractor = build_feature_extractor(params, seed=0)
        flops = layer_flops(extractor) / 1e9
        load = os.getloadavg()[0]
        rate = featurize_rate(sample_photos(count), extractor, size, batch, jit, flops)
        row = {
            "backbone": backbone, "jit_compile": jit, "images": count,
            "gflop_per_image": flops, "loadavg": load,
            "possible_img_s": rate["matmul_gflops"] / flops, **rate,
        }  # fmt: skip
        result["models"].append(row)
        print(json.dumps(row), file=sys.stderr)
    wall = time.perf_counter() - wall0
    result["wall_s"] = wall
    result["process_cpu_share"] = (sum(process.cpu_times()[:2]) - cpu0) / wall / os.cpu_count()
    result["loadavg_end"] = os.getloadavg()[0]
    return result


def to_markdown(result: dict) -> str:
    """Tables for BENCHMARKS.md."""
    lines = [
        f"matmul peak at start {result['matmul_gflops']:.0f} GFLOP/s; decode+resize alone "
        f"{result['decode_img_s']:.0f} img/s ({result['decode_img_per_cpu_s']:.0f} per "
        f"CPU-second); oneDNN={result['onednn']}; load average "
        f"{result['loadavg_start']:.2f} -> {result['loadavg_end']:.2f} on {result['cpus']} CPUs; "
        f"this process used {100 * result['process_cpu_share']:.0f}% of the CPUs; "
        f"{result['wall_s']:.0f} s.",
        "",
        "| backbone | XLA | images | GFLOP/img | load avg | matmul GFLOP/s | possible img/s "
        "| achieved img/s | achieved/possible (median, min-max over batches) "
        "| per CPU-second | first batch s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["models"]:
        lines.append(
            f"| {row['backbone']} | {'yes' if row['jit_compile'] else 'no'} | {row['images']} "
            f"| {row['gflop_per_image']:.2f} | {row['loadavg']:.1f} | {row['matmul_gflops']:.0f} "
            f"| {row['possible_img_s']:.2f} | {row['achieved_img_s']:.2f} "
            f"| {100 * row['achieved_over_possible']:.0f}% ({100 * row['ratio_min']:.0f}-"
            f"{100 * row['ratio_max']:.0f}%, {row['pairs']} batches) "
            f"| {100 * row['cpu_efficiency']:.0f}% "
            f"| {row['first_batch_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write `featurize[-onednn-on|off].json` / `.md` under --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="VGG-19 images (MobileNet x2)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--onednn", choices=("default", "on", "off"), default="default",
        help="force TF_ENABLE_ONEDNN_OPTS (TensorFlow turns it on by itself on CPUs it knows)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    if args.onednn != "default":
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1" if args.onednn == "on" else "0"  # read at import
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    result = run(args.images, args.size, args.batch)
    from bench.results_io import save_results

    name = "featurize" if args.onednn == "default" else f"featurize-onednn-{args.onednn}"
    save_results(args.out, name, result, to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
