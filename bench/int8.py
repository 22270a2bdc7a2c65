"""INT8 benchmark: `featurize.engine: openvino-int8` against FP32 OpenVINO, speed and top-1.

Two parts, each a few minutes on the shared 2-core machine:

- `--part speed`: featurize's own pipeline (`iter_feature_batches` on the views model params.yaml
  asks for: the image, its mirror in the same 2B batch, the colour view) on `openvino` (FP32)
  and `openvino-int8`, taking turns batch by batch as in bench/featurize.py, on MobileNet 1.0
  (the shared ImageNet weights) and VGG-19 (random weights: speed only), both at 224 px. The INT8
  models come from `taglens.features.int8_backbone.prepare`, the featurize stage's own
  quantization, on the flowers photos (calibration and accuracy check on clean's split; VGG-19
  with `--vgg-images` photos each, as its random weights have no accuracy to keep).
- `--part accuracy`: every flowers photo featurized in FP32 and in INT8 (MobileNet 1.0 ImageNet
  weights, `--size` px, the image view only), the split clean makes (`taglens.features.split`,
  params.yaml's fractions and seed), the same head on both (the train stage's logistic-regression
  reference, `taglens.training.baseline.fit_baseline`) fitted on the training photos: test and
  validation top-1, and how close INT8 vectors are to FP32's (cosine).

    python -m bench.int8 --part speed
    python -m bench.int8 --part accuracy
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from pathlib import Path

import numpy as np

from bench.featurize import FLOWERS, MOBILENET, ROOT, sample_photos, take_turns

MOBILENET_IDENTITY = "file-mobilenet_v1_1.0"  # the cache key names the shared weights file


def flowers_posts(root: Path = FLOWERS, per_class: int | None = None) -> list:
    """The flowers photos as posts (label: their folder), as the folder source would give them.

    `per_class` keeps the first that many photos of each folder (None: every photo).
    """
    from taglens.data.posts import Post

    posts = []
    for folder in sorted(path for path in root.iterdir() if path.is_dir()):
        for photo in sorted(folder.glob("*.jpg"))[:per_class]:
            sha = hashlib.sha256(photo.read_bytes()).hexdigest()
            posts.append(
                Post(
                    id=sha[:16],
                    label=folder.name,
                    image=f"{folder.name}/{photo.name}",
                    sha256=sha,
                    width=128,
                    height=128,
                    source="folder",
                )
            )
    return posts


def _params(backbone: str, size: int, views: list[str], overrides: dict | None = None):
    from taglens.params import load_params

    weights = str(MOBILENET) if backbone == "mobilenet" else None
    return load_params(
        ROOT / "params.yaml",
        {
            "model.backbone": backbone,
            "model.image_size": size,
            "model.weights": weights,
            "featurize.engine": "openvino-int8",
            "featurize.views": views,
            **(overrides or {}),
        },
    )


def _backbone(params, posts):
    """The featurize stage's INT8 decision and views model for `params` (cached after a run)."""
    from taglens.features import int8_backbone
    from taglens.features.backbones import weights_identity

    identity = MOBILENET_IDENTITY if params.model.weights else weights_identity(params.model, 0)
    start = time.perf_counter()
    int8 = int8_backbone.prepare(
        params.model,
        params.featurize,
        params.clean,
        seed=0,
        weights_identity=identity,
        posts=posts,
        raw=FLOWERS,
    )
    seconds = time.perf_counter() - start
    return int8, int8.model_factory(params.model, 0)(()), seconds


