"""Write BENCHMARKS.md from bench/results/*.json: `python -m bench.render`.

BENCHMARKS.md is an output, like a results file: every table and every figure in its prose is
written here from the JSON a benchmark saved, beside the command that wrote that JSON.
`tests/unit/test_benchmarks_doc.py` renders into a temporary file and fails when the committed
BENCHMARKS.md differs from it by one byte, so a re-measured benchmark and its document never
drift apart: re-run the benchmark, then `python -m bench.render`, and commit both.

Adding a section (a nightly-scoring bench, a quality table for hashtag rankers, ...):

1. The benchmark saves its numbers with `bench.results_io.save_results(out, stem, result,
   table)` into `bench/results/<stem>.json` (keep `table` a function of `result` alone, named
   `to_markdown`, so this module can call it on the saved JSON).
2. Here, one function `def my_section(results: Results) -> str` returns the markdown under the
   section's heading: `results.table(stem, command, markdown)` for each table (it names the
   command and the file), and the prose around it as an f-string whose figures come from
   `results.load(stem)`, never typed in.
3. One line in `SECTIONS` (document order): `Section("Heading (`bench/my.py`)", my_section)`.
4. `python -m bench.render`; commit BENCHMARKS.md with the results file.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOCUMENT = ROOT / "BENCHMARKS.md"
PYTHON = ".venv/bin/python"
WIDTH = 100  # the house line length


class Results:
    """The results files of one folder, read on demand, and the lines that cite them."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def load(self, stem: str) -> dict[str, Any]:
        """The JSON a benchmark saved as `<stem>.json`.

        Raises:
            FileNotFoundError: the file is missing (the message names the command's stem).
        """
        path = self.folder / f"{stem}.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: run the benchmark that writes it, then python -m bench.render"
            )
        return json.loads(path.read_text())

    def table(
        self, stem: str, command: str, markdown: str, *, also: str = "", about: str = ""
    ) -> str:
        """A table (or tables) after the command that wrote its results file, and `about` it.

        `also` follows the file's name (`and .md`); `about` is prose on how it was measured.
        """
        cited = f"`{PYTHON} -m {command}` (writes `bench/results/{stem}.json`{also})."
        return f"{prose(f'{cited} {about}')}\n{markdown.rstrip()}\n"


@dataclass(frozen=True)
class Section:
    """One `## ` section of BENCHMARKS.md: its heading and the function that writes its body."""

    heading: str
    body: Callable[[Results], str]


INTRO = """\
# Benchmarks

Measured on the development machine: 2 CPU cores. Each table gives the load average of its run;
most runs shared the cores with other jobs. Every benchmark compares its contenders **within one
run, interleaved** (they take turns, batch by batch or command by command, so all see the same
load), and reports ratios; wall-clock figures come with CPU-seconds of the measured process.

This file is written by `python -m bench.render` from the results files under `bench/results/`;
each table names the command that wrote its file, and every figure in the text comes from the
same files (`tests/unit/test_benchmarks_doc.py` fails when this file differs from what the
renderer writes). `make bench` (`python -m bench.run_all`) re-runs the benchmarks.
"""


def prose(text: str) -> str:
    """Paragraphs and `- ` items of `text` re-wrapped to WIDTH columns; `#`/`|` lines kept.

    The section functions write their prose as f-strings, so a figure's width changes the
    lines; wrapping here keeps the document's lines even whatever the figures are.
    """
    paragraphs = []
    for paragraph in text.strip().split("\n\n"):
        if paragraph.startswith(("#", "|")):
            paragraphs.append(paragraph)
            continue
        items: list[list[str]] = [[]]
        for line in paragraph.splitlines():
            if line.startswith("- ") and items[-1]:
                items.append([])
            items[-1].append(line.strip())
        paragraphs.append(
            "\n".join(
                textwrap.fill(
                    " ".join(item),
                    WIDTH,
                    subsequent_indent="  " if item[0].startswith("- ") else "",
                    break_long_words=False,
                    break_on_hyphens=False,
                )
                for item in items
            )
        )
    return "\n\n".join(paragraphs) + "\n"


def _ratio(value: float) -> str:
    return f"{value:.2f}"


