"""Load test of the web app: concurrent uploads to a real uvicorn server on 127.0.0.1.

Starts `python -m taglens.web` on a free local port with the given model, then, for a fixed
duration (bounded by a request count), keeps `--concurrency` clients uploading a photo to
`POST /predict`. Reports requests/s, p50/p99 latency and the error count, then sends `--leak`
more requests and reports the server's RSS growth over them (psutil).

    python -m bench.load_web --models models --duration 20 --concurrency 8 --leak 1000
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

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
        data = {k: v for k, v in asdict(self).items() if k != "latencies_ms"}
        data.update(requests_per_second=round(self.requests_per_second, 2),
                    p50_ms=round(self.percentile_ms(50), 1),
                    p99_ms=round(self.percentile_ms(99), 1))  # fmt: skip
        return data


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


def start_server(models: Path, params: Path, port: int, log: Path,
                 timeout: float = 180) -> subprocess.Popen:  # fmt: skip
    """Start the web app on 127.0.0.1:`port` serving `models` and wait until /health answers."""
    import httpx

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "taglens.web", "--params", str(params), "--model-uri",
           str(models), "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
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


def run_load(url: str, image: bytes, *, concurrency: int, duration: float,
             max_requests: int) -> LoadResult:  # fmt: skip
    """Upload `image` from `concurrency` clients until `duration` s or `max_requests` pass."""
    import httpx

    result = LoadResult(concurrency=concurrency)
    lock = threading.Lock()
    stop_at = time.monotonic() + duration

    def client() -> None:
        with httpx.Client(timeout=60) as session:
            while time.monotonic() < stop_at:
                with lock:
                    if result.requests >= max_requests:
                        return
                    result.requests += 1
                started = time.perf_counter()
                try:
                    status = str(session.post(f"{url}/predict",
                                              files={"file": ("photo.jpg", image)}).status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                elapsed = (time.perf_counter() - started) * 1000
                with lock:
                    result.latencies_ms.append(elapsed)
                    result.statuses[status] = result.statuses.get(status, 0) + 1
                    if status != "200":
                        result.errors += 1

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.monotonic() - started
    return result


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB."""
    import psutil

    return psutil.Process(pid).memory_info().rss / 1e6


def measure(models: Path, params: Path, *, duration: float, concurrency: int, max_requests: int,
            leak_requests: int, log: Path) -> dict:  # fmt: skip
    """Start a server, run the load, then the leak check; always stop the server."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    image = photo()
    proc = start_server(models, params, port, log)
    try:
        run_load(url, image, concurrency=concurrency, duration=5, max_requests=50)  # warm-up
        load = run_load(url, image, concurrency=concurrency, duration=duration,
                        max_requests=max_requests)  # fmt: skip
        before = rss_mb(proc.pid)
        leak = run_load(url, image, concurrency=concurrency, duration=3600,
                        max_requests=leak_requests)  # fmt: skip
        after = rss_mb(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {"load": load.summary(),
            "leak": {"requests": leak.requests, "errors": leak.errors,
                     "rss_before_mb": round(before, 1), "rss_after_mb": round(after, 1),
                     "rss_growth_mb": round(after - before, 1)},
            "image_bytes": len(image)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run the load test and print (and optionally save) the numbers as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True, help="a models/ dir from train")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--leak", type=int, default=1000, help="requests for the RSS check")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--log", type=Path, default=Path("load_web_server.log"))
    args = parser.parse_args(argv)
    numbers = measure(args.models, args.params, duration=args.duration,
                      concurrency=args.concurrency, max_requests=args.max_requests,
                      leak_requests=args.leak, log=args.log)  # fmt: skip
    text = json.dumps(numbers, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
