"""Featurize benchmark: taglens's featurize against the engines a user would otherwise pick.

One process, one network (VGG-19 without its top, 224 px, random weights drawn from one seed),
the same flowers photos through the same tf.data decode pipeline, batch 16:
- taglens's featurize (`taglens.features.featurize_paths`) with each `featurize.engine`;
- a plain loop over the decoded batches with each engine as its documentation shows it: a
  `tf.function` (as featurize ran before engines existed), OpenVINO converted from the Keras
  model and compiled with `PERFORMANCE_HINT: LATENCY` in float32, and ONNX Runtime on the
  tf2onnx conversion.
Every contender runs once per round, rounds repeat interleaved (the machine is shared, so all
see the same load), and each keeps its best round. A round's rate is steady state: the first
batch (tracing, compiling) is left out; conversion and compile times are reported apart.

    python -m bench.featurize --images 48 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FLOWERS = ROOT.parent / "shared" / "datasets" / "flowers"


def sample_photos(count: int) -> list[Path]:
    """`count` flowers photos spread evenly over the sorted set (all five classes)."""
    photos = sorted(FLOWERS.rglob("*.jpg"))
    if not photos:
        sys.exit(f"error: no photos under {FLOWERS} (the benchmark needs ../shared/datasets)")
    step = max(1, len(photos) // count)
    return photos[::step][:count]


def steady_rate(batch: int, stamps: list[float]) -> float:
    """Images per second between the first and the last batch (the first batch left out)."""
    if len(stamps) < 2:
        return 0.0
    return batch * (len(stamps) - 1) / (stamps[-1] - stamps[0])


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

    from taglens.engines import _no_usage_reports, _traced

    _no_usage_reports()
    converted = ov.convert_model(_traced(model).get_concrete_function())
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    compiled = ov.Core().compile_model(converted, "CPU", config)
    return lambda images: np.array(compiled(np.asarray(images))[0])


def plain_onnxruntime(model) -> Callable:
    """tf2onnx's conversion of the traced model, run by a default ONNX Runtime session."""
    import onnxruntime as ort
    import tf2onnx

    from taglens.engines import ONNX_OPSET, _traced

    traced = _traced(model)
    proto, _ = tf2onnx.convert.from_function(traced, input_signature=traced.input_signature,
                                             opset=ONNX_OPSET)  # fmt: skip
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: np.asarray(images)})[0]


PLAIN = {"tensorflow": plain_tensorflow, "openvino": plain_openvino,
         "onnxruntime": plain_onnxruntime}  # fmt: skip


def bf16_relative_difference(model, images: np.ndarray) -> float:
    """How far OpenVINO's default precision on this CPU lands from the Keras vectors."""
    import openvino as ov

    from taglens.engines import _traced

    converted = ov.convert_model(_traced(model).get_concrete_function())
    got = ov.Core().compile_model(converted, "CPU")(images)[0]
    return relative_difference(got, np.asarray(model(images, training=False)))


def relative_difference(got: np.ndarray, want: np.ndarray) -> float:
    """The largest row-wise |got - want| / |want|."""
    got, want = np.asarray(got, "float64"), np.asarray(want, "float64")
    return float(np.max(np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)))


def time_plain(forward: Callable, paths, size: int, batch: int) -> tuple[float, np.ndarray]:
    """Steady img/s of a plain loop over the shared decode pipeline, and its vectors."""
    from taglens.images import image_dataset

    stamps, chunks = [], []
    for images in image_dataset(paths, size, batch):
        chunks.append(forward(images))
        stamps.append(time.perf_counter())
    return steady_rate(batch, stamps), np.concatenate(chunks)


def time_taglens(model, engine: str, paths, size: int, batch: int) -> tuple[float, float]:
    """Steady img/s of featurize_paths on `engine`, and its first batch's seconds.

    The first batch includes converting and compiling the model and tracing the pipeline.
    """
    from taglens.features import featurize_paths

    start = time.perf_counter()
    stamps: list[float] = []
    featurize_paths(paths, model, image_size=size, batch_size=batch, progress=False,
                    engine=engine, on_batch=lambda _: stamps.append(time.perf_counter()))
    return steady_rate(batch, stamps), stamps[0] - start


