"""Load test of the web app: concurrent uploads to a real uvicorn server on 127.0.0.1.

Two modes, both starting `python -m taglens.serving.web` on a free local port:

- scaling (`--clients 1 32`): the numbers of issue 17. MobileNet 1.0 with the ImageNet weights
  from ../shared/weights behind a softmax over the flower classes, at `--size` px; the uploads
  are the real flowers photos re-encoded to 640x640 JPEG as Instagram serves them. Each client
  count runs `--duration` s, alternating (1, 32, 1, 32, ...) for `--repeats` rounds so both see
  the same machine load; meanwhile a prober loads the page (GET /) every 0.25 s. Reports
  requests/s, p50/p99 latency, the page's latency under load and the 32-to-1 client ratio into
  bench/results/load_web-<size>px.json and .md. Without ../shared it falls back to
  synthetic photos and random weights and says so (the figures are then not comparable).
- leak (`--models DIR`): `--concurrency` clients for `--duration` s, then `--leak` more requests
  and the server's RSS growth over them (psutil), as JSON.

    python -m bench.load_web --clients 1 32 --size 224 --duration 20 --repeats 2
    python -m bench.load_web --models models --duration 20 --concurrency 8 --leak 1000
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.web_costs import ceiling, cpu_breakdown
from bench.web_load_kit import (
    ROOT,
    LoadResult,
    PageProbe,
    cpu_seconds,
    free_port,
    photo,
    pooled,
    rss_mb,
    run_load,
    start_server,
)


def measure(
    models: Path,
    params: Path,
    *,
    duration: float,
    concurrency: int,
    max_requests: int,
    leak_requests: int,
    log: Path,
) -> dict:
    """Start a server, run the load, then the leak check; always stop the server."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    image = photo()
    proc = start_server(models, params, port, log)
    try:
        run_load(url, image, concurrency=concurrency, duration=5, max_requests=50)  # warm-up
        load = run_load(
            url, image, concurrency=concurrency, duration=duration, max_requests=max_requests
        )
        before = rss_mb(proc.pid)
        leak = run_load(
            url, image, concurrency=concurrency, duration=3600, max_requests=leak_requests
        )
        after = rss_mb(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {
        "load": load.summary(),
        "leak": {
            "requests": leak.requests,
            "errors": leak.errors,
            "rss_before_mb": round(before, 1),
            "rss_after_mb": round(after, 1),
            "rss_growth_mb": round(after - before, 1),
        },
        "image_bytes": len(image),
    }


def instagram_photos(count: int, side: int = 640) -> tuple[list[bytes], str]:
    """`count` flowers photos re-encoded to `side` px square JPEG, as Instagram serves them.

    Falls back to synthetic photo-like JPEGs (and says so) when ../shared is absent.
    """
    from PIL import Image

    from bench.predict import FLOWERS

    found = sorted(FLOWERS.rglob("*.jpg"))
    if not found:
        print(
            f"note: no photos under {FLOWERS}: uploading synthetic {side} px JPEGs instead; "
            "the figures are not comparable with BENCHMARKS.md",
            file=sys.stderr,
        )
        return [photo(side, seed) for seed in range(count)], f"synthetic {side}x{side} JPEG"
    step = max(1, len(found) // count)  # spread over the classes
    images = []
    for path in found[::step][:count]:
        buffer = io.BytesIO()
        with Image.open(path) as image:
            image.convert("RGB").resize((side, side), Image.Resampling.LANCZOS).save(
                buffer, format="JPEG", quality=85
            )
        images.append(buffer.getvalue())
    return images, f"{len(images)} flowers photos re-encoded to {side}x{side} JPEG (quality 85)"


def realistic_models(dest: Path, size: int) -> tuple[Path, str]:
    """MobileNet 1.0 (ImageNet weights from ../shared) + a softmax head: a served models/ dir."""
    from bench.predict import FLOWERS, WEIGHTS, build_models

    if not FLOWERS.is_dir():
        sys.exit(
            f"error: {FLOWERS} is absent, so the flower classes and photos are missing: "
            "pass --models DIR (a trained models/ directory) to measure that model"
        )
    weights = WEIGHTS["mobilenet"]
    if not weights.is_file():
        print(
            f"note: {weights} is absent: MobileNet gets random weights (same cost, "
            "meaningless predictions)",
            file=sys.stderr,
        )
    build_models(dest, size, alpha=1.0)
    described = "ImageNet weights" if weights.is_file() else "random weights"
    return dest, f"MobileNet 1.0 ({described}) + softmax head, {size} px"


def unbatched_params(params: Path, dest: Path) -> Path:
    """A copy of `params` whose server runs each upload through its own forward pass."""
    import yaml

    data = yaml.safe_load(params.read_text())
    data["serve"].update(batch_max_size=1, batch_max_wait_ms=0)
    dest.write_text(yaml.safe_dump(data, sort_keys=False))
    return dest


def _page_summary(page: LoadResult) -> dict:
    return {
        "requests": page.requests,
        "errors": page.errors,
        "p50_ms": round(page.percentile_ms(50), 1),
        "p99_ms": round(page.percentile_ms(99), 1),
        "max_ms": round(max(page.latencies_ms, default=float("nan")), 1),
    }


def scaling(
    models: Path,
    servers: dict[str, Path],
    images: list[bytes],
    *,
    clients: list[int],
    duration: float,
    repeats: int,
    log: Path,
) -> dict:
    """Run every (server, client count) arm in turn for `repeats` rounds; pool each arm.

    All servers run at once (an idle one costs no CPU), so the arms alternate within seconds
    and see the same machine load; meanwhile a prober loads the page of the server under load.
    """
    urls, procs, server_pids = {}, [], {}
    arms = [(name, n) for name in servers for n in clients]
    loads: dict = {arm: [] for arm in arms}
    pages: dict = {arm: [] for arm in arms}
    cpu: dict = {arm: [] for arm in arms}  # server, client CPU seconds per run, alternating
    rounds = []
    try:
        for name, params in servers.items():
            port = free_port()
            procs.append(start_server(models, params, port, log.with_suffix(f".{name}.log")))
            urls[name], server_pids[name] = f"http://127.0.0.1:{port}", procs[-1].pid
            for n in sorted(set(clients), reverse=True):  # warm-up: trace the batch shapes
                run_load(urls[name], images, concurrency=n, duration=5, max_requests=10_000)
        for round_index in range(repeats):
            for name, n in arms:
                server_cpu, client_cpu = cpu_seconds(server_pids[name]), time.process_time()
                with PageProbe(urls[name]) as page:
                    load = run_load(
                        urls[name], images, concurrency=n, duration=duration, max_requests=1_000_000
                    )
                server_cpu = cpu_seconds(server_pids[name]) - server_cpu
                client_cpu = time.process_time() - client_cpu
                loads[(name, n)].append(load)
                pages[(name, n)].append(page.result)
                cpu[(name, n)] += [server_cpu, client_cpu]
                rounds.append(
                    {
                        "round": round_index + 1,
                        "server": name,
                        **load.summary(),
                        "page_p99_ms": round(page.result.percentile_ms(99), 1),
                        "server_cpu_s": round(server_cpu, 2),
                        "client_cpu_s": round(client_cpu, 2),
                    }
                )
                print(json.dumps(rounds[-1]), file=sys.stderr, flush=True)
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    measured: dict = {name: {} for name in servers}
    for name, n in arms:
        load = pooled(loads[(name, n)])
        measured[name][str(n)] = {
            **load.summary(),
            "page": _page_summary(pooled(pages[(name, n)])),
            # CPU per request: what each side costs, whatever share of the machine it got
            "server_cpu_ms_per_request": round(1000 * sum(cpu[(name, n)][::2]) / load.requests, 2),
            "client_cpu_ms_per_request": round(1000 * sum(cpu[(name, n)][1::2]) / load.requests, 2),
        }
    return {"servers": measured, "rounds": rounds}


def _cpus(result: dict) -> int:
    """The measuring machine's CPU count (older results hold it only in their ceiling)."""
    return result["cpus"] if "cpus" in result else result["ceiling"]["cores"]


def to_markdown(result: dict) -> str:
    """The results table, the ratios and the targets of issue 17."""
    lines = [
        f"Web load, {result['model']}; uploads: {result['photos']}; "
        f"{result['duration_s']:g} s per run, {result['repeats']} alternating rounds, "
        f"load average {result['load_avg_start']} -> {result['load_avg_end']} on "
        f"{_cpus(result)} CPUs.",
        "",
        "| server | clients | requests | errors | req/s | p50 ms | p99 ms | page (GET /) "
        "p50 / p99 / max ms | CPU ms per request (server, client) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in result["servers"].items():
        for n, row in rows.items():
            page = row["page"]
            lines.append(
                f"| {name} | {n} | {row['requests']} | {row['errors']} | "
                f"{row['requests_per_second']} | {row['p50_ms']} | {row['p99_ms']} | "
                f"{page['p50_ms']} / {page['p99_ms']} / {page['max_ms']} | "
                f"{row['server_cpu_ms_per_request']}, "
                f"{row['client_cpu_ms_per_request']} |"
            )
    if "ratio" in result:
        checks = result["targets"]
        lines += [
            "",
            f"Batched server, {result['ratio_of']}: **{result['ratio']}x** the "
            f"single-client rate (target >= 3: {'met' if checks['ratio'] else 'NOT met'});"
            f" p99 under 2 s: {'met' if checks['p99'] else 'NOT met'}; page under 200 ms "
            f"(p99): {'met' if checks['page'] else 'NOT met'}.",
        ]
    if "batching_gain" in result:
        lines.append(f"Batched against unbatched, same clients: **{result['batching_gain']}x**.")
    if "ceiling" in result:
        top = result["ceiling"]
        lines += [
            "",
            f"The ceiling: at the batched server's {result['ratio_of']} CPU cost per "
            f"request, {top['cores']} cores answer at most "
            f"**{top['most_requests_per_second']} req/s = {top['most_ratio']}x** the "
            f"single-client rate, which already keeps {top['single_client_cores_busy']} "
            f"cores busy; 3x would need at most {top['cpu_ms_per_request_for_3x']} CPU ms "
            "per request.",
        ]
    if "cpu_ms_per_image" in result:
        costs = result["cpu_ms_per_image"]
        lines += [
            "",
            f"Server steps, CPU ms per image (`featurize.engine: {costs['engine']}`, "
            "measured in one process by `bench/web_costs.py`): upload checks and "
            f"normalize {costs['upload_checks_and_normalize']}, decode to pixels "
            f"{costs['decode_to_pixels']}, model and hashtags for one image "
            f"{costs['model_one_image']}, for a batch of {costs['batch']} "
            f"{costs['model_full_batch']}.",
        ]
    return "\n".join(lines) + "\n"


def run_scaling(args: argparse.Namespace) -> dict:
    """Build the model and photos, run the alternating load, summarize against the targets."""
    import tempfile

    from bench.results_io import save_results

    with tempfile.TemporaryDirectory() as tmp:
        if args.models:
            models, described = args.models, f"the model in {args.models}"
        else:
            models, described = realistic_models(Path(tmp) / "models", args.size)
        images, photos_text = instagram_photos(args.photos)
        servers = {"batched": args.params}
        if not args.no_unbatched:
            servers["unbatched"] = unbatched_params(args.params, Path(tmp) / "unbatched.yaml")
        load_start = round(os.getloadavg()[0], 1)
        measured = scaling(
            models,
            servers,
            images,
            clients=args.clients,
            duration=args.duration,
            repeats=args.repeats,
            log=args.log,
        )
        costs = cpu_breakdown(models, args.params, images, max(args.clients))
    result = {
        "model": described,
        "photos": photos_text,
        "size": args.size,
        "photo_bytes_mean": round(sum(map(len, images)) / len(images)),
        "duration_s": args.duration,
        "repeats": args.repeats,
        "load_avg_start": load_start,
        "load_avg_end": round(os.getloadavg()[0], 1),
        "cpu_ms_per_image": costs,
        "cpus": os.cpu_count(),
        **measured,
    }
    low, high = str(min(args.clients)), str(max(args.clients))
    batched = result["servers"]["batched"]
    if low != high:
        result["ratio_of"] = f"{high} clients"
        result["ratio"] = round(
            batched[high]["requests_per_second"] / max(batched[low]["requests_per_second"], 1e-9), 2
        )
        result["targets"] = {
            "ratio": result["ratio"] >= 3,
            "p99": batched[high]["p99_ms"] < 2000,
            "page": batched[high]["page"]["p99_ms"] < 200,
        }
        result["ceiling"] = ceiling(batched[low], batched[high])
    if "unbatched" in result["servers"]:
        unbatched = result["servers"]["unbatched"][high]["requests_per_second"]
        result["batching_gain"] = round(
            batched[high]["requests_per_second"] / max(unbatched, 1e-9), 2
        )
    stem = args.stem or f"load_web-{args.size}px"
    save_results(args.out, stem, result, to_markdown(result))
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the scaling benchmark (`--clients`) or the load + leak check (`--models`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--clients",
        type=int,
        nargs="+",
        help="scaling: these client counts, alternating (e.g. 1 32)",
    )
    parser.add_argument("--size", type=int, default=224, help="scaling: model input px")
    parser.add_argument("--repeats", type=int, default=2, help="scaling: alternating rounds")
    parser.add_argument("--photos", type=int, default=64, help="scaling: distinct photos")
    parser.add_argument(
        "--no-unbatched",
        action="store_true",
        help="scaling: skip the server without batching (batch_max_size 1)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--stem", help="scaling: results file name (default load_web-SIZEpx)")
    parser.add_argument("--models", type=Path, help="a models/ dir from train (leak mode)")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--leak", type=int, default=1000, help="requests for the RSS check")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--log", type=Path, default=Path("load_web_server.log"))
    args = parser.parse_args(argv)
    if args.clients:
        if min(args.clients) < 1:
            parser.error("--clients must be positive")
        run_scaling(args)
        return 0
    if not args.models:
        parser.error("give --clients (scaling) or --models (load + leak check)")
    numbers = measure(
        args.models,
        args.params,
        duration=args.duration,
        concurrency=args.concurrency,
        max_requests=args.max_requests,
        leak_requests=args.leak,
        log=args.log,
    )
    text = json.dumps(numbers, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
