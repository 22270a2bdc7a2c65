"""Serving side by side: one registered champion under `taglens serve` and `mlflow models serve`.

The model (MobileNet 1.0 with the ImageNet weights from ../shared/weights, assembled as train
assembles the served model: the image and its mirror averaged, plus the colour view, 224 px) is
logged as the taglens pyfunc and registered as `@champion` in a throwaway MLflow store. Three
servers then serve that one version on 127.0.0.1, started at once (an idle server costs no CPU):

- `taglens serve` (the web page: dynamic batching, params.yaml's `serve:` section);
- `mlflow models serve --env-manager local` with its defaults (one uvicorn worker);
- the same with `-w 2`, the workers the machine's 2 cores allow.

Every (server, client count) arm runs `--duration` s with clients sending the same photos
back-to-back: the flowers photos re-encoded to 640x640 JPEG as Instagram serves them, uploaded
to the page's `POST /predict`, or base64 in the pyfunc's `{"dataframe_split": {"columns":
["image"], ...}}` to `POST /invocations`. A separate process loads the page (`GET /`; `GET
/ping` for mlflow) every 0.25 s during each arm. Batch predict (the whole `taglens predict`
command, on the same photos as files, same champion) takes its turn in every round as the
ceiling: the rate the model allows on this machine. The arms' order rotates each round so all
see the same load. Reported per arm: requests/s, p50/p99 latency, the page's latency under
load, CPU ms per request of the server's whole process tree (psutil; mlflow's workers are
child processes) and of the load generator; the ratios taglens/mlflow and taglens/ceiling at
each client count; whether every server gave each photo the same top class and top hashtags.
Then `bench/web_costs.py` splits the page's CPU per image into its steps.

    python -m bench.serve_compare --clients 1 32 --duration 10 --repeats 2

takes about 5 minutes on 2 quiet cores (about 1 minute starting the three servers and warming
them up, then two rounds of 6 arms x 10 s plus one batch predict command of about 20 s, then the
step costs), longer on a busy machine. Writes bench/results/serve_compare.json and .md.
`--models DIR --params FILE` serves another models/ directory (the tests use a tiny one).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.web_load_kit import (
    ROOT,
    PageProbe,
    free_port,
    pooled,
    run_load,
    tree_cpu_seconds,
)

TAGLENS = "taglens serve"
MLFLOW = "mlflow models serve"
MLFLOW_W2 = "mlflow models serve -w 2"
PREDICT = "batch predict"
SERVERS = (TAGLENS, MLFLOW, MLFLOW_W2)
TOP_TAGS = 3  # answers agree when the top class and these top hashtags are the same
BIN = Path(sys.executable).parent  # the venv's console scripts: taglens, mlflow, uvicorn
_RATE = re.compile(r"\(([\d.]+) img/s\)")  # batch predict's summary line (PredictResult.summary)


@dataclass(frozen=True)
class Server:
    """How to start one server and talk to it."""

    name: str
    command: list[str]
    ready: str  # the path that answers 200 once the model is loaded
    page: str  # the path the prober loads under load
    send: Callable[[Any, str, bytes], Any]
    answer: Callable[[Any], tuple]


def _upload(session: Any, url: str, item: bytes) -> Any:
    return session.post(f"{url}/predict", files={"file": ("photo.jpg", item)})


def _invoke(session: Any, url: str, item: bytes) -> Any:
    # `item` is the request body already encoded (see `mlflow_bodies`): the clients' own CPU
    # then goes to sending, as for the uploads
    return session.post(
        f"{url}/invocations", content=item, headers={"Content-Type": "application/json"}
    )


def top_answer(prediction: dict) -> tuple:
    """The top class and the first TOP_TAGS hashtags of one prediction."""
    return (prediction["top_class"], *[h["tag"] for h in prediction["hashtags"][:TOP_TAGS]])


def _page_answer(response: Any) -> tuple:
    return top_answer(response.json())


def _mlflow_answer(response: Any) -> tuple:
    return top_answer(response.json()["predictions"][0])


def mlflow_bodies(images: list[bytes]) -> list[bytes]:
    """One `/invocations` JSON body per photo: the pyfunc's `image` column, base64."""
    return [
        json.dumps(
            {
                "dataframe_split": {
                    "columns": ["image"],
                    "data": [[base64.b64encode(image).decode()]],
                }
            }
        ).encode()
        for image in images
    ]


