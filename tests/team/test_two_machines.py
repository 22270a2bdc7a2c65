"""Two machines, one team: clone A retrains and hands off, clone B pulls and answers alike.

Two checkouts in separate folders stand for two machines. They share only what machines share:
the team's services on loopback (MLflow on PostgreSQL with proxied artifacts, Prefect, Dask), a
bare git repository and a DVC remote folder. Clone A runs the weekly retrain flow through the
MLflow server (tiny params, 32 px), which registers a champion, pushes the data to the DVC
remote and commits and pushes dvc.lock and params.yaml; A scores the test images. A's folder is
then moved away, so nothing B does can read it. Clone B runs `git pull && dvc pull`, finds
`dvc status` clean, loads `models:/taglens@champion` from the server, scores the same images
through the Dask scheduler, serves the web page and `mlflow models serve`: every answer equals
A's.
"""

from __future__ import annotations

import base64
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers.params import write_tiny_params
from tests.helpers.repocopy import copy_source_tree
from tests.helpers.servers import free_port, stop_process, wait_until_healthy
from tests.helpers.stages import DVC, stage_env

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

BRANCH = "main"


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 900) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _git(cwd: Path, *args: str) -> str:
    return _run(["git", "-c", "user.email=a@team", "-c", "user.name=a", *args], cwd, stage_env())


def _rows(path: Path) -> dict[str, dict[str, str]]:
    """A batch predict CSV by image content (paths differ between the two machines)."""
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["sha256"]: row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def machines(tmp_path_factory, team_services):
    """Run machine A's part; return (root, A's moved folder, A's scores, the team's env)."""
    root = tmp_path_factory.mktemp("machines")
    origin = root / "origin.git"
    _run(["git", "init", "-q", "--bare", "-b", BRANCH, str(origin)], root, stage_env())
    env = stage_env(**team_services.env(), TAGLENS_PYTHON=sys.executable)

    # Machine A: a checkout with the tiny params, handing off to `origin main`. The committed
    # DVC remote (../taglens-dvc-remote, beside the checkout) stands for an S3 bucket.
    a = copy_source_tree(root / "a")
    write_tiny_params(a / "params.yaml", {"team.git_branch": BRANCH, "team.git_remote": "origin"})
    _git(a, "init", "-q", "-b", BRANCH)
    _git(a, "add", "-A")
    _git(a, "commit", "-qm", "taglens")
    _git(a, "remote", "add", "origin", str(origin))
    _git(a, "push", "-q", "origin", BRANCH)
    out = _run([sys.executable, "-m", "flows.training", str(a)], a, env)
    (root / "a-training.log").write_text(out)
    _run([sys.executable, "-m", "stages.summary", "--list-test-images", "a-test.txt"], a, env)
    _run(
        [
            sys.executable,
            "-m",
            "stages.predict",
            "--input",
            "a-test.txt",
            "--output",
            str(root / "a-scores.csv"),
        ],
        a,
        env,
    )
    moved = root / "moved-away"
    shutil.move(a, moved)
    return root, moved, _rows(root / "a-scores.csv"), env


