"""HTTP load pieces for bench.load_web: a server subprocess, upload clients, a page prober."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class LoadResult:
    """What one load run measured."""

    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    concurrency: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    # image index -> the distinct answers recorded for it (see run_load's `answer`)
    answers: dict[int, set] = field(default_factory=dict, repr=False)

    @property
    def requests_per_second(self) -> float:
        """Completed requests (any status) per wall-clock second."""
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float) -> float:
        """The q-th percentile (0..100) of request latency, nearest-rank."""
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
        return ordered[rank]

    def summary(self) -> dict:
        """The JSON form (without the raw latencies)."""
        data = {k: v for k, v in asdict(self).items() if k not in ("latencies_ms", "answers")}
        data.update(
            requests_per_second=round(self.requests_per_second, 2),
            p50_ms=round(self.percentile_ms(50), 1),
            p99_ms=round(self.percentile_ms(99), 1),
        )
        return data


def pooled(loads: list[LoadResult]) -> LoadResult:
    """Several runs of one arm as one: requests, errors, seconds and latencies added up."""
    total = LoadResult(concurrency=loads[0].concurrency)
    for load in loads:
        total.requests += load.requests
        total.errors += load.errors
        total.seconds += load.seconds
        total.latencies_ms += load.latencies_ms
        for status, n in load.statuses.items():
            total.statuses[status] = total.statuses.get(status, 0) + n
    return total


def photo(size: int = 224, seed: int = 0) -> bytes:
    """A photo-like JPEG (gradients plus noise) of `size` pixels square."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size)
    pixels = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], ramp[::-1][None, :]), -1)
    pixels = np.clip(pixels + rng.normal(0, 20, pixels.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    models: Path, params: Path, port: int, log: Path, timeout: float = 180
) -> subprocess.Popen:
    """Start the web app on 127.0.0.1:`port` serving `models` and wait until /health answers."""
    import httpx

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "taglens.serving.web",
        "--params",
        str(params),
        "--model-uri",
        str(models),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    handle = open(log, "w")  # noqa: SIM115 - the server's log, open for its lifetime
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the server did not answer /health within {timeout:.0f} s; see {log}")


def upload(session: Any, url: str, image: bytes) -> Any:
    """POST one photo to the web page's `/predict`, as the page's form does."""
    return session.post(f"{url}/predict", files={"file": ("photo.jpg", image)})


def run_load(
    url: str,
    images: bytes | list[bytes],
    *,
    concurrency: int,
    duration: float,
    max_requests: int,
    send: Callable[[Any, str, bytes], Any] = upload,
    answer: Callable[[Any], Any] | None = None,
) -> LoadResult:
    """Send from `concurrency` clients until `duration` s or `max_requests` pass.

    Each client cycles through `images` from its own starting point (one image: all send it).
    `send(session, url, item)` makes one request (default: an upload to the web page); when
    `answer(response)` is given, what it returns for each 200 answer is recorded under the
    image's index in `LoadResult.answers` (outside the timed part).
    """
    import httpx

    images = [images] if isinstance(images, bytes) else images
    result = LoadResult(concurrency=concurrency)
    lock = threading.Lock()
    stop_at = time.monotonic() + duration

    def client(index: int) -> None:
        with httpx.Client(timeout=60) as session:
            turn = index
            while time.monotonic() < stop_at:
                with lock:
                    if result.requests >= max_requests:
                        return
                    result.requests += 1
                number = turn % len(images)
                turn += concurrency
                started = time.perf_counter()
                response = None
                try:
                    response = send(session, url, images[number])
                    status = str(response.status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                elapsed = (time.perf_counter() - started) * 1000
                seen = answer(response) if answer is not None and status == "200" else None
                with lock:
                    result.latencies_ms.append(elapsed)
                    result.statuses[status] = result.statuses.get(status, 0) + 1
                    if status != "200":
                        result.errors += 1
                    elif answer is not None:
                        result.answers.setdefault(number, set()).add(seen)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.monotonic() - started
    return result


def probe_page(url: str, stop: threading.Event, every_s: float = 0.25) -> LoadResult:
    """GET `url` (the page) every `every_s` until `stop` is set; latencies as a LoadResult."""
    import httpx

    result = LoadResult(concurrency=1)
    started_all = time.monotonic()
    with httpx.Client(timeout=60) as session:
        while not stop.wait(every_s):
            started = time.perf_counter()
            status = str(session.get(url).status_code)
            result.latencies_ms.append((time.perf_counter() - started) * 1000)
            result.requests += 1
            result.statuses[status] = result.statuses.get(status, 0) + 1
            result.errors += status != "200"
    result.seconds = time.monotonic() - started_all
    return result


class PageProbe:
    """`probe_page` in its own process, as a browser would be.

    The load generator's threads share one GIL: a probe among them would measure their waiting
    as well as the server's. Use as a context manager around the load; `result` then holds the
    latencies. `path` is what it loads (the page, `/`, by default).
    """

    def __init__(self, url: str, path: str = "/") -> None:
        self.url = f"{url}{path}"
        self.result = LoadResult(concurrency=1)

    def __enter__(self) -> PageProbe:
        cmd = [sys.executable, "-m", "bench.web_load_kit", self.url]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"  # imports done, probing
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        data = json.loads(out.strip().splitlines()[-1])
        self.result.latencies_ms = data["latencies_ms"]
        self.result.statuses = data["statuses"]
        self.result.requests = len(data["latencies_ms"])
        self.result.errors = sum(n for status, n in data["statuses"].items() if status != "200")
        self.result.seconds = time.monotonic() - self.started


def _probe_main(url: str) -> None:
    """The PageProbe child: probe until SIGTERM, then print the latencies as JSON."""
    import httpx  # noqa: F401 - imported before "ready", so probing starts at once

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    result = probe_page(url, stop)
    print(json.dumps({"latencies_ms": result.latencies_ms, "statuses": result.statuses}))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process (all its threads) has used so far."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and every process under it that is alive now.

    `mlflow models serve` runs its model in uvicorn worker processes below the command's own,
    so a server's cost is its whole tree's.
    """
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB."""
    import psutil

    return psutil.Process(pid).memory_info().rss / 1e6


if __name__ == "__main__":
    _probe_main(sys.argv[1])
