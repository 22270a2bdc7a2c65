"""A soak of the web page: good photos and hostile uploads from many clients, for minutes.

    python -m bench.soak_web --duration 600 --clients 32

Starts `python -m taglens.serving.web` on a free port of 127.0.0.1 (as `bench.load_web` does)
serving MobileNet 1.0 with the ImageNet weights of ../shared/weights behind a softmax over the
flower classes (`bench.load_web.realistic_models`; `--models DIR` serves a trained models/ dir
instead). `--clients` clients then upload back-to-back for `--duration` s and stop by
themselves: each upload is a flowers photo re-encoded to 640x640 JPEG as Instagram serves it,
or (`--hostile-share` of them) one of `bench.hostile_uploads`: decompression bombs, truncated
and damaged files, wrong types, oversized uploads (declared, by one byte, streamed). A 503
(documented: `serve.max_pending` uploads in progress, or uvicorn's `serve.limit_concurrency`) is
retried after its Retry-After, as a client should. Meanwhile the server's RSS (psutil) and the
load average are sampled every `--sample-every` s. The client lowers its own priority
(`--nice`) once the server has started, so the server is not the one that yields the CPU.

The verdict (`judge`) passes when:
- no answer is a 5xx other than 503, and no request failed without an answer (a hang);
- every good photo is answered 200 with hashtags;
- every hostile upload gets the status docs/web.md documents for it, with its message;
- the RSS is flat: the median of the last `--window` s within `--max-rss-change` of the median
  of the `--window` s after the first `--warmup` s;
- the server log holds no traceback and `/health` still answers at the end.

Writes bench/results/soak_web.json (the RSS series included) and .md; exits 1 when a check
fails. A short run for a test:
`python -m bench.soak_web --models DIR --params P --duration 25 --clients 4 --warmup 5 --window 8`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.hostile_uploads import Hostile, hostile_uploads
from bench.results_io import in_order
from bench.web_load_kit import ROOT, free_port, rss_mb, start_server

# How many times one upload is sent again after a 503 (each after its Retry-After).
MAX_RETRIES = 5
REQUEST_TIMEOUT_S = 120.0
# After the last upload is due, clients get this long to finish what they sent.
DRAIN_S = 180.0
GOOD = "good_photo"
START_TIMEOUT_S = 900.0
CHECKS = (  # what the verdict checks, in the order its table states them
    "no_unexpected_5xx",
    "every_request_answered",
    "every_good_photo_answered",
    "every_hostile_upload_documented_4xx",
    "rss_flat",
    "no_traceback_in_server_log",
    "healthy_after",
)


@dataclass
class Tally:
    """The answers to one kind of upload."""

    expected: int
    sent: int = 0
    as_expected: int = 0
    retried_503: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    def add(self, status: str, ok: bool, retries: int, elapsed_ms: float) -> None:
        """Count one upload's final answer (`status`), and whether it is the documented one."""
        self.sent += 1
        self.as_expected += ok
        self.retried_503 += retries
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.latencies_ms.append(elapsed_ms)

    def summary(self) -> dict:
        """The JSON form, with the latency percentiles instead of the raw latencies."""
        ordered = sorted(self.latencies_ms)

        def rank(q: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

        return {
            "expected": self.expected,
            "sent": self.sent,
            "as_expected": self.as_expected,
            "retried_503": self.retried_503,
            "statuses": dict(sorted(self.statuses.items())),
            "p50_ms": rank(0.50) if ordered else None,
            "p99_ms": rank(0.99) if ordered else None,
        }


def documented(upload: Hostile | None, status: int, body: bytes) -> bool:
    """Whether an answer is the documented one.

    A good photo (`upload` None): 200 with hashtags; a hostile upload: its status and message.
    """
    try:
        answer = json.loads(body)
    except ValueError:
        return False
    if not isinstance(answer, dict):
        return False
    if upload is None:
        tags = answer.get("hashtags")
        return status == 200 and isinstance(tags, list) and len(tags) > 0
    detail = answer.get("detail")
    return status == upload.status and isinstance(detail, str) and upload.words in detail


def _multipart(chunks: Iterator[bytes]) -> tuple[dict[str, str], Iterator[bytes]]:
    """A multipart body streamed from `chunks` without a Content-Length (sent chunked)."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="upload"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()

    def body() -> Iterator[bytes]:
        yield head
        yield from chunks
        yield f"\r\n--{boundary}--\r\n".encode()

    return {"Content-Type": f"multipart/form-data; boundary={boundary}"}, body()


def send(session, url: str, photo: bytes | None, upload: Hostile | None) -> tuple[str, bytes, int]:
    """Post one upload, again after each 503 (as its Retry-After asks), at most MAX_RETRIES.

    Returns the final status (or the exception's name when no answer came), the body and how
    many 503s were retried.
    """
    import httpx

    retries = 0
    while True:
        try:
            if upload is not None and upload.streamed:
                headers, content = _multipart(upload.body())
                response = session.post(f"{url}/predict", content=content, headers=headers)
            else:
                data = photo if upload is None else upload.data
                name = "photo.jpg" if upload is None else "upload"
                response = session.post(f"{url}/predict", files={"file": (name, data)})
        except httpx.HTTPError as exc:
            return type(exc).__name__, b"", retries
        if response.status_code != 503 or retries >= MAX_RETRIES:
            return str(response.status_code), response.content, retries
        retries += 1
        time.sleep(float(response.headers.get("Retry-After", "1")))


class RssSampler:
    """Sample a process's RSS (MB) and the 1-minute load average every `every_s` in a thread."""

    def __init__(self, pid: int, every_s: float) -> None:
        self.pid = pid
        self.every_s = every_s
        self.samples: list[list[float]] = []  # [seconds since start, RSS MB, load average]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.every_s):
                return

    def sample(self) -> None:
        """Take one sample now."""
        seconds = round(time.monotonic() - self.started, 1)
        self.samples.append([seconds, round(rss_mb(self.pid), 1), round(os.getloadavg()[0], 2)])

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def soak(
    url: str,
    photos: list[bytes],
    hostile: list[Hostile],
    *,
    clients: int,
    duration: float,
    hostile_share: float,
    seed: int = 0,
) -> tuple[dict[str, Tally], int]:
    """Upload from `clients` threads until `duration` s pass; return the tallies and hung clients.

    Each client draws its uploads from its own seeded generator: a good photo, or with
    probability `hostile_share` a hostile upload. A client still waiting `DRAIN_S` after the
    end counts as hung.
    """
    import httpx

    tallies = {GOOD: Tally(expected=200)}
    for upload in hostile:
        tallies[upload.kind] = Tally(expected=upload.status)
    lock = threading.Lock()
    stop_at = time.monotonic() + duration

    def client(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        with httpx.Client(timeout=REQUEST_TIMEOUT_S) as session:
            while time.monotonic() < stop_at:
                upload = rng.choice(hostile) if rng.random() < hostile_share else None
                photo = None if upload is not None else rng.choice(photos)
                started = time.perf_counter()
                status, body, retries = send(session, url, photo, upload)
                elapsed = (time.perf_counter() - started) * 1000
                ok = status.isdigit() and documented(upload, int(status), body)
                with lock:
                    tallies[GOOD if upload is None else upload.kind].add(
                        status, ok, retries, elapsed
                    )

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(0.0, stop_at + DRAIN_S - time.monotonic()))
    return tallies, sum(thread.is_alive() for thread in threads)


def _median_between(samples: list[list[float]], start: float, end: float) -> float | None:
    values = [rss for seconds, rss, *_ in samples if start <= seconds <= end]
    return round(statistics.median(values), 1) if values else None


def judge(
    uploads: dict[str, dict],
    samples: list[list[float]],
    *,
    warmup_s: float,
    window_s: float,
    max_rss_change: float,
    hung_clients: int = 0,
    tracebacks: int = 0,
    healthy_after: bool = True,
) -> dict:
    """The soak's verdict from its tallies (`Tally.summary()` by kind) and RSS samples.

    The RSS compares the median of the `window_s` after `warmup_s` with the median of the
    last `window_s` (up to the last sample); the two windows must not overlap.

    Returns:
        `checks` (each a bool), the figures behind them, and `passed`.
    """
    statuses: dict[str, int] = {}
    for tally in uploads.values():
        for status, n in tally["statuses"].items():
            statuses[status] = statuses.get(status, 0) + n
    unexpected_5xx = sum(
        n
        for status, n in statuses.items()
        if status.isdigit() and status[0] == "5" and status != "503"
    )
    no_answer = sum(n for status, n in statuses.items() if not status.isdigit())
    good = uploads[GOOD]
    hostile = {kind: tally for kind, tally in uploads.items() if kind != GOOD}
    hostile_sent = sum(tally["sent"] for tally in hostile.values())
    hostile_ok = sum(tally["as_expected"] for tally in hostile.values())
    end = samples[-1][0] if samples else 0.0
    first = _median_between(samples, warmup_s, warmup_s + window_s)
    last = _median_between(samples, end - window_s, end)
    windows_apart = bool(samples) and end - window_s > warmup_s + window_s
    change = (last / first - 1) if first and last is not None and windows_apart else None
    checks = {
        "no_unexpected_5xx": unexpected_5xx == 0,
        "every_request_answered": no_answer == 0 and hung_clients == 0,
        "every_good_photo_answered": good["sent"] > 0 and good["as_expected"] == good["sent"],
        "every_hostile_upload_documented_4xx": hostile_sent > 0 and hostile_ok == hostile_sent,
        "rss_flat": change is not None and abs(change) <= max_rss_change,
        "no_traceback_in_server_log": tracebacks == 0,
        "healthy_after": healthy_after,
    }
    return {
        "checks": checks,
        "passed": all(checks.values()),
        "statuses": dict(sorted(statuses.items())),
        "unexpected_5xx": unexpected_5xx,
        "no_answer": no_answer,
        "hung_clients": hung_clients,
        "good_sent": good["sent"],
        "good_answered": good["as_expected"],
        "hostile_sent": hostile_sent,
        "hostile_as_documented": hostile_ok,
        "rss_first_window_mb": first,
        "rss_last_window_mb": last,
        "rss_change": None if change is None else round(change, 4),
        "tracebacks": tracebacks,
    }


def to_markdown(result: dict) -> str:
    """The per-kind table, the verdict and the RSS series (one sample every ~30 s)."""
    verdict = result["verdict"]
    lines = [
        f"Web soak, {result['model']}; good uploads: {result['photos']}; {result['clients']} "
        f"clients for {result['seconds']:g} s, {round(100 * result['hostile_share'])}% hostile "
        f"uploads; load average {result['load_avg_start']} -> {result['load_avg_end']} "
        f"(max {result['load_avg_max']}) on {result['cpus']} CPUs.",
        "",
        "| upload | documented | sent | as documented | answers | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    kinds = sorted(result["uploads"], key=lambda kind: (kind != GOOD, kind))  # good ones first
    for kind in kinds:
        tally = result["uploads"][kind]
        answers = ", ".join(f"{status}: {n}" for status, n in tally["statuses"].items())
        lines.append(
            f"| {kind} | {tally['expected']} | {tally['sent']} | {tally['as_expected']} | "
            f"{answers or '-'} | {tally['p50_ms']} | {tally['p99_ms']} |"
        )
    rss = result["rss"]
    step = max(1, round(30 / result["sample_every_s"]))
    series = ", ".join(f"{rss_mb:g}" for _, rss_mb, _ in rss["samples"][::step])
    change = verdict["rss_change"]
    lines += [
        "",
        f"Verdict: **{'passed' if verdict['passed'] else 'FAILED'}**. "
        + "; ".join(
            f"{name.replace('_', ' ')}: {'yes' if ok else 'NO'}"
            for name, ok in in_order(verdict["checks"].items(), CHECKS)
        )
        + ".",
        "",
        f"{verdict['good_answered']} of {verdict['good_sent']} good photos answered 200 with "
        f"hashtags ({result['good_per_second']} per second); {verdict['hostile_as_documented']} "
        f"of {verdict['hostile_sent']} hostile uploads got their documented 4xx; "
        f"{verdict['unexpected_5xx']} unexpected 5xx, {verdict['no_answer']} requests without "
        f"an answer, {sum(t['retried_503'] for t in result['uploads'].values())} 503s retried.",
        "",
        f"Server RSS: median {verdict['rss_first_window_mb']} MB over the {rss['window_s']:g} s "
        f"after a {rss['warmup_s']:g} s warm-up, {verdict['rss_last_window_mb']} MB over the "
        f"last {rss['window_s']:g} s: "
        + ("no comparison (too few samples)" if change is None else f"{100 * change:+.1f}%")
        + f" (limit +-{100 * rss['max_change']:g}%). MB every {step * result['sample_every_s']:g}"
        f" s: {series}.",
    ]
    return "\n".join(lines) + "\n"


def _tracebacks(log: Path) -> int:
    return log.read_text(errors="replace").count("Traceback (most recent call last)")


def _healthy(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/health", timeout=30).status_code == 200
    except httpx.HTTPError:
        return False


def run(args: argparse.Namespace) -> dict:
    """Build the model and uploads, start the server, soak it, judge; always stop the server."""
    import tempfile

    from bench.load_web import instagram_photos, realistic_models
    from bench.results_io import save_results
    from taglens.params import load_params

    params = load_params(args.params)
    with tempfile.TemporaryDirectory() as tmp:
        if args.models:
            models, described = args.models, f"the model in {args.models}"
        else:
            models, described = realistic_models(Path(tmp) / "models", args.size)
        photos, photos_text = instagram_photos(args.photos)
        hostile = hostile_uploads(params, photos[0])
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        load_start = round(os.getloadavg()[0], 2)
        # the server warms its model at every batch size first (serve.warm_up): on a busy
        # machine that takes minutes, longer than start_server's default wait
        server = start_server(models, args.params, port, args.log, timeout=START_TIMEOUT_S)
        try:
            if args.nice:
                os.nice(args.nice)  # the client only: the server started at our old priority
            started = time.monotonic()
            with RssSampler(server.pid, args.sample_every) as sampler:
                tallies, hung = soak(
                    url,
                    photos,
                    hostile,
                    clients=args.clients,
                    duration=args.duration,
                    hostile_share=args.hostile_share,
                )
                seconds = round(time.monotonic() - started, 1)
                healthy = _healthy(url)
                sampler.sample()
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    uploads = {kind: tally.summary() for kind, tally in tallies.items()}
    samples = sampler.samples
    verdict = judge(
        uploads,
        samples,
        warmup_s=args.warmup,
        window_s=args.window,
        max_rss_change=args.max_rss_change,
        hung_clients=hung,
        tracebacks=_tracebacks(args.log),
        healthy_after=healthy,
    )
    result = {
        "model": described,
        "photos": photos_text,
        "params": str(args.params),
        "clients": args.clients,
        "duration_s": args.duration,
        "seconds": seconds,
        "hostile_share": args.hostile_share,
        "hostile_kinds": len(hostile),
        "good_per_second": round(uploads[GOOD]["as_expected"] / seconds, 2),
        "load_avg_start": load_start,
        "load_avg_end": round(os.getloadavg()[0], 2),
        "load_avg_max": max(load for *_, load in samples),
        "cpus": os.cpu_count(),
        "client_nice": args.nice,
        "sample_every_s": args.sample_every,
        "uploads": uploads,
        "rss": {
            "warmup_s": args.warmup,
            "window_s": args.window,
            "max_change": args.max_rss_change,
            "samples": samples,
        },
        "verdict": verdict,
    }
    save_results(args.out, args.stem, result, to_markdown(result))
    return result


def build_parser() -> argparse.ArgumentParser:
    """The command line; the defaults are the 10-minute soak of BENCHMARKS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of uploads")
    parser.add_argument("--clients", type=int, default=32, help="clients uploading at once")
    parser.add_argument(
        "--hostile-share",
        type=float,
        default=0.25,
        help="share of uploads drawn from the hostile corpus",
    )
    parser.add_argument(
        "--warmup", type=float, default=60.0, help="seconds before the first RSS window"
    )
    parser.add_argument("--window", type=float, default=60.0, help="seconds per RSS window")
    parser.add_argument(
        "--max-rss-change",
        type=float,
        default=0.10,
        help="the largest relative RSS change that counts as flat",
    )
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--photos", type=int, default=64, help="distinct good photos")
    parser.add_argument("--size", type=int, default=224, help="model input px (no --models)")
    parser.add_argument("--models", type=Path, help="serve this models/ dir instead of MobileNet")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument(
        "--nice",
        type=int,
        default=10,
        help="niceness the client adds to itself once the server runs",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--stem", default="soak_web", help="results file name")
    parser.add_argument("--log", type=Path, default=Path("soak_web_server.log"))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the soak; 0 when every check passed, 1 otherwise."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.clients < 1 or args.duration <= 0 or args.sample_every <= 0:
        parser.error("--clients, --duration and --sample-every must be positive")
    if not 0 <= args.hostile_share < 1:
        parser.error("--hostile-share must be in [0, 1)")
    if args.duration < args.warmup + 2 * args.window:
        parser.error("--duration must cover --warmup and two --window (the RSS windows)")
    result = run(args)
    return 0 if result["verdict"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