def cosines(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    got, want = np.asarray(got, "float64"), np.asarray(want, "float64")
    return (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)


def speed_one(backbone: str, images: int, batch: int, posts: list, overrides: dict) -> dict:
    """FP32 and INT8 featurize rates on one backbone at 224 px, taking turns batch by batch."""
    from taglens.features.featurize import iter_feature_batches
    from taglens.params import load_params

    views = list(load_params(ROOT / "params.yaml").featurize.views)
    params = _params(backbone, 224, views, overrides)
    int8, model, quantize_s = _backbone(params, posts)
    if int8.decision.precision != "int8":
        raise SystemExit(f"error: {backbone}: INT8 was not kept ({int8.decision.reason})")
    paths = sample_photos(images)
    contenders = {
        engine: iter_feature_batches(
            paths, model, image_size=224, batch_size=batch, jit_compile=False, engine=engine
        )
        for engine in ("openvino", "openvino-int8")
    }
    seconds, cpu, first = take_turns(contenders)  # first: each one's first batch (a dict here)
    steady = {name: times[1:] for name, times in seconds.items()}
    median = {name: batch / float(np.median(times)) for name, times in steady.items()}
    per_cpu = {name: batch / float(np.median(times[1:])) for name, times in cpu.items()}
    fp32, int8_out = first["openvino"].item(), first["openvino-int8"].item()  # 0-d object arrays
    return {
        "backbone": backbone,
        "weights": "imagenet" if params.model.weights else "random",
        "image_size": 224,
        "batch_size": batch,
        "images": len(paths),
        "views": views,
        "batches": len(seconds["openvino"]),
        "median_img_s": median,
        "img_per_cpu_s": per_cpu,
        "int8_over_fp32_median": median["openvino-int8"] / median["openvino"],
        "int8_over_fp32_cpu": per_cpu["openvino-int8"] / per_cpu["openvino"],
        "cosine_mean": float(cosines(int8_out["vectors"], fp32["vectors"]).mean()),
        "quantize_seconds": quantize_s,
        "decision": int8.decision.__dict__,
        "int8_settings": params.featurize.int8.model_dump(),
    }


def int8_settings(
    calibration: int | None,
    validation: int | None,
    iterations: int | None,
    max_drop: float | None = None,
) -> dict:
    """`featurize.int8.*` overrides (None keeps params.yaml's value)."""
    given = {
        "calibration_images": calibration,
        "validation_images": validation,
        "max_iterations": iterations,
        "max_drop": max_drop,
    }
    return {f"featurize.int8.{key}": value for key, value in given.items() if value is not None}


def speed(images: int, batch: int, vgg_images: int, settings: dict) -> dict:
    """Both backbones, MobileNet first."""
    posts = flowers_posts()
    # random weights have no accuracy to keep: VGG-19 is quantized whole, like MobileNet here
    small = {**settings, **int8_settings(vgg_images, vgg_images, 1)}
    result = {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()[0]}
    result["mobilenet"] = speed_one("mobilenet", images, batch, posts, settings)
    result["vgg19"] = speed_one("vgg19", max(2 * batch, images // 4), batch, posts, small)
    result["loadavg_end"] = os.getloadavg()[0]
    return result


def accuracy(size: int, settings: dict) -> dict:
    """Test top-1 of the same head on FP32 and on INT8 vectors of every flowers photo."""
    from taglens.features.split import content_split
    from taglens.training.baseline import fit_baseline

    posts = flowers_posts()
    params = _params("mobilenet", size, [], settings)
    int8, model, quantize_s = _backbone(params, posts)
    if int8.decision.precision != "int8":
        raise SystemExit(f"error: INT8 was not kept ({int8.decision.reason})")
    result = {
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg()[0],
        "image_size": size,
        "images": len(posts),
        "quantize_seconds": quantize_s,
        "decision": int8.decision.__dict__,
        "int8_settings": params.featurize.int8.model_dump(),
    }
    splits = content_split(
        [post.sha256 for post in posts],
        [post.owner for post in posts],
        val_fraction=params.clean.val_fraction,
        test_fraction=params.clean.test_fraction,
        seed=params.base.seed,
    )
    classes = sorted({post.label for post in posts})
    labels = np.array([classes.index(post.label) for post in posts])
    paths = [FLOWERS / post.image for post in posts]
    vectors, rates = {}, {}
    for engine in ("openvino", "openvino-int8"):
        start = time.perf_counter()
        vectors[engine] = image_vectors(paths, model, size, engine)
        rates[engine] = len(paths) / (time.perf_counter() - start)
    scores = {}
    for engine, matrix in vectors.items():
        head = fit_baseline(
            matrix[splits == "train"],
            labels[splits == "train"],
            params.base.seed,
            params.train.class_weight,
        )
        scores[engine] = {
            side: float(head.score(matrix[splits == side], labels[splits == side]))
            for side in ("val", "test")
        }
    cos = cosines(vectors["openvino-int8"], vectors["openvino"])
    result.update(
        {
            "n": {side: int((splits == side).sum()) for side in ("train", "val", "test")},
            "top1": scores,
            "img_s_one_pass": rates,
            "test_difference_points": 100
            * (scores["openvino-int8"]["test"] - scores["openvino"]["test"]),
            "cosine_mean": float(cos.mean()),
            "cosine_p05": float(np.quantile(cos, 0.05)),
            "cosine_min": float(cos.min()),
            "loadavg_end": os.getloadavg()[0],
        }
    )
    return result


def image_vectors(paths: list[Path], model, size: int, engine: str) -> np.ndarray:
    """The image's own vectors of a views model, every photo, on `engine`."""
    from taglens.features.featurize import iter_feature_batches

    return np.concatenate(
        [
            np.asarray(out["vectors"])
            for out in iter_feature_batches(
                paths, model, image_size=size, batch_size=32, jit_compile=False, engine=engine
            )
        ]
    )


def speed_markdown(r: dict) -> str:
    """The speed table for BENCHMARKS.md."""
    lines = [
        f"Featurize's views model (image + mirror in one 2B batch, colour), batch "
        f"{r['mobilenet']['batch_size']}, 224 px, flowers photos, FP32 and INT8 taking turns "
        f"batch by batch (first batch left out). Load average {r['loadavg_start']:.1f} -> "
        f"{r['loadavg_end']:.1f} on {r['cpus']} CPUs (shared machine).",
        "",
        "| backbone | weights | photos | FP32 img/s | INT8 img/s | INT8 / FP32 (median batch) "
        "| INT8 / FP32 (per CPU-second) | cosine INT8 vs FP32 (mean) | calibration photos "
        "| quantizing s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("mobilenet", "vgg19"):
        b = r[name]
        lines.append(
            f"| {name} | {b['weights']} | {b['images']} | {b['median_img_s']['openvino']:.2f} "
            f"| {b['median_img_s']['openvino-int8']:.2f} | **{b['int8_over_fp32_median']:.2f}** "
            f"| {b['int8_over_fp32_cpu']:.2f} | {b['cosine_mean']:.3f} "
            f"| {b['decision']['calibration_images']} | {b['quantize_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def accuracy_markdown(r: dict) -> str:
    """The top-1 table for BENCHMARKS.md."""
    fp32, int8 = r["top1"]["openvino"], r["top1"]["openvino-int8"]
    d = r["decision"]
    lines = [
        f"MobileNet 1.0 (ImageNet weights) at {r['image_size']} px, all {r['images']} flowers "
        f"photos, clean's split ({r['n']['train']} train / {r['n']['val']} val / "
        f"{r['n']['test']} test), the train stage's logistic-regression reference as the head on "
        f"both. Load average {r['loadavg_start']:.1f} -> {r['loadavg_end']:.1f} on "
        f"{r['cpus']} CPUs.",
        "",
        "| vectors | val top-1 | test top-1 | featurize img/s (one pass, image only) |",
        "|---|---|---|---|",
        f"| FP32 (`openvino`) | {fp32['val']:.3f} | {fp32['test']:.3f} "
        f"| {r['img_s_one_pass']['openvino']:.1f} |",
        f"| INT8 (`openvino-int8`) | {int8['val']:.3f} | {int8['test']:.3f} "
        f"| {r['img_s_one_pass']['openvino-int8']:.1f} |",
        "",
        f"Test top-1 INT8 minus FP32: **{r['test_difference_points']:+.1f} points**. INT8 vectors "
        f"against FP32's: cosine {r['cosine_mean']:.3f} on average, {r['cosine_p05']:.3f} at the "
        f"5th percentile, {r['cosine_min']:.3f} at worst. Accuracy control at featurize: "
        f"{d['reason']} ({d['calibration_images']} calibration photos; quantizing took "
        f"{r['quantize_seconds']:.0f} s, once: the decision is cached).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run one part and write `int8-speed` or `int8-accuracy` (.json / .md) under --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("speed", "accuracy"), required=True)
    parser.add_argument(
        "--images", type=int, default=192, help="MobileNet photos per precision (VGG-19: a quarter)"
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument(
        "--vgg-images",
        type=int,
        default=32,
        help="calibration and validation photos for VGG-19's INT8 model",
    )
    parser.add_argument("--size", type=int, default=128, help="image side of the accuracy part")
    parser.add_argument("--calibration", type=int, help="featurize.int8.calibration_images")
    parser.add_argument("--validation", type=int, help="featurize.int8.validation_images")
    parser.add_argument("--max-iterations", type=int, help="featurize.int8.max_iterations")
    parser.add_argument("--max-drop", type=float, help="featurize.int8.max_drop")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from bench.results_io import save_results

    if args.part == "speed":
        settings = int8_settings(
            args.calibration, args.validation, args.max_iterations, args.max_drop
        )
        result = speed(args.images, args.batch, args.vgg_images, settings)
        save_results(args.out, "int8-speed", result, speed_markdown(result))
    else:
        settings = int8_settings(
            args.calibration, args.validation, args.max_iterations, args.max_drop
        )
        result = accuracy(args.size, settings)
        save_results(args.out, "int8-accuracy", result, accuracy_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
