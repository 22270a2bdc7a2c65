"""Featurize benchmark: taglens's featurize against the engines a user would otherwise pick.

One process, one network (VGG-19 without its top, 224 px, random weights drawn from one seed),
the same flowers photos through the same tf.data decode pipeline (`taglens.data.images`), batch 16:
- taglens's featurize pipeline (`features.featurize.iter_feature_batches`, what `featurize_paths`
  and the featurize stage run) on `featurize.engine` (the default, or each of `--taglens`);
- a plain loop over the decoded batches with each engine as its documentation shows it: a
  `tf.function` (as featurize ran before it had engines), OpenVINO converted from the Keras
  model and compiled with `PERFORMANCE_HINT: LATENCY` in float32, and ONNX Runtime on the
  tf2onnx conversion.
The machine is shared and its load changes within seconds, so the contenders take turns batch by
batch (one batch each, in a rotating order, then the next batch): every contender sees the same
load. Each contender's first batch (converting, compiling, tracing) is left out and reported
apart; the table gives the median and the best batch, and images per CPU-second of this process
(which hardly depends on the other jobs' load).

    python -m bench.featurize --images 112
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FLOWERS = ROOT.parent / "shared" / "datasets" / "flowers"
MOBILENET = ROOT.parent / "shared" / "weights" / "mobilenet_v1_1.0_imagenet_no_top.weights.h5"


def sample_photos(count: int) -> list[Path]:
    """`count` flowers photos spread evenly over the sorted set (all five classes)."""
    photos = sorted(FLOWERS.rglob("*.jpg"))
    if not photos:
        sys.exit(f"error: no photos under {FLOWERS} (the benchmark needs ../shared/datasets)")
    step = max(1, len(photos) // count)
    return photos[::step][:count]


def plain_tensorflow(model) -> Callable:
    """A `tf.function` of the Keras model, as featurize ran it before it had engines."""
    import tensorflow as tf

    forward = tf.function(lambda images: model(images, training=False), reduce_retracing=True)
    return lambda images: forward(images).numpy()


def plain_openvino(model) -> Callable:
    """OpenVINO as its guide shows it: convert the model, compile for the CPU (latency hint).

    Float32 is asked for: on CPUs with bfloat16 OpenVINO defaults to it, and the vectors then
    differ from TensorFlow's by about 1e-2 (see `bf16_relative_difference` in the results).
    """
    import openvino as ov

    from taglens.features.engines import no_usage_reports, traced

    no_usage_reports()
    converted = ov.convert_model(traced(model).get_concrete_function())
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    compiled = ov.Core().compile_model(converted, "CPU", config)
    return lambda images: np.array(compiled(np.asarray(images))[0])


def plain_onnxruntime(model) -> Callable:
    """tf2onnx's conversion of the traced model, run by a default ONNX Runtime session."""
    import onnxruntime as ort
    import tf2onnx

    from taglens.features.engines import ONNX_OPSET, traced

    forward = traced(model)
    proto, _ = tf2onnx.convert.from_function(
        forward, input_signature=forward.input_signature, opset=ONNX_OPSET
    )
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: np.asarray(images)})[0]


PLAIN = {
    "tensorflow": plain_tensorflow,
    "openvino": plain_openvino,
    "onnxruntime": plain_onnxruntime,
}


def bf16_relative_difference(model, images: np.ndarray) -> float:
    """How far OpenVINO's default precision on this CPU lands from the Keras vectors."""
    import openvino as ov

    from taglens.features.engines import traced

    converted = ov.convert_model(traced(model).get_concrete_function())
    got = ov.Core().compile_model(converted, "CPU")(images)[0]
    return relative_difference(got, np.asarray(model(images, training=False)))


def relative_difference(got: np.ndarray, want: np.ndarray) -> float:
    """The largest row-wise |got - want| / |want|."""
    got, want = np.asarray(got, "float64"), np.asarray(want, "float64")
    return float(np.max(np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)))


def plain_batches(forward: Callable, paths, size: int, batch: int) -> Iterator[np.ndarray]:
    """A plain loop over the shared decode pipeline, one batch's vectors per step."""
    from taglens.data.images import image_dataset

    for images in image_dataset(paths, size, batch):
        yield forward(images)