def servers(params: Path, uri: str, port: dict[str, int]) -> dict[str, Server]:
    """The servers of the comparison that have a port in `port`, on those ports."""

    def taglens() -> list[str]:
        return [
            str(BIN / "taglens"),
            "serve",
            "--params",
            str(params),
            "--model-uri",
            uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port[TAGLENS]),
        ]

    def mlflow(name: str, workers: list[str]) -> list[str]:
        return [
            str(BIN / "mlflow"),
            "models",
            "serve",
            "-m",
            uri,
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port[name]),
            *workers,
        ]

    every = {
        TAGLENS: lambda: Server(TAGLENS, taglens(), "/health", "/", _upload, _page_answer),
        MLFLOW: lambda: Server(
            MLFLOW, mlflow(MLFLOW, []), "/ping", "/ping", _invoke, _mlflow_answer
        ),
        MLFLOW_W2: lambda: Server(
            MLFLOW_W2, mlflow(MLFLOW_W2, ["-w", "2"]), "/ping", "/ping", _invoke, _mlflow_answer
        ),
    }
    return {name: make() for name, make in every.items() if name in port}


def child_env(store: Path) -> dict[str, str]:
    """The environment of every command: the throwaway store, this checkout's code, quiet tools."""
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}",
        "PYTHONPATH": str(ROOT),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONUNBUFFERED": "1",
    }


def register_champion(models: Path, params_path: Path, store: Path) -> str:
    """Log `models` as the taglens pyfunc, register it and make it `@champion`; its URI."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
    import mlflow
    from mlflow import MlflowClient

    from taglens.model.pyfunc import log_taglens_model
    from taglens.params import load_params
    from taglens.tracking import configure_tracking

    params = load_params(params_path)
    configure_tracking(params.base.experiment, store=store)
    name = params.register.model_name
    with mlflow.start_run(run_name="serve_compare"):
        logged = log_taglens_model(
            models,
            ingest=params.ingest,
            max_upload_mb=params.serve.max_upload_mb,
            engine=params.featurize.engine,
        )
    version = mlflow.register_model(logged.model_uri, name).version
    MlflowClient().set_registered_model_alias(name, "champion", version)
    return f"models:/{name}@champion"


def start(
    server: Server, url: str, env: dict[str, str], log: Path, timeout: float = 300
) -> subprocess.Popen:
    """Start `server` in its own session and wait until it answers `server.ready`."""
    import httpx

    handle = open(log, "w")  # noqa: SIM115 - the server's log, open for its lifetime
    proc = subprocess.Popen(
        server.command,
        cwd=ROOT,
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(f"{url}{server.ready}", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop(proc)
    raise RuntimeError(f"{server.name} did not answer within {timeout:.0f} s; see {log}")


def stop(proc: subprocess.Popen) -> None:
    """Stop a server started by `start` and every process it started."""
    import signal

    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass


def batch_predict(params: Path, photos: Path, uri: str, out: Path, env: dict[str, str]) -> dict:
    """One whole `taglens predict` command over `photos`: its own rate and the command's cost."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    cmd = [
        str(BIN / "taglens"),
        "predict",
        "--params",
        str(params),
        "--input",
        str(photos),
        "--output",
        str(out),
        "--model-uri",
        uri,
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    rate = _RATE.search(done.stdout)
    if done.returncode or rate is None or " 0 errors" not in done.stdout:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-1000:]}{done.stderr[-2000:]}")
    images = len(list(photos.glob("*.jpg")))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # the job's own rate (listing, reading, hashing, decoding, model, Parquet), without the
    # command's start-up and model load: what the servers are compared with
    return {
        "images": images,
        "job_img_s": float(rate.group(1)),
        "job_s": images / float(rate.group(1)),
        "command_wall_s": round(wall, 2),
        "command_cpu_s": round(cpu, 2),
    }


