"""A team's shared services, started and stopped as one set: the rehearsal of several machines.

`taglens services start` (and `make services`, and the team tests) run here, each in its own
process group on one host: PostgreSQL (a throwaway cluster from Debian's `postgresql` package),
an MLflow server on it with proxied artifacts (`mlflow-artifacts:/`, so no client needs the
artifact folder), a Prefect server, the work pool's process workers, and a Dask scheduler with
its workers. Each service's pid and log are kept under the services folder (`team.folder`), with
`services.json` naming the URLs a client exports; `stop` ends them in reverse order, whoever
started them. On real machines the same commands run one per machine (docs/team.md).

PostgreSQL refuses to run as root: as root its cluster belongs to the `postgres` user and its
commands run through `runuser`; when that user cannot reach the services folder (a private
temporary folder, say) the cluster lives in a folder of its own under the system's temp folder,
recorded in `services.json` and removed on stop.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from taglens import toolenv
from taglens.errors import TaglensError
from taglens.params import TeamParams

logger = logging.getLogger(__name__)

POSTGRES_BIN = Path(os.environ.get("TAGLENS_POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))
POSTGRES_USER = "postgres"  # the system user Debian's package creates (the server's owner)
DB_ROLE = "taglens"  # the database superuser initdb creates
DB_NAME = "mlflow"
STATE_FILE = "services.json"
# Start order; stop runs it backwards (workers before the servers they talk to).
ORDER = ("postgres", "mlflow", "prefect", "prefect-worker", "dask-scheduler", "dask-worker")
# What `start`/`stop` take by name (`--only`): each group's processes, in ORDER.
GROUPS = {
    "postgres": ("postgres",),
    "mlflow": ("mlflow",),
    "prefect": ("prefect",),
    "prefect-worker": ("prefect-worker",),
    "dask": ("dask-scheduler", "dask-worker"),
}
STOP_TIMEOUT_S = 20.0


class ServiceError(TaglensError):
    """A service that cannot start or be reached; the message says which and where its log is."""


@dataclass
class Endpoints:
    """Where the running services answer, and the environment a client exports to use them."""

    postgres_uri: str
    mlflow_url: str
    prefect_api_url: str
    dask_address: str
    folder: str
    postgres_dir: str
    pids: dict[str, list[int]] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        """The variables every client (stage, flow, batch job, web page, worker) needs."""
        return {
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "PREFECT_API_URL": self.prefect_api_url,
            "TAGLENS_DASK_ADDRESS": self.dask_address,
        }

    def exports(self) -> str:
        """`export KEY=VALUE` lines for a shell."""
        return "\n".join(f"export {key}={value}" for key, value in self.env().items())


def _flags(**options: object) -> list[str]:
    """`--name value` pairs for a command line (`memory_limit=0` gives `--memory-limit 0`)."""
    return [
        part
        for key, value in options.items()
        for part in (f"--{key.replace('_', '-')}", str(value))
    ]


def _bin(name: str) -> str:
    """A console script of this interpreter's environment (mlflow, prefect, dask)."""
    return str(Path(sys.executable).parent / name)


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """Whether `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 - our own URL
            return answer.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def stop_pid_group(pid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """Stop a process started in its own session, its process group and whatever it started.

    SIGTERM first (servers shut down cleanly), SIGKILL after `timeout`; children that left the
    group (Prefect's flow-run processes) are killed by pid. Works for processes this one did not
    start (`taglens services stop` from another shell), and reaps its own children.
    """
    import psutil

    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        children = []
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            psutil.Process(pid).wait(timeout=wait)
            break
        except psutil.TimeoutExpired:
            continue
        except psutil.Error:
            break
    for child in children:
        try:
            child.kill()
        except psutil.Error:
            pass


class Services:
    """The set of services under one folder: start, status, stop (see the module docstring)."""

    def __init__(
        self,
        params: TeamParams,
        folder: Path | None = None,
        *,
        code: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Set up (nothing starts yet).

        Args:
            params: ports, host, worker counts and time-out (params.yaml's `team:`).
            folder: where pids, logs and data go (default `team.folder`, relative to the cwd).
            code: the checkout whose code the Dask workers import (default the cwd).
            env: the environment the services start with (default this process's).
        """
        self.params = params
        self.folder = Path(folder if folder is not None else params.folder).resolve()
        self.code = Path(code or Path.cwd()).resolve()
        self.env = toolenv.apply(dict(os.environ if env is None else env))
        # A client's own settings must not leak into the servers (the worker gets them anew).
        for key in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_HOME"):
            self.env.pop(key, None)
        self.logs = self.folder / "logs"

    # ------------------------------------------------------------------ state
    @property
    def state_path(self) -> Path:
        """`services.json`: the endpoints and pids of what runs."""
        return self.folder / STATE_FILE

    def read_state(self) -> Endpoints | None:
        """The recorded endpoints, or None when nothing was started here."""
        if not self.state_path.is_file():
            return None
        return Endpoints(**json.loads(self.state_path.read_text(encoding="utf-8")))

    def _write_state(self, endpoints: Endpoints) -> None:
        from taglens.atomic import atomic_write_json

        atomic_write_json(self.state_path, asdict(endpoints))

    def endpoints(self, postgres_dir: Path) -> Endpoints:
        """The URLs the configured ports give."""
        host = self.params.host
        return Endpoints(
            postgres_uri=(
                f"postgresql+psycopg://{DB_ROLE}@{host}:{self.params.postgres_port}/{DB_NAME}"
            ),
            mlflow_url=f"http://{host}:{self.params.mlflow_port}",
            prefect_api_url=f"http://{host}:{self.params.prefect_port}/api",
            dask_address=f"tcp://{host}:{self.params.dask_port}",
            folder=str(self.folder),
            postgres_dir=str(postgres_dir),
        )

    # ------------------------------------------------------------------ start
    def start(self, only: Sequence[str] | None = None) -> Endpoints:
        """Start every service (or the groups in `only`) and wait until each answers.

        On any failure what this call started is stopped again. With `only`, the services
        already running here keep running and their endpoints are kept: that is how one
        service is restarted (`stop(only=...)`, then `start(only=...)`), or how workers join
        servers that run elsewhere (`only=["prefect-worker"]` with the server's port in
        params.yaml).

        Raises:
            ServiceError: one of these services already runs here, a port is taken, a tool is
                missing, or a service did not become healthy in `team.start_timeout_s`.
        """
        groups = _groups(only)
        names = [name for group in groups for name in GROUPS[group]]
        existing = self.read_state()
        running = {
            name
            for name, pids in (existing.pids if existing is not None else {}).items()
            if any(_alive(pid) for pid in pids)
        }
        if running & set(names):
            raise ServiceError(
                f"services already run from {self.folder} (see `taglens services status`); "
                "stop them first with `taglens services stop`"
            )
        self._check_ports(groups)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        if existing is not None and running:
            endpoints = existing  # the others' ports and PostgreSQL folder stay as they are
        else:
            # (a folder outside is made only for a PostgreSQL that starts now)
            inside = self.folder / "postgres"
            endpoints = self.endpoints(self._postgres_dir() if "postgres" in groups else inside)
        self._write_state(endpoints)
        starters = {
            "postgres": self._start_postgres,
            "mlflow": self._start_mlflow,
            "prefect": self._start_prefect,
            "prefect-worker": self._start_prefect_workers,
            "dask": self._start_dask,
        }
        try:
            for group in groups:
                starters[group](endpoints)
        except BaseException:
            self.stop(only)
            raise
        logger.info("services up under %s: %s", self.folder, ", ".join(groups))
        return endpoints

    def _check_ports(self, groups: Sequence[str]) -> None:
        p = self.params
        for name, port in (
            ("postgres", p.postgres_port),
            ("mlflow", p.mlflow_port),
            ("prefect", p.prefect_port),
            ("dask", p.dask_port),
        ):
            if name in groups and port_open(p.host, port):
                raise ServiceError(
                    f"port {p.host}:{port} (team.{name}_port) is taken by another program: "
                    f"stop it or choose another port in params.yaml"
                )

    def _log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def _spawn(
        self,
        name: str,
        argv: list[str],
        endpoints: Endpoints,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> int:
        """Start one process in its own session, its output in logs/NAME.log; record its pid."""
        if not Path(argv[0]).exists() and shutil.which(argv[0]) is None:
            raise ServiceError(
                f"{argv[0]} not found: install the project's `team` extra "
                "(`pip install -e '.[team]'`)"
            )
        log = open(self._log(name), "ab")  # noqa: SIM115 - the child keeps it
        with log:
            proc = subprocess.Popen(
                argv,
                env=dict(env or self.env),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                start_new_session=True,
            )
        service = name.rsplit("-", 1)[0] if name[-1].isdigit() else name
        endpoints.pids.setdefault(service, []).append(proc.pid)
        self._write_state(endpoints)
        return proc.pid

    def _wait(self, name: str, pid: int | None, ready, what: str) -> None:
        """Poll `ready()` until true; fail with the log's tail if the process exits or stalls."""
        deadline = time.monotonic() + self.params.start_timeout_s
        while not ready():
            if pid is not None and not _alive(pid):
                raise ServiceError(f"{what} exited during start-up:\n{self._tail(name)}")
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"{what} not ready after {self.params.start_timeout_s:.0f} s "
                    f"(log {self._log(name)}):\n{self._tail(name)}"
                )
            time.sleep(0.3)

    def _tail(self, name: str) -> str:
        path = self._log(name)
        return path.read_text(errors="replace")[-2000:] if path.is_file() else "(no log)"

    # PostgreSQL -----------------------------------------------------------
    def _postgres_dir(self) -> Path:
        """Where the cluster lives: in the folder, unless the postgres user cannot reach it."""
        inside = self.folder / "postgres"
        if os.geteuid() != 0 or _reachable_by(POSTGRES_USER, self.folder):
            return inside
        return Path(tempfile.mkdtemp(prefix="taglens-postgres-"))

    def _as_postgres(self, argv: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", POSTGRES_USER, "--", *argv]
        return argv

    def _start_postgres(self, endpoints: Endpoints) -> None:
        if not (POSTGRES_BIN / "initdb").is_file():
            raise ServiceError(
                f"PostgreSQL is not installed ({POSTGRES_BIN}/initdb missing): `make team-deps` "
                "(as root) or `apt-get install postgresql`; TAGLENS_POSTGRES_BIN names another "
                "bin folder"
            )
        root = Path(endpoints.postgres_dir)
        root.mkdir(parents=True, exist_ok=True)
        data = root / "data"
        if os.geteuid() == 0:
            shutil.chown(root, user=POSTGRES_USER, group=POSTGRES_USER)
        # The server writes its own log: inside its folder, which its user can always write.
        log = root / "server.log"
        if not (data / "PG_VERSION").is_file():
            initdb = [str(POSTGRES_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", DB_ROLE]
            self._run("postgres", self._as_postgres([*initdb, "-E", "UTF8", "--no-sync"]))
        options = f"-p {self.params.postgres_port} -k {root} -c listen_addresses={self.params.host}"
        pg_ctl = [str(POSTGRES_BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options]
        wait = ["-w", "-t", str(int(self.params.start_timeout_s))]
        self._run("postgres", self._as_postgres([*pg_ctl, *wait, "start"]))
        pid = int((data / "postmaster.pid").read_text().split()[0])
        endpoints.pids["postgres"] = [pid]
        self._write_state(endpoints)
        where = ["-h", self.params.host, "-p", str(self.params.postgres_port), "-U", DB_ROLE]
        created = subprocess.run(
            [str(POSTGRES_BIN / "createdb"), *where, DB_NAME],
            capture_output=True,
            text=True,
            env=self.env,
            check=False,
        )
        if created.returncode != 0 and "already exists" not in created.stderr:
            raise ServiceError(f"createdb {DB_NAME} failed: {created.stderr.strip()}")

    def _run(self, name: str, argv: list[str]) -> None:
        with open(self._log(name), "ab") as log:
            done = subprocess.run(
                argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd="/", check=False
            )
        if done.returncode != 0:
            raise ServiceError(
                f"{' '.join(argv[-3:])} failed ({done.returncode}):\n{self._tail(name)}"
            )

    # MLflow ---------------------------------------------------------------
    def _start_mlflow(self, endpoints: Endpoints) -> None:
        artifacts = self.folder / "mlflow-artifacts"
        artifacts.mkdir(exist_ok=True)
        pid = self._spawn(
            "mlflow",
            [
                _bin("mlflow"),
                "server",
                "--serve-artifacts",
                *_flags(
                    backend_store_uri=endpoints.postgres_uri,
                    artifacts_destination=artifacts,
                    host=self.params.host,
                    port=self.params.mlflow_port,
                    workers=2,
                ),
            ],
            endpoints,
        )
        self._wait(
            "mlflow", pid, lambda: http_ok(f"{endpoints.mlflow_url}/health"), "the MLflow server"
        )

    # Prefect --------------------------------------------------------------
    def _prefect_env(self, home: Path, endpoints: Endpoints | None = None) -> dict[str, str]:
        env = {**self.env, "PREFECT_HOME": str(home)}
        if endpoints is not None:
            env.update(endpoints.env())
            env.update(
                {"PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_WORKER_PREFETCH_SECONDS": "5"}
            )
        return env

    def _start_prefect(self, endpoints: Endpoints) -> None:
        home = self.folder / "prefect"
        home.mkdir(exist_ok=True)
        pid = self._spawn(
            "prefect",
            [
                _bin("prefect"),
                "server",
                "start",
                "--no-ui",
                *_flags(host=self.params.host, port=self.params.prefect_port),
            ],
            endpoints,
            env=self._prefect_env(home),
        )
        self._wait(
            "prefect",
            pid,
            lambda: http_ok(f"{endpoints.prefect_api_url}/health"),
            "the Prefect server",
        )

    def _start_prefect_workers(self, endpoints: Endpoints) -> None:
        env = self._prefect_env(self.folder / "prefect-client", endpoints)
        created = subprocess.run(
            [_bin("prefect"), "work-pool", "create", self.params.pool, "--type", "process"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if created.returncode != 0 and "already exists" not in created.stdout + created.stderr:
            raise ServiceError(
                f"cannot create work pool {self.params.pool}: "
                f"{(created.stdout + created.stderr).strip()[-500:]}"
            )
        for number in range(1, self.params.prefect_workers + 1):
            name = f"prefect-worker-{number}"
            home = self.folder / name
            home.mkdir(exist_ok=True)
            worker_env = {**env, "PREFECT_HOME": str(home)}
            pid = self._spawn(
                name,
                # One flow run per worker at a time (--limit 1): a run uses every core
                # (TensorFlow), and a second run waits for the other worker instead.
                [
                    _bin("prefect"),
                    "worker",
                    "start",
                    *_flags(
                        pool=self.params.pool,
                        type="process",
                        limit=1,
                        name=f"{socket.gethostname()}-{number}",
                    ),
                ],
                endpoints,
                env=worker_env,
            )
            self._wait(
                name,
                pid,
                lambda n=name: "started" in self._tail(n).lower(),
                f"Prefect worker {number}",
            )

    # Dask -----------------------------------------------------------------
    def _start_dask(self, endpoints: Endpoints) -> None:
        host = self.params.host
        pid = self._spawn(
            "dask-scheduler",
            [
                _bin("dask"),
                "scheduler",
                "--no-dashboard",
                *_flags(host=host, port=self.params.dask_port),
            ],
            endpoints,
            # The scheduler unpickles task graphs too: it must import the checkout's code.
            env={**self.env, "PYTHONPATH": str(self.code)},
        )
        self._wait(
            "dask-scheduler",
            pid,
            lambda: port_open(host, self.params.dask_port),
            "the Dask scheduler",
        )
        # Workers import the checkout's code (flows.*, taglens.*) and reach MLflow as clients do.
        env = {**self.env, **endpoints.env(), "PYTHONPATH": str(self.code)}
        for number in range(1, self.params.dask_workers + 1):
            self._spawn(
                f"dask-worker-{number}",
                [
                    _bin("dask"),
                    "worker",
                    endpoints.dask_address,
                    "--no-dashboard",
                    *_flags(host=host, nthreads=1, name=f"worker-{number}", memory_limit=0),
                ],
                endpoints,
                env=env,
            )
        self._wait(
            "dask-scheduler",
            pid,
            lambda: self._dask_workers(endpoints) >= self.params.dask_workers,
            "the Dask workers",
        )

    @staticmethod
    def _dask_workers(endpoints: Endpoints) -> int:
        from distributed import Client

        try:
            with Client(endpoints.dask_address, timeout=5) as client:
                return len(client.scheduler_info(n_workers=-1)["workers"])
        except (OSError, TimeoutError):
            return 0

    # ------------------------------------------------------------------ status, stop
    def status(self) -> dict[str, bool]:
        """Each recorded service (postgres, mlflow, ...) -> whether all its processes run."""
        state = self.read_state()
        if state is None:
            return {}
        return {
            name: all(_alive(pid) for pid in state.pids.get(name, []))
            for name in ORDER
            if name in state.pids
        }

    def stop(self, only: Sequence[str] | None = None) -> list[str]:
        """Stop whatever runs from this folder (or the groups in `only`), newest first.

        Returns:
            The services stopped.
        """
        names = {name for group in _groups(only) for name in GROUPS[group]}
        state = self.read_state()
        if state is None:
            return []
        stopped = []
        for name in reversed(ORDER):
            if name not in names:
                continue
            pids = state.pids.pop(name, [])
            if name == "postgres":
                self._stop_postgres(state, pids)
            else:
                for pid in pids:
                    stop_pid_group(pid)
            if pids:
                stopped.append(name)
        outside = Path(state.postgres_dir)
        if only is None and not outside.is_relative_to(self.folder):
            shutil.rmtree(outside, ignore_errors=True)
        self._write_state(state)
        return stopped

    def _stop_postgres(self, state: Endpoints, pids: list[int]) -> None:
        data = Path(state.postgres_dir) / "data"
        if (data / "postmaster.pid").is_file():
            subprocess.run(
                self._as_postgres(
                    [str(POSTGRES_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]
                ),
                capture_output=True,
                env=self.env,
                cwd="/",
                check=False,
            )
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _groups(only: Sequence[str] | None) -> list[str]:
    """The service groups named in `only` (all when None), in start order.

    Raises:
        ServiceError: a name is not a group.
    """
    if only is None:
        return list(GROUPS)
    unknown = sorted(set(only) - set(GROUPS))
    if unknown:
        raise ServiceError(
            f"unknown service {', '.join(unknown)}: choose among {', '.join(GROUPS)}"
        )
    return [group for group in GROUPS if group in only]


def _reachable_by(user: str, folder: Path) -> bool:
    """Whether `user` can enter every folder down to `folder` (or its nearest existing parent)."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    done = subprocess.run(
        ["runuser", "-u", user, "--", "test", "-x", str(probe)], capture_output=True, check=False
    )
    return done.returncode == 0


@contextmanager
def running(params: TeamParams, folder: Path, *, code: Path | None = None) -> Iterator[Endpoints]:
    """Start the services for the length of a `with` block (tests, scripts); always stop them."""
    services = Services(params, folder, code=code)
    endpoints = services.start()
    try:
        yield endpoints
    finally:
        services.stop()


def main(argv: list[str] | None = None) -> int:
    """`taglens services start|stop|status [--params params.yaml] [--folder DIR] [--only ...]`."""
    import argparse

    from taglens.cli import run_main, setup_logging
    from taglens.params import load_params

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="team: section")
    parser.add_argument("--folder", type=Path, default=None, help="default: team.folder")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(GROUPS),
        default=None,
        help="start or stop only these (a restart: stop --only X, start --only X)",
    )
    args = parser.parse_args(argv)
    setup_logging()

    def body() -> int:
        services = Services(load_params(args.params).team, args.folder)
        if args.action == "start":
            endpoints = services.start(args.only)
            print(f"services running; pids and logs in {services.folder}")
            print(f"  PostgreSQL  {endpoints.postgres_uri}  (MLflow's store)")
            print(f"  MLflow      {endpoints.mlflow_url}")
            print(f"  Prefect     {endpoints.prefect_api_url}  (work pool {services.params.pool})")
            print(f"  Dask        {endpoints.dask_address}")
            print("use them from this machine's shells:")
            print(endpoints.exports())
            print("stop them with: taglens services stop  (or make services-stop)")
            return 0
        if args.action == "stop":
            stopped = services.stop(args.only)
            print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
            return 0
        states = services.status()
        if not states:
            print(f"no services started from {services.folder}")
            return 1
        for name, up in states.items():
            print(f"{name:<15} {'running' if up else 'STOPPED'}")
        state = services.read_state()
        if state is not None and all(states.values()):
            print(state.exports())
        return 0 if all(states.values()) else 1

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