def featurize_section(results: Results) -> str:
    """VGG-19 and MobileNet through taglens's featurize and plain loops of every engine."""
    from bench.featurize import to_markdown

    five = results.load("featurize")
    two = results.load("featurize-openvino")
    mobile = results.load("featurize-mobilenet")
    mobile_two = results.load("featurize-mobilenet-openvino")
    medians = five["median_img_s"].values()
    spread = max(medians) / min(medians) - 1
    per_cpu = statistics.mean(five["img_per_cpu_s"].values())
    worst = max(five["relative_difference"], key=five["relative_difference"].get)
    names = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "tensorflow": "TensorFlow"}
    m_median = mobile["median_img_s"]
    m_cpu_ms = 1000 / mobile["img_per_cpu_s"]["plain/openvino"]
    m_worst = max(mobile["relative_difference"].values())
    five_way = results.table(
        "featurize",
        "bench.featurize --images 320 --taglens tensorflow",
        to_markdown(five),
        also=" and `.md`",
        about="""One process, VGG-19 without its top at 224 px with the same random weights,
        batch 16, the same flowers photos through the same tf.data decode pipeline. Contenders:
        taglens's featurize pipeline (`taglens.features.featurize.iter_feature_batches`) on the
        default `featurize.engine` and on the other engine named by `--taglens`, and a plain
        loop per engine as its documentation shows it (a `tf.function`; OpenVINO converted from
        the Keras model with `PERFORMANCE_HINT: LATENCY` in float32; ONNX Runtime on tf2onnx's
        conversion). They take turns batch by batch in a rotating order; each contender's first
        batch (converting, compiling, tracing) is left out. Each contender computes the image's
        own vector alone (no views).""",
    )
    alone = results.table(
        "featurize-openvino",
        "bench.featurize --images 320 --engines openvino --taglens --stem featurize-openvino",
        to_markdown(two),
        also=" and `.md`",
        about="The same, with only taglens and the plain loop of the engine that led above.",
    )
    mobile_five = results.table(
        "featurize-mobilenet",
        "bench.featurize --backbone mobilenet --images 320 --taglens tensorflow",
        to_markdown(mobile),
        also=" and `.md`",
        about="The shared ImageNet weights.",
    )
    mobile_alone = results.table(
        "featurize-mobilenet-openvino",
        "bench.featurize --backbone mobilenet --images 320 --engines openvino --taglens "
        "--stem featurize-mobilenet-openvino",
        to_markdown(mobile_two),
        also=" and `.md`",
    )
    vgg_shows = prose(f"""What this shows:
- **On VGG-19 every engine runs at the same speed here, and taglens's featurize is level with
  the best of them**: {_ratio(five["taglens_over_best_other_median"])} of the plain OpenVINO
  loop in the five-way run, {_ratio(two["taglens_over_best_other_median"])} when the two run
  alone. All five contenders are within {math.ceil(spread * 100)}% of each other
  ({min(medians):.2f} to {max(medians):.2f} images/s by median batch), because VGG-19's
  convolutions reach the same oneDNN kernels whichever runtime calls them: about
  {per_cpu:.1f} images per CPU-second each, on both cores. "At least 1.0 of the best other
  engine" is therefore a tie within the noise of a run, not a lead any runtime can take here.
- Every engine gives the Keras vectors within 1e-4 (largest row-wise relative difference
  {five["relative_difference"][worst]:.1e}, {names[worst.split("/")[1]]}). OpenVINO's own
  default precision on this CPU, bfloat16, would not ({five["bf16_relative_difference"]:.1e}),
  so taglens compiles OpenVINO in float32.
- ONNX conversion is slow ({five["plain_convert_s"]["onnxruntime"]:.1f} s for VGG-19 here),
  which is why taglens caches it on disk; OpenVINO converts in memory at each start
  ({five["plain_convert_s"]["openvino"]:.1f} s here), once per process and model (a Dask
  worker converts its model once for all its shards).""")
    mobile_shows = prose(f"""\
- **For MobileNet OpenVINO is the fastest engine** ({m_median["plain/openvino"]:.2f} images/s
  by median batch for the plain loop, against {m_median["plain/tensorflow"]:.2f} for
  TensorFlow and {m_median["plain/onnxruntime"]:.2f} for ONNX Runtime), and taglens on it runs
  at **{_ratio(mobile_two["taglens_over_best_other_median"])}** of the plain OpenVINO loop when
  the two run alone ({_ratio(mobile_two["taglens_over_best_other_cpu"])} per CPU-second).
- In the five-way run taglens's OpenVINO contender ran at
  {_ratio(mobile["taglens_over_best_other_median"])} of that loop. MobileNet's forward pass is
  fast enough (about {m_cpu_ms:.0f} CPU-ms an image) that five runtimes in one process, each
  with its own thread pools and its own decode pipeline prefetching, disturb whichever
  contender has the turn; the two-contender run, with one runtime in the process as in the
  featurize stage, is the one that shows the stage's speed.
- OpenVINO's bfloat16 default would move MobileNet's vectors by
  {mobile["bf16_relative_difference"]:.1e} relative; in float32 every engine stays within
  {m_worst:.1e} of Keras.""")
    return "\n".join(
        [five_way, alone, vgg_shows, "### MobileNet 1.0\n", mobile_five, mobile_alone, mobile_shows]
    )