def take_turns(contenders: dict[str, Iterator[np.ndarray]]) -> tuple[dict, dict, dict]:
    """Step every contender one batch at a time in a rotating order until all are done.

    Returns each contender's wall seconds per batch, this process's CPU seconds per batch (all
    threads; it hardly depends on what else runs on the machine) and its first batch's vectors.
    """
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    cpu: dict[str, list[float]] = {name: [] for name in contenders}
    first: dict[str, np.ndarray] = {}
    names, turn = list(contenders), 0
    while names:
        order = names[turn % len(names) :] + names[: turn % len(names)]
        for name in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            vectors = next(contenders[name], None)
            if vectors is None:
                names.remove(name)
                continue
            seconds[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            first.setdefault(name, np.asarray(vectors))
        turn += 1
    return seconds, cpu, first


def run(
    images: int,
    size: int,
    batch: int,
    engines: list[str],
    taglens: list[str],
    backbone: str = "vgg19",
) -> dict:
    """All measurements; returns a JSON-ready dict."""
    from taglens.data.images import load_batch
    from taglens.features.backbones import build_feature_extractor
    from taglens.features.featurize import iter_feature_batches
    from taglens.params import ModelParams, load_params

    default = load_params(ROOT / "params.yaml").featurize.engine
    weights = str(MOBILENET) if backbone == "mobilenet" and MOBILENET.is_file() else None
    model = build_feature_extractor(
        ModelParams(backbone=backbone, image_size=size, weights=weights), seed=0
    )
    paths = sample_photos(images)
    reference = np.asarray(model.predict(load_batch(paths[:batch], size), verbose=0))
    result: dict = {
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg()[0],
        "backbone": backbone,
        "weights": weights or "random",
        "image_size": size,
        "batch_size": batch,
        "images": len(paths),
        "default_engine": default,
    }
    contenders: dict[str, Iterator[np.ndarray]] = {}
    for engine in dict.fromkeys([default, *taglens]):
        contenders[f"taglens/{engine}"] = iter_feature_batches(
            paths, model, image_size=size, batch_size=batch, jit_compile=False, engine=engine
        )
    convert_s = {}
    for engine in engines:
        start = time.perf_counter()
        forward = PLAIN[engine](model)
        convert_s[engine] = time.perf_counter() - start
        contenders[f"plain/{engine}"] = plain_batches(forward, paths, size, batch)
    seconds, cpu, first = take_turns(contenders)
    result["batch_seconds"], result["batch_cpu_seconds"] = seconds, cpu
    result["img_per_cpu_s"] = {
        name: batch / float(np.median(times[1:])) for name, times in cpu.items()
    }
    steady = {name: times[1:] for name, times in seconds.items()}
    result["best_img_s"] = {name: batch / min(times) for name, times in steady.items()}
    result["median_img_s"] = {
        name: batch / float(np.median(times)) for name, times in steady.items()
    }
    result["first_batch_s"] = {name: times[0] for name, times in seconds.items()}
    result["plain_convert_s"] = convert_s
    result["relative_difference"] = {
        name: relative_difference(vectors, reference) for name, vectors in first.items()
    }
    if "openvino" in engines:
        result["bf16_relative_difference"] = bf16_relative_difference(
            model, load_batch(paths[:batch], size).numpy()
        )
    ours = f"taglens/{default}"
    for stat, key in (("best", "best_img_s"), ("median", "median_img_s"), ("cpu", "img_per_cpu_s")):
        rates = result[key]
        others = {name: rate for name, rate in rates.items() if name.startswith("plain/")}
        best_other = max(others, key=others.get)
        result[f"{stat}_other"] = best_other
        result[f"taglens_over_best_other_{stat}"] = rates[ours] / others[best_other]
    result["loadavg_end"] = os.getloadavg()[0]
    return result


def _row_order(name: str, default: str) -> tuple:
    """Rows: taglens on the default engine, on the others, then the plain loops (PLAIN order).

    Saved results keep their keys sorted, so the order is set here, not by the run.
    """
    kind, engine = name.split("/")
    order = list(PLAIN).index(engine) if engine in PLAIN else len(PLAIN)
    return (kind != "taglens", kind == "taglens" and engine != default, order)


def to_markdown(r: dict) -> str:
    """The table for BENCHMARKS.md."""
    default, batches = r["default_engine"], len(next(iter(r["batch_seconds"].values())))
    lines = [
        f"{r['backbone']} no top, {r['image_size']} px, batch {r['batch_size']}, "
        f"{'random' if r.get('weights', 'random') == 'random' else 'ImageNet'} weights, "
        f"{r['images']} flowers photos ({batches} batches per contender, taken in turns; the "
        f"first left out). Load average {r['loadavg_start']:.1f} -> {r['loadavg_end']:.1f} on "
        f"{r['cpus']} CPUs (shared machine).",
        "",
        "| contender | img/s, median batch | vs best plain | img/s, best batch | vs best plain "
        "| img per CPU-second (median) | vs best plain | first batch s "
        "| max relative difference to Keras |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    converted = r["plain_convert_s"]
    top_best = r["best_img_s"][r["best_other"]]
    top_median = r["median_img_s"][r["median_other"]]
    top_cpu = r["img_per_cpu_s"][r["cpu_other"]]
    for name in sorted(r["batch_seconds"], key=lambda name: _row_order(name, default)):
        kind, engine = name.split("/")
        if kind == "taglens":
            label = f"taglens featurize, `featurize.engine: {engine}`"
            label += " (default)" if engine == default else ""
        else:
            label = f"plain {engine} loop"
        best, median = r["best_img_s"][name], r["median_img_s"][name]
        per_cpu = r["img_per_cpu_s"][name]
        lines.append(
            f"| {label} | {median:.2f} | {median / top_median:.2f} | {best:.2f} "
            f"| {best / top_best:.2f} | {per_cpu:.2f} | {per_cpu / top_cpu:.2f} "
            f"| {r['first_batch_s'][name]:.1f} | {r['relative_difference'][name]:.1e} |"
        )
    lines += [
        "",
        f"taglens featurize (default engine {default}) over the best plain engine: "
        f"**{r['taglens_over_best_other_median']:.2f}** by median batch ({r['median_other']}), "
        f"{r['taglens_over_best_other_best']:.2f} by best batch ({r['best_other']}), "
        f"{r['taglens_over_best_other_cpu']:.2f} per CPU-second ({r['cpu_other']}).",
        "Converting + compiling for the plain loops (s): "
        + ", ".join(f"{e} {r['plain_convert_s'][e]:.1f}" for e in PLAIN if e in converted)
        + "; taglens converts inside its first batch.",
    ]
    if "bf16_relative_difference" in r:
        lines.append(
            f"OpenVINO's default precision on this CPU (bfloat16) differs from Keras by "
            f"{r['bf16_relative_difference']:.1e} relative, so every OpenVINO row here "
            "asks for float32."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write `featurize.json` / `.md` under --out."""
    from taglens.features.engines import FP32_ENGINES as ENGINES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=112, help="photos each contender featurizes")
    parser.add_argument("--stem", help="results file name (default featurize[-BACKBONE])")
    parser.add_argument(
        "--backbone",
        choices=("vgg19", "mobilenet"),
        default="vgg19",
        help="mobilenet uses the shared ImageNet weights when present",
    )
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument(
        "--engines",
        nargs="+",
        choices=ENGINES,
        default=list(ENGINES),
        help="engines run as plain loops",
    )
    parser.add_argument(
        "--taglens",
        nargs="*",
        choices=ENGINES,
        default=[],
        help="engines taglens's featurize runs on besides the default",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    if args.images < 2 * args.batch:
        parser.error("--images must be at least two batches (the first one is left out)")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    result = run(args.images, args.size, args.batch, args.engines, args.taglens, args.backbone)
    from bench.results_io import save_results

    stem = args.stem or ("featurize" if args.backbone == "vgg19" else f"featurize-{args.backbone}")
    save_results(args.out, stem, result, to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