def test_a_retrain_registers_a_champion_on_the_server_and_hands_off(machines, team_services):
    import mlflow

    root, moved, scores, _ = machines
    out = (root / "a-training.log").read_text()
    assert "pushed to DVC remote storage" in out
    # The hand-off commit is on origin: dvc.lock and params.yaml, nothing else
    log = _git(root / "origin.git", "log", "--format=%s", BRANCH).splitlines()
    assert len(log) == 2 and log[0].startswith("Retrain: dvc.lock and params.yaml")
    files = _git(root / "origin.git", "show", "--name-only", "--format=", BRANCH).split()
    assert sorted(files) == ["dvc.lock"]  # params.yaml was committed unchanged at the start
    # The champion lives on the server, its artifacts behind it, named without A's folders
    client = mlflow.MlflowClient(
        tracking_uri=team_services.mlflow_url, registry_uri=team_services.mlflow_url
    )
    champion = client.get_model_version_by_alias("taglens", "champion")
    run = client.get_run(champion.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    # (MLflow's own git tag names the git remote, the one address both machines share)
    tags = dict(run.data.tags)
    assert tags.pop("mlflow.source.git.repoURL") == str(root / "origin.git")
    recorded = json.dumps(
        {
            "params": run.data.params,
            "tags": tags,
            "version_tags": champion.tags,
            "source": champion.source,
            "datasets": [i.dataset.source for i in run.inputs.dataset_inputs],
        }
    )
    assert str(root) not in recorded and "/tmp/" not in recorded, recorded
    assert run.data.tags["mlflow.source.name"] == "stages/train.py"
    assert len(scores) > 0 and all(not row["error"] for row in scores.values())


def test_machine_b_pulls_and_answers_like_machine_a(machines, team_services, tmp_path):
    root, moved, a_scores, env = machines
    assert not (root / "a").exists()

    # Given machine B's clone after `git pull && dvc pull`
    b = root / "b"
    _run(["git", "clone", "-q", "-b", BRANCH, str(root / "origin.git"), str(b)], root, env)
    _run(["git", "pull", "-q"], b, env)
    _run([DVC, "pull", "-q"], b, env)
    # Then its outputs are exactly the ones dvc.lock names
    assert json.loads(_run([DVC, "status", "--json"], b, env) or "{}") == {}
    for path in ("models/model.keras", "reports/metrics.json", "data/clean/manifest.csv"):
        assert (b / path).read_bytes() == (moved / path).read_bytes(), path

    # When B scores the same test images through the Dask scheduler, with the server's champion
    _run([sys.executable, "-m", "stages.summary", "--list-test-images", "b-test.txt"], b, env)
    _run(
        [
            sys.executable,
            "-m",
            "flows.predict",
            "--input",
            "b-test.txt",
            "--output",
            str(root / "b-scores.csv"),
            "--task-runner",
            "dask",
            "--scheduler-address",
            team_services.dask_address,
        ],
        b,
        env,
    )
    b_scores = _rows(root / "b-scores.csv")
    # Then every image gets A's answer, from the same champion version
    assert set(b_scores) == set(a_scores)
    for sha, row in b_scores.items():
        theirs = a_scores[sha]
        assert (row["top_class"], row["model_version"]) == (
            theirs["top_class"],
            theirs["model_version"],
        )
        assert json.loads(row["hashtags"]) == json.loads(theirs["hashtags"])
        assert float(row["top_probability"]) == pytest.approx(
            float(theirs["top_probability"]), abs=1e-5
        )

    # And B's web page and `mlflow models serve` of the server's champion answer one image as
    # A scored it
    sha, expected = sorted(a_scores.items())[0]
    image = Path(b_scores[sha]["path"])
    web_port = free_port()
    serve_port = free_port()
    commands = {
        "web page": [sys.executable, "-m", "taglens.serving.web", "--port", str(web_port)],
        "mlflow models serve": [
            str(Path(sys.executable).parent / "mlflow"),
            "models",
            "serve",
            "-m",
            "models:/taglens@champion",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(serve_port),
        ],
    }
    servers = {}
    try:
        for what, command in commands.items():
            log = open(tmp_path / f"{what}.log", "wb")  # noqa: SIM115 - the child writes it
            with log:
                servers[what] = subprocess.Popen(
                    command,
                    cwd=b,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        web_url = f"http://127.0.0.1:{web_port}"
        wait_until_healthy(
            servers["web page"],
            f"{web_url}/health",
            timeout=240,
            log_path=tmp_path / "web page.log",
            what="web page",
        )
        answer = httpx.post(
            f"{web_url}/predict", timeout=60, files={"file": (image.name, image.read_bytes())}
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["top_class"] == expected["top_class"]
        assert str(body["model"]["version"]) == expected["model_version"]
        # the page scores the upload normalized as ingest stores photos (re-encoded JPEG), batch
        # predict the file as it is: the champion's answer to the normalized upload is the page's
        page_expected = _champion_on_normalized(b, image)
        assert body["top_probability"] == pytest.approx(page_expected, abs=1e-4)
        assert body["top_probability"] == pytest.approx(
            float(expected["top_probability"]), abs=0.02
        )

        serve_url = f"http://127.0.0.1:{serve_port}"
        wait_until_healthy(
            servers["mlflow models serve"],
            f"{serve_url}/ping",
            timeout=240,
            log_path=tmp_path / "mlflow models serve.log",
            what="mlflow models serve",
        )
        request = {
            "dataframe_split": {
                "columns": ["image"],
                "data": [[base64.b64encode(image.read_bytes()).decode()]],
            }
        }
        answer = httpx.post(f"{serve_url}/invocations", json=request, timeout=60)
        assert answer.status_code == 200, answer.text
        [served] = answer.json()["predictions"]
        assert served["top_class"] == expected["top_class"]
        assert served["top_probability"] == pytest.approx(page_expected, abs=1e-4)
    finally:
        for server in servers.values():
            stop_process(server)


def _champion_on_normalized(clone: Path, image: Path) -> float:
    """The top probability of the clone's model for `image` normalized as ingest stores it.

    Re-encoding a JPEG moves a few pixels across the colour histogram's bins, which a head that
    reads the colour view sees (a few thousandths of probability on these photos), so the
    servers, which normalize every upload, are compared with this and not with batch predict.
    """
    from taglens.data.images import normalize_image
    from taglens.model.predictor import HashtagPredictor
    from taglens.params.loader import load_params

    ingest = load_params(clone / "params.yaml").ingest
    predictor = HashtagPredictor.from_dir(clone / "models")
    jpeg = normalize_image(image.read_bytes(), ingest).jpeg
    return float(predictor.probabilities(predictor.decode([jpeg])).max())