def measure(
    names: list[str],
    images: list[bytes],
    *,
    clients: list[int],
    duration: float,
    repeats: int,
    params: Path,
    uri: str,
    photos: Path,
    env: dict[str, str],
    logs: Path,
    warmup: float = 5.0,
) -> dict:
    """Start the `names` servers, run every arm `repeats` times in rotating order, stop them.

    Returns the raw runs: per arm (`server|clients`) a list of {load, page, server_cpu_s,
    client_cpu_s}, batch predict's runs, and each server's answers per photo.
    """
    ports = {name: free_port() for name in names}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    chosen = servers(params, uri, ports)
    bodies = mlflow_bodies(images)
    payloads = {name: bodies if chosen[name].send is _invoke else images for name in names}
    procs: dict[str, subprocess.Popen] = {}
    runs: dict[str, list] = {f"{name}|{n}": [] for name in urls for n in clients}
    predict_runs: list[dict] = []
    answers: dict[str, dict[int, set]] = {name: {} for name in urls}
    arms = [*runs, PREDICT]
    try:
        for name in urls:
            procs[name] = start(chosen[name], urls[name], env, logs / f"{name}.log")
        for name in urls:  # warm-up: each batch shape the load will bring, traced once
            for n in sorted(set(clients), reverse=True):
                run_load(
                    urls[name],
                    payloads[name],
                    concurrency=n,
                    duration=warmup,
                    max_requests=10_000,
                    send=chosen[name].send,
                )
        for round_index in range(repeats):
            shift = round_index % len(arms)
            for arm in arms[shift:] + arms[:shift]:
                if arm == PREDICT:
                    out = photos.parent / f"predict-{round_index}.parquet"
                    predict_runs.append(batch_predict(params, photos, uri, out, env))
                    print(
                        json.dumps({"round": round_index + 1, PREDICT: predict_runs[-1]}),
                        file=sys.stderr,
                        flush=True,
                    )
                    continue
                name, n = arm.split("|")
                server = chosen[name]
                server_cpu = tree_cpu_seconds(procs[name].pid)
                client_cpu = time.process_time()
                with PageProbe(urls[name], server.page) as page:
                    load = run_load(
                        urls[name],
                        payloads[name],
                        concurrency=int(n),
                        duration=duration,
                        max_requests=1_000_000,
                        send=server.send,
                        answer=server.answer,
                    )
                server_cpu = tree_cpu_seconds(procs[name].pid) - server_cpu
                client_cpu = time.process_time() - client_cpu
                for index, seen in load.answers.items():
                    answers[name].setdefault(index, set()).update(seen)
                runs[arm].append(
                    {
                        "load": load,
                        "page": page.result,
                        "server_cpu_s": server_cpu,
                        "client_cpu_s": client_cpu,
                    }
                )
                print(
                    json.dumps(
                        {
                            "round": round_index + 1,
                            "arm": arm,
                            **load.summary(),
                            "server_cpu_s": round(server_cpu, 2),
                        }
                    ),
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        for proc in procs.values():
            stop(proc)
    return {"runs": runs, "predict": predict_runs, "answers": answers}


def agreement(answers: dict[str, dict[int, set]], examples: int = 3) -> dict:
    """Of the photos every server answered, how many got one same top class and hashtags.

    A server at a lower rate may not reach every photo in its arms; those photos are left out.
    Up to `examples` photos that got more than one answer are listed with every server's.
    """
    photos = sorted(set.intersection(*(set(seen) for seen in answers.values())))
    same, differing = 0, []
    for i in photos:
        given = {name: seen[i] for name, seen in answers.items()}
        if len(set().union(*given.values())) == 1:
            same += 1
        elif len(differing) < examples:
            answered = {name: sorted(list(a) for a in seen) for name, seen in given.items()}
            differing.append({"photo": i, **answered})
    return {
        "photos": len(photos),
        "same_answer": same,
        "top_tags": TOP_TAGS,
        "differing": differing,
    }


def _ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b > 0 else float("nan")


def summarize(runs: dict[str, list[dict]], predict_runs: list[dict]) -> dict:
    """Each arm pooled over its rounds, the ceiling, and the ratios at each client count.

    Args:
        runs: `server|clients` -> one dict per round: `load` and `page` (LoadResults),
            `server_cpu_s` and `client_cpu_s` (that round's CPU seconds).
        predict_runs: batch predict's runs (`images`, `job_s`, `command_wall_s`,
            `command_cpu_s`).
    """
    arms: dict[str, dict[str, dict]] = {}
    for arm, rounds in runs.items():
        name, n = arm.split("|")
        load = pooled([r["load"] for r in rounds])
        page = pooled([r["page"] for r in rounds])
        served = max(load.requests - load.errors, 1)
        arms.setdefault(name, {})[n] = {
            **load.summary(),
            "page": {
                "requests": page.requests,
                "errors": page.errors,
                "p50_ms": round(page.percentile_ms(50), 1),
                "p99_ms": round(page.percentile_ms(99), 1),
                "max_ms": round(max(page.latencies_ms, default=float("nan")), 1),
            },
            "server_cpu_ms_per_request": round(
                1000 * sum(r["server_cpu_s"] for r in rounds) / served, 2
            ),
            "client_cpu_ms_per_request": round(
                1000 * sum(r["client_cpu_s"] for r in rounds) / served, 2
            ),
        }
    images = sum(run["images"] for run in predict_runs)
    ceiling = {
        "runs": len(predict_runs),
        "images_per_run": predict_runs[0]["images"] if predict_runs else 0,
        "img_s": round(images / sum(run["job_s"] for run in predict_runs), 2),
        "img_s_by_run": [round(run["images"] / run["job_s"], 2) for run in predict_runs],
        "command_wall_s": [run["command_wall_s"] for run in predict_runs],
        "command_cpu_ms_per_image": round(
            1000 * sum(run["command_cpu_s"] for run in predict_runs) / images, 2
        ),
    }
    ratios: dict[str, dict[str, float]] = {}
    for n, row in arms.get(TAGLENS, {}).items():
        rate = row["requests_per_second"]
        ratios[n] = {"over_ceiling": _ratio(rate, ceiling["img_s"])}
        for other in (MLFLOW, MLFLOW_W2):
            if n in arms.get(other, {}):
                ratios[n][f"over {other}"] = _ratio(rate, arms[other][n]["requests_per_second"])
    return {"servers": arms, "ceiling": ceiling, "ratios": ratios}


def targets(result: dict) -> dict:
    """Issue 25's targets at the most clients: ceiling, mlflow, p99 and the page."""
    top = str(max(int(n) for n in result["servers"][TAGLENS]))
    row = result["servers"][TAGLENS][top]
    ratios = result["ratios"][top]
    over_mlflow = [v for k, v in ratios.items() if k.startswith("over mlflow")]
    return {
        "clients": int(top),
        "ceiling": ratios["over_ceiling"] >= 0.95,
        "mlflow": bool(over_mlflow) and min(over_mlflow) >= 1.5,
        "p99": row["p99_ms"] < 2000,
        "page": row["page"]["p99_ms"] < 200,
    }


def cpu_split(result: dict) -> dict:
    """The page's CPU per request at the most clients, less the steps `web_costs` measured."""
    top = str(result["targets"]["clients"])
    server = result["servers"][TAGLENS][top]["server_cpu_ms_per_request"]
    costs = result["cpu_ms_per_image"]
    steps = (
        costs["upload_checks_and_normalize"] + costs["decode_to_pixels"] + costs["model_full_batch"]
    )
    return {
        "clients": int(top),
        "server_ms": server,
        "steps_ms": round(steps, 2),
        "rest_ms": round(server - steps, 2),
    }


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def to_markdown(result: dict) -> str:
    """The side-by-side table, the ceiling, the ratios and the targets."""
    ceiling = result["ceiling"]
    lines = [
        f"{result['model']}, registered as `@champion` and served by each server; "
        f"uploads: {result['photos']}; {result['duration_s']:g} s per arm, "
        f"{result['repeats']} rounds in rotating order, load average "
        f"{result['load_avg_start']} -> {result['load_avg_end']} on {result['cpus']} CPUs.",
        "",
        "| server | clients | requests | errors | req/s | p50 ms | p99 ms "
        "| page p50 / p99 / max ms | CPU ms per request (server tree, client) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in [name for name in SERVERS if name in result["servers"]]:
        for n, row in result["servers"][name].items():
            page = row["page"]
            lines.append(
                f"| `{name}` | {n} | {row['requests']} | {row['errors']} "
                f"| {row['requests_per_second']} | {row['p50_ms']} | {row['p99_ms']} "
                f"| {page['p50_ms']} / {page['p99_ms']} / {page['max_ms']} "
                f"| {row['server_cpu_ms_per_request']}, "
                f"{row['client_cpu_ms_per_request']} |"
            )
    rates = ", ".join(str(x) for x in ceiling["img_s_by_run"])
    walls = ", ".join(str(x) for x in ceiling["command_wall_s"])
    lines += [
        "",
        f"The ceiling, `taglens predict` on the same photos as files (the job's own rate, "
        f"{ceiling['runs']} runs of {ceiling['images_per_run']} photos): "
        f"**{ceiling['img_s']} img/s** (by run: {rates}; whole commands {walls} s, "
        f"{ceiling['command_cpu_ms_per_image']} CPU ms per image with start-up).",
        "",
    ]
    others = [k for k in next(iter(result["ratios"].values())) if k.startswith("over mlflow")]
    header = ["clients", "taglens / ceiling", *[f"taglens / `{k[5:]}`" for k in others]]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for n, ratios in result["ratios"].items():
        cells = [n, ratios["over_ceiling"], *[ratios[k] for k in others]]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    checks, agree = result["targets"], result["answers"]
    lines += [
        "",
        f"Targets at {checks['clients']} clients: taglens >= 0.95 of the ceiling "
        f"{_met(checks['ceiling'])}; >= 1.5x every `mlflow models serve` "
        f"{_met(checks['mlflow'])}; p99 under 2 s {_met(checks['p99'])}; page p99 under "
        f"200 ms {_met(checks['page'])}. Same top class and top {agree['top_tags']} "
        f"hashtags from every server: {agree['same_answer']} of the {agree['photos']} "
        "photos all of them answered.",
    ]
    if "cpu_ms_per_image" in result:
        costs, split = result["cpu_ms_per_image"], result["cpu_split"]
        lines += [
            "",
            f"Where a request's CPU goes (`featurize.engine: {costs['engine']}`, each step "
            "measured alone in one process by `bench/web_costs.py`, ms per image): upload checks "
            f"and normalize {costs['upload_checks_and_normalize']}, decode to pixels "
            f"{costs['decode_to_pixels']}, model and hashtags {costs['model_full_batch']} in a "
            f"batch of {costs['batch']} ({costs['model_one_image']} alone); the rest of the "
            f"{split['server_ms']} ms a request cost the server at {split['clients']} clients "
            f"(HTTP, multipart, JSON, batching, threads): {split['rest_ms']}. Batch predict's "
            f"decode of the photo as sent: {costs.get('decode_as_sent', 'not measured')}.",
        ]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict:
    """Build and register the model, run the comparison, summarize it, save it."""
    from bench.load_web import instagram_photos, realistic_models
    from bench.results_io import save_results
    from bench.web_costs import cpu_breakdown

    load_start = round(os.getloadavg()[0], 1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if args.models:
            models, described = args.models, f"the model in {args.models}"
        else:
            models, described = realistic_models(tmp_path / "models", args.size)
        images, photos_text = instagram_photos(args.photos)
        photos = tmp_path / "photos" / "in"
        photos.mkdir(parents=True)
        for number, image in enumerate(images):
            (photos / f"{number:05d}.jpg").write_bytes(image)
        store = tmp_path / "mlruns"
        uri = register_champion(models, args.params, store)
        logs = args.logs or tmp_path
        logs.mkdir(parents=True, exist_ok=True)
        raw = measure(
            args.servers,
            images,
            clients=args.clients,
            duration=args.duration,
            repeats=args.repeats,
            params=args.params,
            uri=uri,
            photos=photos,
            env=child_env(store),
            logs=logs,
            warmup=args.warmup,
        )
        costs = (
            None if args.no_costs else cpu_breakdown(models, args.params, images, max(args.clients))
        )
    result = {
        "model": described,
        "photos": photos_text,
        "photo_bytes_mean": round(sum(map(len, images)) / len(images)),
        "duration_s": args.duration,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "load_avg_start": load_start,
        "load_avg_end": round(os.getloadavg()[0], 1),
        **summarize(raw["runs"], raw["predict"]),
        "answers": agreement(raw["answers"]),
    }
    result["targets"] = targets(result)
    if costs is not None:
        result["cpu_ms_per_image"] = costs
        result["cpu_split"] = cpu_split(result)
    save_results(args.out, args.stem, result, to_markdown(result))
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the side-by-side comparison; write `<stem>.json` and `.md` under --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per arm")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of every arm")
    parser.add_argument(
        "--photos",
        type=int,
        default=256,
        help="distinct flowers photos, uploaded in turn and batch-predicted",
    )
    parser.add_argument("--size", type=int, default=224, help="model input px")
    parser.add_argument("--models", type=Path, help="serve this models/ dir instead")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=SERVERS)
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds per server first")
    parser.add_argument("--no-costs", action="store_true", help="skip bench/web_costs.py")
    parser.add_argument("--logs", type=Path, help="keep the servers' logs here")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--stem", default="serve_compare")
    args = parser.parse_args(argv)
    if min(args.clients) < 1 or args.duration <= 0 or args.repeats < 1:
        parser.error("--clients, --duration and --repeats must be positive")
    if TAGLENS not in args.servers:
        parser.error(f"--servers must include {TAGLENS!r}: the ratios are taglens's")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
