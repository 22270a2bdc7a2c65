"""The lines of SECURITY.md that no other test holds: secrets, de-identification, binding, loading.

Each test names the SECURITY.md line it holds in its docstring.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from reliability_kit import FAKE_SECRET, ROOT

from tests.helpers.params import tiny_params_path
from tests.helpers.servers import free_port, wait_until_healthy

SALT = "reliability-salt-" + "x" * 16


def _files(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]


@pytest.fixture
def instagram_scrape(tiny_params, tmp_path, monkeypatch, caplog):
    """A scrape of the offline Instagram with a session file and a salt; returns what it left."""
    responses = pytest.importorskip("responses")
    from stages.scrape import run
    from tests.fixtures.instagram.fake import SESSION_ID, FakeInstagram, write_session

    monkeypatch.setenv(tiny_params.scrape.instagram.owner_salt_env, SALT)
    # The stage asks instaloader to pause politely between requests; the fake needs no pauses.
    from instaloader.instaloadercontext import InstaloaderContext

    monkeypatch.setattr(InstaloaderContext, "do_sleep", lambda self: None)
    scrape = tiny_params.scrape.model_copy(
        update={
            "source": "instagram",
            "instagram": tiny_params.scrape.instagram.model_copy(
                update={"hashtags": ("food", "art"), "posts_per_hashtag": 10, "order": "recent"}
            ),
        }
    )
    params = tiny_params.model_copy(update={"scrape": scrape})
    session = write_session(tmp_path / "session-tester")
    caplog.set_level(logging.DEBUG)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        FakeInstagram(mock)
        report = run(
            params.base,
            params.scrape,
            params.ingest,
            out=tmp_path / "raw",
            reports=tmp_path / "reports",
            session_file=session,
            cache=tmp_path / "cache",
        )
    return {"report": report, "tmp": tmp_path, "session_id": SESSION_ID, "log": caplog.text}


def _owner_ids() -> set[str]:
    ids = set()
    for path in (ROOT / "tests/fixtures/instagram").glob("*.json"):
        text = path.read_text()
        ids |= set(re.findall(r'"owner":\s*\{\s*"id":\s*"(\d+)"', text))
    return ids


def test_scrape_stores_and_logs_no_secret_and_no_identity(instagram_scrape):
    """SECURITY.md: session and salt never leave memory; owners are salted hashes, no usernames."""
    tmp = instagram_scrape["tmp"]
    assert instagram_scrape["report"].accepted > 0
    secrets = [instagram_scrape["session_id"].encode(), SALT.encode(), b"someone"]
    owner_ids = _owner_ids()
    assert owner_ids, "the fixtures should carry owner ids"
    for path in _files(tmp / "raw", tmp / "reports", tmp / "cache"):
        data = path.read_bytes()
        for secret in secrets:
            assert secret not in data, f"{secret!r} in {path}"
        if path.suffix in (".jsonl", ".json"):
            for owner in owner_ids:
                assert f'"{owner}"'.encode() not in data, f"raw owner id {owner} in {path}"
    for secret in secrets:
        assert secret.decode() not in instagram_scrape["log"]
    posts = [json.loads(line) for line in (tmp / "raw/posts.jsonl").read_text().splitlines()]
    hashes = {hmac.new(SALT.encode(), o.encode(), "sha256").hexdigest()[:32] for o in owner_ids}
    assert posts and all(post["owner"] in hashes for post in posts)
    assert not any("username" in key for post in posts for key in post)


def _fixture_shortcodes() -> set[str]:
    text = "".join(p.read_text() for p in (ROOT / "tests/fixtures/instagram").glob("*.json"))
    return set(re.findall(r'"(?:shortcode|code)":\s*"(\w+)"', text))


def test_scrape_stores_no_shortcode_and_no_mention(instagram_scrape):
    """SECURITY.md: post ids and file names are keyed hashes; captions keep no @mention."""
    from taglens.data.sources.instagram import post_id

    tmp = instagram_scrape["tmp"]
    codes = _fixture_shortcodes()
    assert len(codes) >= 8, "the fixtures should carry shortcodes"
    for path in _files(tmp / "raw", tmp / "reports", tmp / "cache"):
        data = path.read_bytes()
        for code in codes:
            assert code not in path.name and code.encode() not in data, f"{code} in {path}"
        for mention in (b"@baker.jane", b"@mo_m"):
            assert mention not in data, f"{mention!r} in {path}"
    posts = [json.loads(line) for line in (tmp / "raw/posts.jsonl").read_text().splitlines()]
    assert {post["id"] for post in posts} <= {post_id(code, SALT) for code in codes}
    bread = [post for post in posts if post["caption"].startswith("Homemade bread")]
    assert [post["caption"] for post in bread] == [
        "Homemade bread with and #food #baking (mail me: me@example.com)"
    ]
    assert bread[0]["hashtags"] == ["food", "baking"]
    media = sorted(p.stem for p in (tmp / "cache" / "media").iterdir())
    assert media and all(re.fullmatch(r"[0-9a-f]{32}", stem) for stem in media)


def test_instaloader_session_files_are_ignored_by_git():
    """SECURITY.md: `.gitignore` covers Instaloader's `session-USERNAME` and `*.session`."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    names = ["session-alice", "config/session-bob.smith", "x.session", ".env"]
    result = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "--no-index", *names],
        capture_output=True,
        text=True,
    )
    assert sorted(result.stdout.split()) == sorted(names)