def run(images: int, size: int, batch: int, repeats: int, engines: list[str]) -> dict:
    """All measurements; returns a JSON-ready dict."""
    from taglens.backbones import build_feature_extractor
    from taglens.images import load_batch
    from taglens.params import ModelParams, load_params

    default = load_params(ROOT / "params.yaml").featurize.engine
    model = build_feature_extractor(ModelParams(backbone="vgg19", image_size=size,
                                                weights=None), seed=0)  # fmt: skip
    paths = sample_photos(images)
    reference = np.asarray(model.predict(load_batch(paths[:batch], size), verbose=0))
    result: dict = {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()[0],
                    "backbone": "vgg19", "image_size": size, "batch_size": batch,
                    "images": len(paths), "repeats": repeats, "default_engine": default}
    plain, convert_s = {}, {}
    for engine in engines:
        start = time.perf_counter()
        plain[engine] = PLAIN[engine](model)
        convert_s[engine] = time.perf_counter() - start
    rows = {f"taglens/{e}": [] for e in engines} | {f"plain/{e}": [] for e in engines}
    first_batch, difference = {e: [] for e in engines}, {}
    for round_ in range(repeats):  # interleaved: every contender once per round
        for engine in engines:
            rate, first = time_taglens(model, engine, paths, size, batch)
            rows[f"taglens/{engine}"].append(rate)
            first_batch[engine].append(first)
            rate, vectors = time_plain(plain[engine], paths, size, batch)
            rows[f"plain/{engine}"].append(rate)
            difference[engine] = relative_difference(vectors[:batch], reference)
        print(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in rows.items()),
              file=sys.stderr, flush=True)  # fmt: skip
    result["rounds"] = rows
    result["best_img_s"] = {name: max(rates) for name, rates in rows.items()}
    result["taglens_first_batch_s"] = {e: min(v) for e, v in first_batch.items()}
    result["plain_convert_s"] = convert_s
    result["relative_difference"] = difference
    if "openvino" in engines:
        result["bf16_relative_difference"] = bf16_relative_difference(
            model, load_batch(paths[:batch], size).numpy())
    best = result["best_img_s"]
    others = {name: rate for name, rate in best.items() if name.startswith("plain/")}
    best_other = max(others, key=others.get)
    result["best_other"] = best_other
    result["taglens_over_best_other"] = best[f"taglens/{default}"] / others[best_other]
    result["loadavg_end"] = os.getloadavg()[0]
    return result


def to_markdown(r: dict) -> str:
    """The table for BENCHMARKS.md."""
    best, default = r["best_img_s"], r["default_engine"]
    lines = [
        f"VGG-19 no top, {r['image_size']} px, batch {r['batch_size']}, random weights, "
        f"{r['images']} flowers photos; best of {r['repeats']} interleaved rounds, steady "
        f"state (first batch left out). Load average {r['loadavg_start']:.1f} -> "
        f"{r['loadavg_end']:.1f} on {r['cpus']} CPUs (shared machine).",
        "",
        "| contender | img/s (best) | every round | vs best plain engine | max relative "
        "difference to Keras |",
        "|---|---|---|---|---|",
    ]
    top = best[r["best_other"]]
    for name, rates in r["rounds"].items():
        kind, engine = name.split("/")
        label = (f"taglens featurize, `featurize.engine: {engine}`"
                 + (" (default)" if engine == default else "")) if kind == "taglens" else (
                 f"plain {engine} loop")  # fmt: skip
        diff = r["relative_difference"][engine] if kind == "plain" else None
        lines.append(
            f"| {label} | {best[name]:.2f} | {', '.join(f'{x:.2f}' for x in rates)} "
            f"| {best[name] / top:.2f} | {'' if diff is None else f'{diff:.1e}'} |"
        )
    lines += [
        "",
        f"taglens featurize (default engine {default}) / best plain engine ({r['best_other']}): "
        f"**{r['taglens_over_best_other']:.2f}**.",
        "Conversion + compile of the plain engines (s): "
        + ", ".join(f"{e} {s:.1f}" for e, s in r["plain_convert_s"].items())
        + "; taglens's first batch (conversion, compiling, tracing included, s): "
        + ", ".join(f"{e} {s:.1f}" for e, s in r["taglens_first_batch_s"].items()) + ".",
    ]
    if "bf16_relative_difference" in r:
        lines.append(f"OpenVINO's default precision on this CPU (bfloat16) differs from Keras by "
                     f"{r['bf16_relative_difference']:.1e} relative, so every OpenVINO row here "
                     "asks for float32.")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write `featurize.json` / `.md` under --out."""
    from taglens.engines import ENGINES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48, help="photos per round and contender")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    if args.images < 2 * args.batch:
        parser.error("--images must be at least two batches (the first one is left out)")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    result = run(args.images, args.size, args.batch, args.repeats, args.engines)
    from bench.results_io import save_results

    save_results(args.out, "featurize", result, to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