def predict_section(results: Results) -> str:
    """The whole batch predict command against a cold featurize, and its memory."""
    from bench.predict import to_markdown

    r = results.load("predict")
    small, large = r["rss"][0], r["rss"][-1]
    table = results.table(
        "predict",
        "bench.predict --images 800 --repeats 3 --rss 1000 10000",
        to_markdown(r),
        also=" and `.md`",
        about="""The whole `python -m stages.predict` command (list, read, hash, decode, model,
        hashtags, Parquet) against the whole `python -m stages.featurize` command into an empty
        feature store, on the same photos with the same backbone (MobileNet 1.0, shared ImageNet
        weights, 224 px) and engine (params.yaml's `featurize.engine`). The served model is
        assembled as `train` assembles it (`taglens.model.full_model.assemble`) in its
        costliest default shape: the image and its mirror image both go through the backbone
        and are averaged (when validation picks a flip setting), plus the colour view;
        featurize computes the same views (`featurize.views: [flip, colour]`). The photos are
        flowers photos re-encoded as 640x640 JPEGs, the size Instagram serves, so decoding
        costs what it costs on scraped posts. The two commands alternate which goes first in
        each repeat.""",
    )
    if "featurize_over_predict" in r:
        featurize = f"""**Featurize with the default views ({", ".join(r["views"])}) ran at
        {_ratio(r["featurize_over_predict"])} of the whole batch predict command's rate** by wall
        time ({_ratio(r["featurize_over_predict_cpu"])} per CPU-second; issue 25's target 0.9:
        {_met(r["featurize_over_predict"] >= 0.9)}) on the same 640x640 photos: both decode
        each photo once and run the image and its mirror in one forward call per batch
        (`taglens.features.views.views_model`, with the served model's own
        `image_and_mirror`)."""
    else:
        featurize = f"""**The whole batch predict command ran at
        {_ratio(r["predict_over_featurize"])} of a cold featurize's rate** by wall time
        ({_ratio(r["predict_over_featurize_cpu"])} per CPU-second) on the same 640x640 photos,
        although it also hashes every file, ranks hashtags and writes Parquet. This run
        predates featurize computing the image and its views in one forward call per batch
        (`taglens.features.views.views_model`, with the served model's own
        `image_and_mirror`): featurize then ran one pass over the files per view."""
    shows = prose(f"""What this shows:
- {featurize}
- **Memory is flat**: the peak while scoring grows from {small["job_peak_rss_mb"]:.0f} MB to
  {large["job_peak_rss_mb"]:.0f} MB ({r["rss_ratio"]:.2f}) from {small["images"]:,} to
  {large["images"]:,} images, since rows are streamed out batch by batch.""")
    return "\n".join([table, shows])


def nightly_section(results: Results) -> str:
    """N new photos after M already scored, against the N alone: the nightly job's cost."""
    from bench.nightly import to_markdown

    r = results.load("nightly")
    table = results.table(
        "nightly",
        f"bench.nightly --new {r['new']} --history {r['history']} --repeats {r['repeats']}",
        to_markdown(r),
        also=" and `.md`",
        about=f"""The whole job as the nightly flow runs it (list the inbox, recognise what the
        Parquet output holds, score the rest, add a part) in two situations, interleaved: the
        {r["new"]:,} new photos alone into a new output, and the same {r["new"]:,} in an inbox
        that also holds {r["history"]:,} photos the output has already scored. The model is a
        tiny conv net at {r["image_size"]} px, the cheapest a photo can be scored, so whatever
        grows with the history (listing, one `stat` per photo, reading the index, rewriting it)
        weighs as much as it ever can; the photos are {r["side"]}x{r["side"]} JPEGs.""",
    )
    alone = r["seconds"]["alone"]
    shows = prose(f"""What this shows:
- **Cost follows the new photos**: with {r["history"]:,} photos already scored, the night
  costs {_ratio(r["cpu_ratio_median"])}x the CPU of scoring the {r["new"]:,} alone (median of
  the repeats; best against best {_ratio(r["cpu_ratio_best"])}x). No old photo is read or
  hashed (their size and mtime match the index; `tests/unit/test_batch_dataset.py` counts the
  hashes) and no earlier part is rewritten (the benchmark checks that the history's part is
  still there, the first of two).
- **Wall time is noisier**: with the cores shared (load average {r["loadavg_start"]:.1f} ->
  {r["loadavg_end"]:.1f}) the job's CPU-seconds were about half its wall-clock seconds, and the
  ratio of wall times varied over the repeats (median {_ratio(r["ratio_median"])}) because the
  runs themselves did: the alone runs took from {min(alone):.2f} s to {max(alone):.2f} s.""")
    return "\n".join([table, shows])


def train_section(results: Results) -> str:
    """Re-training on cached features against a frozen backbone fitted on images."""
    r = results.load("train")
    once, cached, naive = r["featurize_once"], r["retrain_cached"], r["naive_frozen_backbone"]
    markdown = (
        "| load average | featurize once | re-train, cached | naive, frozen backbone on images "
        "| speed-up wall | speed-up CPU |\n"
        "|---|---|---|---|---|---|\n"
        f"| {r['load_average_1m']} | {once['wall_s']} s / {once['cpu_s']} CPU-s "
        f"| {cached['wall_s']} s / {cached['cpu_s']} CPU-s "
        f"| {naive['wall_s']} s / {naive['cpu_s']} CPU-s "
        f"| {r['speedup_wall']}x | {r['speedup_cpu']}x |\n"
    )
    table = results.table(
        "train",
        "bench.train",
        markdown,
        about=f"""After a train-param change, fitting the head on cached features (read
        `features.npz` + fit) against the naive approach, a Keras model with a frozen backbone
        fitted on images every epoch. Same {r["images"]} flowers photos, {r["image_size"]} px,
        {r["backbone"]} (random weights: the cost does not depend on them), {r["epochs"]}
        epochs, same head and batch size, XLA off for both; CPU seconds count all threads of
        the process.""",
    )
    shows = prose("""The cached side is almost all fixed Keras cost (building, tracing); the
    naive side grows with images x epochs, so the ratio grows with either. Featurize is paid
    once per image and backbone, and cached across runs.""")
    return "\n".join([table, shows])