def test_a_username_field_is_refused_by_the_post_schema():
    """SECURITY.md: the post record has no place for a username (extra fields are refused)."""
    from pydantic import ValidationError

    from taglens.data.posts import Post

    good = {
        "id": "x",
        "label": "food",
        "image": "images/a.jpg",
        "sha256": "a" * 64,
        "width": 32,
        "height": 32,
        "source": "instagram",
    }
    Post.model_validate(good)
    with pytest.raises(ValidationError, match="owner_username"):
        Post.model_validate({**good, "owner_username": "someone"})


@pytest.mark.slow
def test_pipeline_outputs_and_mlflow_hold_no_secret(pipeline):
    """SECURITY.md: the salt, a tracking password and session paths never reach params, MLflow
    (params, tags, artifacts), the DVC outputs or the logs of a full run."""
    roots = [pipeline / "mlruns", pipeline / "data", pipeline / "models", pipeline / "reports"]
    files = _files(*roots)
    assert any(p.name == "mlflow.db" for p in files) and any(p.suffix == ".keras" for p in files)
    for path in files + sorted(pipeline.glob("*.log")):
        assert FAKE_SECRET.encode() not in path.read_bytes(), path
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{pipeline / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs
    for run in runs:
        text = json.dumps([run.data.params, run.data.tags])
        assert FAKE_SECRET not in text
        assert run.data.params.get("scrape.instagram.owner_salt_env", "TAGLENS_OWNER_SALT") == (
            "TAGLENS_OWNER_SALT"
        )  # the variable's name is logged, never its value


@pytest.mark.slow
def test_web_app_binds_localhost_by_default(tiny_models_dir, tmp_path):
    """SECURITY.md: `python -m taglens.serving.web` without --host listens on 127.0.0.1 only."""
    import psutil

    port = free_port()
    log = tmp_path / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "taglens.serving.web",
        "--params",
        str(tiny_params_path()),
        "--model-uri",
        str(tiny_models_dir),
        "--port",
        str(port),
    ]
    with open(log, "w") as handle:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    try:
        wait_until_healthy(proc, f"http://127.0.0.1:{port}/health", timeout=180, log_path=log)
        listening = {
            (c.laddr.ip, c.laddr.port)
            for c in psutil.Process(proc.pid).net_connections()
            if c.status == psutil.CONN_LISTEN
        }
        assert listening == {("127.0.0.1", port)}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_default_params_bind_loopback_and_limit_uploads():
    """SECURITY.md: params.yaml serves on 127.0.0.1 with a bounded upload size and pixel count."""
    from taglens.params import load_params

    params = load_params(ROOT / "params.yaml")
    assert params.serve.host == "127.0.0.1"
    assert 0 < params.serve.max_upload_mb <= 50
    assert params.ingest.max_pixels <= 100_000_000


def test_model_with_code_is_not_loaded(tiny_models_dir, tmp_path):
    """SECURITY.md: model.keras is loaded in Keras' safe mode: a file carrying Python code (a
    Lambda layer's pickled bytecode) is refused, and the code does not run."""
    import shutil

    import keras

    from taglens.model.predictor import HashtagPredictor

    marker = tmp_path / "code-ran"
    evil = tmp_path / "untrusted_models"
    shutil.copytree(tiny_models_dir, evil)
    inputs = keras.Input((32, 32, 3))
    # The path is a constant inside the lambda's bytecode, which the .keras file carries.
    code = eval(f"lambda x: (__import__('pathlib').Path({str(marker)!r}).touch(), x)[1] * 0")  # noqa: S307
    body = keras.layers.Lambda(code)(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(body)
    outputs = keras.layers.Dense(10, activation="softmax")(pooled)
    keras.Model(inputs, outputs).save(evil / "model.keras")
    marker.unlink(missing_ok=True)
    with pytest.raises(ValueError, match="safe_mode"):
        HashtagPredictor.from_dir(evil)
    assert not marker.exists()


def test_feature_files_are_never_unpickled(tmp_path):
    """SECURITY.md: feature shards and features.npz are read with allow_pickle=False."""
    from taglens.features import store as features

    key = features.FeatureKey("vgg19", 32, "random-seed42", "fp32")
    store = features.FeatureStore(tmp_path / "store", key)
    store.write_shard(["a" * 64], np.ones((1, 4), dtype="float32"))
    hostile = store.dir / "shard-hostile.npz"
    np.savez(
        hostile,
        sha256=np.array([{"x": 1}], dtype=object),
        vectors=np.array([object()], dtype=object),
    )
    cached = features.FeatureStore(tmp_path / "store", key).load()
    assert list(cached) == ["a" * 64]  # the pickled shard was skipped, not loaded
    out = tmp_path / "features"
    out.mkdir()
    np.savez(
        out / "features.npz",
        sha256=np.array([object()], dtype=object),
        vectors=np.zeros((1, 4), dtype="float32"),
    )
    with pytest.raises(ValueError, match="allow_pickle"):
        features.read_features(out)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("192.168.1.5", False),
        ("example.org", False),
    ],
)
def test_binding_elsewhere_than_loopback_is_flagged(host, loopback):
    """SECURITY.md: the server warns when it binds an address reachable from other machines."""
    from taglens.serving.web.__main__ import _is_loopback

    assert _is_loopback(host) is loopback
