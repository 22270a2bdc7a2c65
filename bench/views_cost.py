"""Benchmark: what the crops view costs per image, in featurize and in prediction.

    .venv/bin/python -m bench.views_cost [--images 96] [--size 128] [--engine openvino]

MobileNet 1.0 (ImageNet weights from ../shared, as bench/quality.py) on the flowers photos,
batch 32, on one engine. Featurize: `views_model` with the image, mirror and colour (the
default views before the crops) against the same plus `crops`, through taglens's forward pass
(`features.featurize.iter_feature_batches`). Predict: the served model (`full_model.assemble`,
a 5-class head) averaging the image and mirror against image, mirror and crops, on the same
decoded batches. The contenders take turns batch by batch, so both see the same load on the
shared machine; each one's first batch (conversion, compilation) is left out. Images per
CPU-second of this process hardly depend on the other jobs' load.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT.parent / "shared" / "weights" / "mobilenet_v1_1.0_imagenet_no_top.weights.h5"
BATCH = 32


def _timed(batches: Iterator) -> Iterator[int]:
    for outputs in batches:
        first = next(iter(outputs.values())) if isinstance(outputs, dict) else outputs
        yield len(first)


def run(images: int, size: int, engine: str) -> dict:
    """Images/s and CPU ms per image of each contender (featurize and predict, +/- crops)."""
    import keras

    from bench.featurize import sample_photos
    from taglens.data.images import image_dataset
    from taglens.features.backbones import build_feature_extractor
    from taglens.features.engines import compile_forward
    from taglens.features.views import IMAGE, views_model
    from taglens.model.full_model import assemble
    from taglens.params import ModelParams

    weights = str(WEIGHTS) if WEIGHTS.is_file() else None
    extractor = build_feature_extractor(
        ModelParams(backbone="mobilenet", image_size=size, weights=weights), 42
    )
    vectors = keras.Input((int(extractor.output_shape[-1]),))
    head = keras.Model(vectors, keras.layers.Dense(5, activation="softmax")(vectors))
    models = {
        "featurize: image, mirror, colour": views_model(extractor, (IMAGE, "flip", "colour"), size),
        "featurize: + crops": views_model(extractor, (IMAGE, "flip", "colour", "crops"), size),
        "predict: image + mirror": assemble(extractor, head, flip=True, colour=True),
        "predict: image + mirror + crops": assemble(
            extractor, head, flip=True, colour=True, crops=True
        ),
    }
    forwards = {
        name: compile_forward(model, engine, jit_compile=False, batch_size=BATCH)
        for name, model in models.items()
    }
    paths = sample_photos(images)
    decoded = [np.asarray(batch) for batch in image_dataset(paths, size, BATCH)]
    for forward in forwards.values():  # conversion and compilation, left out
        forward(decoded[0])
    seconds = {name: 0.0 for name in forwards}
    cpu = {name: 0.0 for name in forwards}
    counted = 0
    for turn, batch in enumerate(decoded):
        names = list(forwards)
        for name in names[turn % len(names) :] + names[: turn % len(names)]:
            start, start_cpu = time.perf_counter(), time.process_time()
            forwards[name](batch)
            seconds[name] += time.perf_counter() - start
            cpu[name] += time.process_time() - start_cpu
        counted += len(batch)
    rows = {
        name: {
            "images_per_s": counted / seconds[name],
            "cpu_ms_per_image": 1000 * cpu[name] / counted,
        }
        for name in forwards
    }
    return {
        "command": "python -m bench.views_cost",
        "backbone": f"mobilenet 1.0 ({'ImageNet' if weights else 'random weights'})",
        "image_size": size,
        "engine": engine,
        "batch": BATCH,
        "images": counted,
        "load_average_1m": round(os.getloadavg()[0], 1),
        "rows": rows,
    }


def to_markdown(result: dict) -> str:
    """One row per contender, and each crops contender's cost against its plain one."""
    rows = result["rows"]
    lines = [
        "| forward pass | images/s (wall) | CPU ms per image | CPU cost vs without crops |",
        "|---|---|---|---|",
    ]
    plain = {"featurize": "featurize: image, mirror, colour", "predict": "predict: image + mirror"}
    # each plain contender, then its crops one (the JSON file keeps its keys sorted)
    order = sorted(rows, key=lambda name: (name.split(":")[0], name not in plain.values()))
    for name in order:
        row = rows[name]
        base = rows[plain[name.split(":")[0]]]
        ratio = row["cpu_ms_per_image"] / base["cpu_ms_per_image"]
        lines.append(
            f"| {name} | {row['images_per_s']:.1f} | {row['cpu_ms_per_image']:.1f} | {ratio:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command line: write bench/results/views_cost.{json,md}."""
    from bench.results_io import save_results

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96, help="photos each contender runs")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--engine", default="openvino")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    result = run(args.images, args.size, args.engine)
    save_results(args.out, "views_cost", result, to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