def _sci(value: float) -> str:
    """1e-05 as 1e-5."""
    return f"{value:.0e}".replace("e-0", "e-").replace("e+0", "e+")


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def web_section(results: Results) -> str:
    """The web page under load: batched and unbatched servers, 1 and 32 clients."""
    from bench.load_web import to_markdown

    r = results.load("load_web-224px")
    single, loaded = r["servers"]["batched"]["1"], r["servers"]["batched"]["32"]
    unbatched = r["servers"]["unbatched"]["32"]
    top, costs, targets = r["ceiling"], r["cpu_ms_per_image"], r["targets"]
    failed = "No request failed" if loaded["errors"] == 0 else f"{loaded['errors']} requests failed"
    table = results.table(
        "load_web-224px",
        "bench.load_web --clients 1 32 --size 224 --duration 20 --repeats 3",
        to_markdown(r),
        also=" and `.md`; several minutes",
        about=f"""It builds MobileNet 1.0 with the ImageNet weights from ../shared/weights,
        assembled as train assembles the served model (as in batch predict above), re-encodes
        64 flowers photos to 640x640 JPEG (quality 85, as Instagram serves them) and starts two
        `python -m taglens.serving.web` servers on 127.0.0.1 from the same params: the default
        one (dynamic batching, `serve.batch_max_size: 32`, `serve.batch_max_wait_ms: 5`) and one
        with `batch_max_size: 1` (each upload its own forward pass). The four arms (server x 1
        or 32 clients uploading back-to-back) run {r["duration_s"]:g} s each and alternate for
        {r["repeats"]} rounds; a separate process loads the page (`GET /`) every 0.25 s during
        each arm. "CPU ms per request" is the server process's user + system time over the
        requests it answered. Afterwards `bench/web_costs.py` measures, in one process, the CPU
        of each step the server runs for an upload.""",
    )
    shows = prose(f"""What this shows:
- {failed}. 32 clients get **{r["ratio"]}x** the single-client rate (target 3x:
  {_met(targets["ratio"])}); their p99 is {loaded["p99_ms"]} ms (target under 2 s:
  {_met(targets["p99"])}); the page loads in {loaded["page"]["p99_ms"]} ms at p99 during that
  load (target under 200 ms: {_met(targets["page"])}; the slowest page load took
  {loaded["page"]["max_ms"]} ms).
- **One client already keeps {top["single_client_cores_busy"]} of the {top["cores"]} cores
  busy.** A lone upload goes through OpenVINO's latency path, which spreads one image over both
  cores, and never waits for a batch (p50 {single["p50_ms"]} ms). Batching cannot make the model
  cheaper per image either: the assembled model costs {costs["model_one_image"]} CPU-ms for one
  image and {costs["model_full_batch"]} per image in a batch of {costs["batch"]}. At the
  {loaded["server_cpu_ms_per_request"]} CPU-ms a request costs under 32 clients,
  {top["cores"]} cores answer at most {top["most_requests_per_second"]} requests/s,
  {top["most_ratio"]}x the single-client rate; 3x would need
  {top["cpu_ms_per_request_for_3x"]} CPU-ms a request.
- Batching pays where requests queue: {r["batching_gain"]}x the unbatched server's rate at 32
  clients ({loaded["server_cpu_ms_per_request"]} against
  {unbatched["server_cpu_ms_per_request"]} CPU-ms per request).
- **The page under load**: with batching, a batch of answers goes out at once and as many
  uploads arrive together, and a page request can queue behind them (p99
  {loaded["page"]["p99_ms"]} ms, max {loaded["page"]["max_ms"]} ms, against
  {unbatched["page"]["p99_ms"]} ms p99 without batching).""")
    beside = side_by_side(results)
    return "\n".join([table, shows, "### Side by side with `mlflow models serve`\n", beside])


def side_by_side(results: Results) -> str:
    """One registered champion under taglens serve and mlflow models serve; the ceiling."""
    from bench.serve_compare import MLFLOW, MLFLOW_W2, TAGLENS, to_markdown

    r = results.load("serve_compare")
    top = str(r["targets"]["clients"])
    ours, ratios, ceiling = r["servers"][TAGLENS][top], r["ratios"][top], r["ceiling"]
    theirs, two = r["servers"][MLFLOW][top], r["servers"][MLFLOW_W2][top]
    checks, agree = r["targets"], r["answers"]
    table = results.table(
        "serve_compare",
        f"bench.serve_compare --clients 1 {top} --duration {r['duration_s']:g} "
        f"--repeats {r['repeats']}",
        to_markdown(r),
        also=" and `.md`; about 5 minutes on a quiet machine",
        about=f"""The same model as above is logged as the taglens pyfunc and registered as
        `@champion` in a throwaway MLflow store; three servers serve that one version at once:
        `taglens serve`, `mlflow models serve --env-manager local` with its defaults (one
        worker) and with `-w 2` (the workers 2 cores allow). Clients send the same
        {r["photos"]}: uploads to the page, base64 in the pyfunc's `dataframe_split` JSON to
        `/invocations`. Every arm runs {r["duration_s"]:g} s, and batch predict (the whole
        `taglens predict` command on the same photos as files) takes its turn in every round as
        the ceiling, the rate the model allows here; the order rotates each round. A separate
        process loads the page (`GET /`; mlflow's `GET /ping`) every 0.25 s. CPU per request
        counts the server's whole process tree (mlflow's workers are child processes).""",
    )
    shows = prose(f"""What this shows:
- At {top} clients `taglens serve` answered {ours["requests_per_second"]} requests/s:
  **{ratios["over_ceiling"]} of batch predict's {ceiling["img_s"]} images/s** on the same
  photos (target 0.95: {_met(checks["ceiling"])}) and
  **{ratios[f"over {MLFLOW}"]}x `mlflow models serve`** ({theirs["requests_per_second"]}
  requests/s; {ratios[f"over {MLFLOW_W2}"]}x its `-w 2`, {two["requests_per_second"]};
  target 1.5x: {_met(checks["mlflow"])}), p99 {ours["p99_ms"]} ms (target under 2 s:
  {_met(checks["p99"])}), the page {ours["page"]["p99_ms"]} ms at p99 under that load
  (target under 200 ms: {_met(checks["page"])}).
- A request cost the page's server {ours["server_cpu_ms_per_request"]} CPU-ms, against
  {theirs["server_cpu_ms_per_request"]} for `mlflow models serve` and
  {two["server_cpu_ms_per_request"]} with two workers. All three load the same registered
  pyfunc on the same engine; `mlflow models serve` runs one image per forward pass, the page
  batches concurrent uploads.
- Of the {agree["photos"]} photos every server answered, {agree["same_answer"]} got the same
  top class and top {agree["top_tags"]} hashtags from all of them, in every answer.""")
    if max(r["load_avg_start"], r["load_avg_end"]) > r["cpus"]:
        shows += prose(f"""\
- **A busy run**: other jobs kept the load average at {r["load_avg_start"]} ->
  {r["load_avg_end"]} on {r["cpus"]} cores, so each arm got what share of the cores it could
  and the rates and ratios above carry that noise (batch predict's own runs gave
  {", ".join(str(x) for x in ceiling["img_s_by_run"])} images/s); CPU per request is the
  steadier comparison. Re-measure on a quiet machine with the command above.""")
    if "cpu_split" in r:
        split, costs = r["cpu_split"], r["cpu_ms_per_image"]
        shows += prose(f"""\
- **Where the page's CPU goes** at {split["clients"]} clients: of the {split["server_ms"]}
  CPU-ms a request cost, the steps measured alone take {split["steps_ms"]} (the upload's
  checks and normalization {costs["upload_checks_and_normalize"]}, the decode
  {costs["decode_to_pixels"]}, the model and hashtags {costs["model_full_batch"]} per image in
  a batch of {costs["batch"]}) and the rest, {split["rest_ms"]}, is HTTP, multipart parsing,
  JSON and the batching threads. Batch predict decodes the file as it is
  ({costs["decode_as_sent"]}) and skips the normalization, which re-encodes each upload as
  ingest stores training photos so that the page's pixels are the ones training saw.""")
    return "\n".join([table, shows])


def soak_section(results: Results) -> str:
    """Ten minutes of good photos and hostile uploads against the web page."""
    from bench.soak_web import to_markdown

    r = results.load("soak_web")
    verdict = r["verdict"]
    rss = r["rss"]
    table = results.table(
        "soak_web",
        "bench.soak_web --duration 600 --clients 32",
        to_markdown(r),
        also=" and `.md`; about 11 minutes",
        about=f"""It builds the model `bench.load_web` serves (MobileNet 1.0 with the ImageNet
        weights from ../shared/weights and a softmax over the flower classes, 224 px), starts
        `python -m taglens.serving.web` on 127.0.0.1 with params.yaml and lowers its own
        priority (`nice {r["client_nice"]}`, the server keeps its own). {r["clients"]} clients
        then upload back-to-back for {r["duration_s"]:g} s: a flowers photo re-encoded to
        640x640 JPEG, or ({round(100 * r["hostile_share"])}% of uploads) one of the
        {r["hostile_kinds"]} hostile uploads of `bench/hostile_uploads.py` (bombs, truncated and
        damaged files, wrong types, oversized uploads, the fuzz corpus). A 503 would be retried
        after its Retry-After. The server's RSS is sampled every {r["sample_every_s"]:g} s
        (psutil); "flat" compares the median of the last {rss["window_s"]:g} s with the median
        of the {rss["window_s"]:g} s after a {rss["warmup_s"]:g} s warm-up.""",
    )
    change = verdict["rss_change"]
    moved = "could not be compared" if change is None else f"moved {100 * change:+.1f}%"
    shows = prose(f"""What this shows: {verdict["good_answered"]} of {verdict["good_sent"]} good
    photos answered with hashtags and {verdict["hostile_as_documented"]} of
    {verdict["hostile_sent"]} hostile uploads refused with their documented status, with
    {verdict["unexpected_5xx"]} unexpected 5xx and {verdict["no_answer"]} requests left without
    an answer; the server's RSS {moved} between the two windows
    ({verdict["rss_first_window_mb"]} -> {verdict["rss_last_window_mb"]} MB, limit
    {100 * rss["max_change"]:g}%). The soak {"passed" if verdict["passed"] else "FAILED"}.""")
    before = results.load("soak_web-before-warm-up")
    old = before["verdict"]
    old_rss = before["rss"]["samples"]
    warm = results.load("soak_web-before-steady-malloc")
    warmed = warm["verdict"]
    found = prose(f"""Two earlier runs of the same command found what the server now does
    against memory creeping up (docs/reliability.md):
- Before `serve.warm_up` (`bench/results/soak_web-before-warm-up.json`, load average
  {before["load_avg_start"]} -> {before["load_avg_end"]}) every upload was answered as
  documented ({old["good_answered"]} good photos, {old["hostile_as_documented"]} hostile
  uploads, no 5xx) but the soak **failed on memory**: the RSS went from {old_rss[0][1]} MB
  at start to {old["rss_first_window_mb"]} MB in the minute after warm-up, then crept up to
  {old["rss_last_window_mb"]} MB in the last minute ({100 * old["rss_change"]:+.1f}%).
  OpenVINO keeps memory per input shape, taken the first time the batcher forms each batch
  size from 1 to 32; the server now runs every batch size once before it serves.
- With the warm-up alone (`bench/results/soak_web-before-steady-malloc.json`, load average
  {warm["load_avg_start"]} -> {warm["load_avg_end"]}) it passed, but the RSS still rose in
  steps ({warmed["rss_first_window_mb"]} -> {warmed["rss_last_window_mb"]} MB,
  {100 * warmed["rss_change"]:+.1f}%): glibc's per-thread arenas fragmenting under the
  megabyte-sized pixel arrays. The server now asks glibc for two arenas and a fixed 128 KiB
  mmap threshold at start.""")
    return "\n".join([table, shows, found])


def search_section(results: Results) -> str:
    """The train stage's default search on 7,000 cached vectors."""
    r = results.load("search")
    markdown = (
        "| rows (train/val) | batches per call | candidates | wall min | CPU min "
        "| best on validation |\n|---|---|---|---|---|---|\n"
    )
    for run in r["runs"]:
        best = run["best_setting"].replace(",", ", ")
        markdown += (
            f"| {r['rows']} ({r['train_rows']}/{r['val_rows']}) | {run['steps_per_execution']} "
            f"| {run['candidates']} | {run['wall_min']} | {run['cpu_min']} "
            f"| {best} ({run['best_val_accuracy']}) |\n"
        )
    table = results.table(
        "search",
        "bench.search",
        markdown,
        also=" and `search.md`",
        about=f"""The train stage's default search (`train.search` in params.yaml: each setting
        an MLflow child run in a throwaway store) on {r["rows"]:,} rows of MobileNet 1.0
        features of the flowers photos at 128 px with their flip view. The 4,317 photos are
        brought to {r["rows"]:,} rows by repeating photos with 1% Gaussian noise (a fit's cost
        depends on the row count, not on where the rows come from). The validation accuracy is
        therefore not an accuracy figure (repeated photos fall in both splits); only the time
        is.""",
    )
    baseline, batched = r["runs"]
    same = (
        "the same setting with the same validation accuracy"
        if r["same_choice"]
        else ("different settings: the batching changed the fits")
    )
    shows = prose(f"""The search runs twice in one process: Keras' compiled training step
    called once per batch, then on {batched["steps_per_execution"]} batches per call as the train
    stage does (`HEAD_STEPS_PER_EXECUTION` in taglens/training/head.py). Both chose {same};
    the batched search took {r["cpu_ratio"]:.2f} of the baseline's CPU. CPU minutes count all
    threads of the process; the machine was shared (load average
    {r["load_average_1m"]:.0f} on 2 cores), so the wall time is an upper bound.""")
    return "\n".join([table, shows])


def fine_tune_section(results: Results) -> str:
    """Fine-tuning the backbone's last block or layers on the flowers photos."""
    block = results.load("fine_tune-last-block")
    layers = results.load("fine_tune-last-12-layers")
    unfrozen = {
        "last block (`conv_pw_13`)": block,
        f"last {layers['layers']} layers with weights": layers,
    }
    rows = [
        f"| {name} | {_sci(r['learning_rate'])} | {r['test_accuracy_head']:.4f} -> "
        f"{r['test_accuracy_fine_tuned']:.4f} | {r['gain']:+.3f} | "
        f"{r['wall_min_per_epoch']:.2f} ({r['cpu_min_per_epoch']:.2f}) | {r['load_average_1m']} |"
        for name, r in unfrozen.items()
    ]
    markdown = (
        "| unfrozen | learning rate | test accuracy, head -> fine-tuned | gain "
        "| min per epoch, wall (CPU) | load avg |\n|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n"
    )
    head = block["test_accuracy_head"]
    error = math.sqrt(head * (1 - head) / block["test_images"])
    table = results.table(
        "fine_tune-last-block",
        "bench.fine_tune",
        markdown,
        also="; `.venv/bin/python -m bench.fine_tune --layers 12 --learning-rate 0.0001` writes "
        "`bench/results/fine_tune-last-12-layers.json`",
        about=f"""MobileNet 1.0 ImageNet at {block["image_size"]} px (the code path is the same
        for every backbone and `tests/unit/test_head.py` checks that each one unfreezes its
        last block or its last N layers), {block["train_images"]:,} training and
        {block["test_images"]} test photos. params.yaml's head is fitted on the cached
        features, the assembled model scores the test photos, then `fine_tune` trains the
        unfrozen layers and the head on images (flips and small brightness changes) for
        {block["epochs"]} epochs and ends on the best validation epoch.""",
    )
    costs = "; ".join(
        f"{name}: {60000 * r['wall_min_per_epoch'] / r['train_images']:.0f} ms wall, "
        f"{60000 * r['cpu_min_per_epoch'] / r['train_images']:.0f} ms CPU"
        for name, r in unfrozen.items()
    )
    shows = prose(f"""An epoch costs about what one featurize pass over the training photos
    costs; per training photo and epoch, {costs}. Both gains are within about two standard
    errors of a test accuracy on {block["test_images"]} photos (one standard error
    {error:.3f}). `train.fine_tune.enabled: auto` fine-tunes and serves the fine-tuned model
    only when its validation accuracy beats the head's by more than one paired standard error;
    it is not the default: it adds these minutes to every train run (twice per run of the
    flowers end-to-end test), and a fine-tuned backbone leaves the image rankers without the
    cached features they read.""")
    return "\n".join([table, shows])


def views_cost_section(results: Results) -> str:
    """What the crops view costs per image in featurize and in prediction."""
    from bench.views_cost import to_markdown

    r = results.load("views_cost")
    table = results.table(
        "views_cost",
        "bench.views_cost",
        to_markdown(r),
        about=f"""{r["backbone"]} at {r["image_size"]} px on {r["engine"]}, batch
        {r["batch"]}, {r["images"]} flowers photos; the contenders take turns batch by batch
        (load average {r["load_average_1m"]} at the end). The crops view is five more forward
        passes per photo (`taglens.features.views`): featurize computes it beside the image and
        its mirror, and a model whose `train.crops` chose it runs them at every prediction.""",
    )
    return table


def quality_section(results: Results) -> str:
    """Every hashtag ranker side by side on the flowers photos, clean and noisy captions."""
    from bench.quality import to_markdown

    r = results.load("quality")
    runs = r["results"]
    table = results.table(
        "quality",
        "bench.quality",
        to_markdown(r),
        also=" and `quality.md`",
        about=f"""The whole pipeline (`dvc repro`: scrape, featurize, the content split and the
        outlier rule of clean, train's default search and ranking choice, evaluate) on the
        4,317 flowers photos of ../shared with MobileNet 1.0 ImageNet weights at 128 px and
        params.yaml's defaults otherwise, once per caption set: `clean` (posts.jsonl) and
        `noisy` (posts-noisy.jsonl, whose captions follow real Instagram posts: a third with the
        class tag only, generic tags, missing class tags, colour tags on some posts, a long
        tail, and two classes without captions). Each row is one ranker alone on the same test
        posts with its settings chosen on validation; `served` is what the model answers
        (load average {r["load_average_1m"]} when it finished).""",
    )
    noisy = runs.get("noisy", {}).get("rankers", {})
    parts = [table]
    clean = runs.get("clean", {})
    if clean.get("tail", {}).get("weights"):
        colour = clean["colour_recall_at_10"]
        parts.append(
            prose(f"""On the clean captions the served list finds {colour["served"]:.3f}
        of each post's colour tags against the class mixture's {colour["class_mixture"]:.3f}:
        its first five tags come from the blend held by the floors (chosen among those that
        reach them on the mean of the four metrics), the rest from the tail
        blend, chosen on validation for recall@10 and, among tails within one paired standard
        error of the best, for the weight it gives the image rankers (docs/registry.md).""")
        )
    if noisy:
        served = noisy["served"]
        popular = noisy["popularity"]
        parts.append(
            prose(f"""On the noisy captions popularity is a strong baseline: its recall@5
        is {popular["hashtag_recall_at_5"]:.3f} against {served["hashtag_recall_at_5"]:.3f}
        for the served ranking, whose precision@1 is {served["hashtag_precision_at_1"]:.3f}
        against popularity's {popular["hashtag_precision_at_1"]:.3f}. The
        tests/e2e/test_flowers_accuracy.py test runs the same code.""")
        )
    return "\n".join(parts)


def int8_section(results: Results) -> str:
    """The INT8 engine against FP32 OpenVINO: featurize rate, and top-1 of the same head."""
    from bench.int8 import accuracy_markdown, speed_markdown

    speed = results.load("int8-speed")
    top1 = results.load("int8-accuracy")
    mobile, vgg = speed["mobilenet"], speed["vgg19"]
    rates = results.table(
        "int8-speed",
        "bench.int8 --part speed --calibration 100 --validation 100 --max-drop 0.99 --images 160",
        speed_markdown(speed),
        also=" and `.md`",
        about=f"""The featurize stage's own pipeline and views model on `openvino` and on
        `openvino-int8`, the two taking turns batch by batch. The INT8 models are the ones the
        featurize stage makes (`taglens.features.int8_backbone.prepare`: NNCF calibrated on
        {mobile["decision"]["calibration_images"]} training photos of clean's split), here with
        a max_drop of {mobile["decision"]["max_drop"]:g} so that every layer is quantized: the
        rate of the whole INT8 model. VGG-19 has random weights (no ImageNet weights can be
        had here), which are fine for speed.""",
    )
    accuracy = results.table(
        "int8-accuracy",
        "bench.int8 --part accuracy --calibration 100 --validation 100 --max-iterations 5",
        accuracy_markdown(top1),
        also=" and `.md`",
        about=f"""The INT8 model the featurize stage keeps with params.yaml's
        `featurize.int8.max_drop` ({top1["int8_settings"]["max_drop"]:g}) and accuracy control
        (at most {top1["int8_settings"]["max_iterations"]} layer groups reverted), against FP32,
        on the same photos, split and head.""",
    )
    shows = prose(f"""What this shows:
- INT8 featurizes MobileNet at **{_ratio(mobile["int8_over_fp32_median"])}x** the FP32 rate
  and VGG-19 at **{_ratio(vgg["int8_over_fp32_median"])}x** (by median batch; per CPU-second
  {_ratio(mobile["int8_over_fp32_cpu"])}x and {_ratio(vgg["int8_over_fp32_cpu"])}x). This
  CPU has INT8 instructions (`lscpu` lists avx512_vnni, avx_vnni, amx_int8 and amx_tile), and
  the FP32 side runs in float32 as taglens compiles it (OpenVINO's bfloat16 default, which
  moves the vectors, is not compared); VGG-19's dense 3x3 convolutions gain the most.
- On the flowers test photos the head on INT8 vectors scores
  {top1["top1"]["openvino-int8"]["test"]:.3f} top-1 against {top1["top1"]["openvino"]["test"]:.3f}
  on FP32 vectors ({top1["test_difference_points"]:+.1f} points, {top1["n"]["test"]} test
  photos: one photo is {100 / top1["n"]["test"]:.2f} points).
- INT8 moves the vectors (mean cosine to FP32's {top1["cosine_mean"]:.3f} with accuracy
  control, {mobile["cosine_mean"]:.3f} with every layer quantized at 224 px; VGG-19's
  {vgg["cosine_mean"]:.3f} says little, as random weights pool to nearly one direction). What
  accuracy control checks is a classifier's accuracy, not the vectors; calibrating and
  checking took {top1["quantize_seconds"]:.0f} s here, once (a shared machine): then the
  decision is read from the cache.""")
    return "\n".join([rates, accuracy, shows])


# The document, in order. A new section: one function above and one line here.
SECTIONS = (
    Section("Featurize against the other engines (`bench/featurize.py`)", featurize_section),
    Section("INT8 against FP32 (`bench/int8.py`)", int8_section),
    Section("Batch predict (`bench/predict.py`)", predict_section),
    Section(
        "Nightly scoring: new photos after a scored history (`bench/nightly.py`)", nightly_section
    ),
    Section("Re-training on cached features (`bench/train.py`)", train_section),
    Section("Web page under load (`bench/load_web.py`)", web_section),
    Section("Web page soak: good photos and hostile uploads (`bench/soak_web.py`)", soak_section),
    Section("The default search on 7,000 cached vectors (`bench/search.py`)", search_section),
    Section("Fine-tuning on the flowers photos (`bench/fine_tune.py`)", fine_tune_section),
    Section("Test-time crops: the cost per image (`bench/views_cost.py`)", views_cost_section),
    Section("Hashtag quality of every ranker (`bench/quality.py`)", quality_section),
)


def render(results: Path = RESULTS) -> str:
    """BENCHMARKS.md's text from the results files in `results`."""
    found = Results(results)
    parts = [INTRO]
    parts += [f"## {section.heading}\n\n{section.body(found)}" for section in SECTIONS]
    return "\n".join(part.rstrip("\n") + "\n" for part in parts)


def main(argv: list[str] | None = None) -> int:
    """Write BENCHMARKS.md (or `--out`) from `--results`."""
    parser = argparse.ArgumentParser(description="Write BENCHMARKS.md from bench/results/.")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the results folder")
    parser.add_argument("--out", type=Path, default=DOCUMENT, help="the file to write")
    args = parser.parse_args(argv)
    from taglens.atomic import atomic_write_text

    atomic_write_text(args.out, render(args.results))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
