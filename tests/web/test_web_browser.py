"""The real thing: `python -m taglens.serving.web` with the tiny champion, in headless Chromium."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from web_helpers import photo_bytes

from tests.helpers.params import tiny_params_path
from tests.helpers.servers import free_port, wait_until_healthy

ROOT = Path(__file__).resolve().parents[2]
PARAMS = tiny_params_path()
RESULTS = ROOT / "test-results" / "web"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--disable-sync",
]
STARTUP_SECONDS = 180  # TensorFlow + MLflow imports on a busy 2-core machine


@pytest.fixture
def server(tiny_champion, tmp_path):
    """The app in its own process, started the documented way: it loads taglens@champion."""
    name, version, _ = tiny_champion
    port = free_port()
    log_path = tmp_path / "server.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # MLFLOW_TRACKING_URI: the fresh store
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "taglens.serving.web",
                "--params",
                str(PARAMS),
                "--port",
                str(port),
            ],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(process, f"{base}/health", timeout=STARTUP_SECONDS, log_path=log_path)
        yield {"base": base, "name": name, "version": version, "log": log_path}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tags(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["tag"] for item in response.json()["hashtags"]]


def _check_http(server) -> None:
    """The served champion over plain HTTP: health, predictions, a cut-off oversize upload."""
    base = server["base"]
    health = httpx.get(f"{base}/health").json()
    assert health["model"] == {"name": server["name"], "version": server["version"]}
    assert health["max_upload_bytes"] == 10_000_000  # serve.max_upload_mb: 10
    photo = photo_bytes(120)
    tags = _tags(httpx.post(f"{base}/predict", files={"file": ("a.jpg", photo, "image/jpeg")}))
    assert len(tags) == 10 and len(set(tags)) == 10

    # hostile input over real HTTP: a DNS-rebinding page's Host, a cross-origin post
    foreign = httpx.get(f"{base}/health", headers={"host": "evil.example"})
    assert foreign.status_code == 400 and "serve.allowed_hosts" in foreign.json()["detail"]
    cross = httpx.post(
        f"{base}/predict",
        files={"file": ("a.jpg", photo, "image/jpeg")},
        headers={"origin": "http://evil.example"},
    )
    assert cross.status_code == 403
    for response in (
        foreign,
        cross,
        httpx.get(f"{base}/"),
        httpx.get(f"{base}/static/app.js"),
        httpx.get(f"{base}/nothing"),
    ):
        assert response.headers["x-content-type-options"] == "nosniff", response.url
        assert response.headers["content-security-policy"], response.url

    # a chunked 30 MB upload is cut off by the real server too, and it keeps serving
    def body():
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n\r\n'
        for _ in range(30 * 16):
            yield b"\0" * 65_536

    headers = {"content-type": "multipart/form-data; boundary=b"}
    try:
        refused = httpx.post(f"{base}/predict", content=body(), headers=headers, timeout=30)
        assert refused.status_code == 413
        assert "serve.max_upload_mb" in refused.json()["detail"]
    except (httpx.WriteError, httpx.RemoteProtocolError):
        pass  # the server may close the connection before the client has finished sending
    again = httpx.post(f"{base}/predict", files={"file": ("a.jpg", photo, "image/jpeg")})
    assert _tags(again) == tags
    log = server["log"].read_text()
    assert "Uvicorn running on http://127.0.0.1:" in log
    # the app's access line (uvicorn's own is off), with the request's generated id
    assert re.search(r"POST /predict 413 \d+\.\d ms \(request [0-9a-f]{32}\)", log), log[-3000:]


def _drop_file(page, data: bytes, name: str) -> None:
    """Drag-and-drop a file onto the drop zone the way a browser delivers it."""
    page.evaluate(
        """([b64, name]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
            const zone = document.getElementById("drop");
            for (const type of ["dragenter", "dragover", "drop"]) {
                zone.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, bubbles: true,
                                                         cancelable: true }));
            }
        }""",
        [base64.b64encode(data).decode(), name],
    )


def _save(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, RESULTS / name)
    return path


@pytest.mark.slow
@pytest.mark.browser
def test_served_page_over_http_and_in_headless_chromium(server, tmp_path):
    # One server start for both parts (loading the champion is most of this test's time).
    _check_http(server)
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not installed: run `make browser-deps` (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    base = server["base"]
    photo = photo_bytes(200, seed=3)
    api_tags = _tags(httpx.post(f"{base}/predict", files={"file": ("p.jpg", photo, "image/jpeg")}))
    api_top = httpx.post(f"{base}/predict", files={"file": ("p.jpg", photo, "image/jpeg")}).json()
    requests: list[str] = []
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
        page = context.new_page()
        page.on("request", lambda request: requests.append(request.url))
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.on("console", lambda msg: problems.append(msg.text) if "Refused" in msg.text else None)
        page.goto(f"{base}/")
        badge = page.locator("#model")
        expect(badge).to_have_text(f"model: {server['name']} v{server['version']}")
        expect(page.locator("#predict")).to_be_disabled()

        # a file that is not an image: the server's message is shown on the page
        page.set_input_files(
            "#file", {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"just some text"}
        )
        page.click("#predict")
        error = page.locator("#error")
        expect(error).to_be_visible()
        expect(error).to_contain_text("Could not predict: the file is not an image")
        expect(page.locator("#answer")).to_be_hidden()
        expect(page.locator("#preview")).to_be_hidden()
        expect(page.locator("#file-name")).to_contain_text("no preview: it may not be an image")
        _save(page, tmp_path, "page-error.png")

        # then a photo, dropped on the page, is predicted and ranked exactly as the API does
        _drop_file(page, photo, "beach.jpg")
        expect(page.locator("#file-name")).to_contain_text("beach.jpg")
        expect(page.locator("#preview")).to_be_visible()
        expect(error).to_be_hidden()
        page.click("#predict")
        expect(page.locator("#answer")).to_be_visible(timeout=30_000)
        page_tags = page.locator("#hashtags li").evaluate_all(
            "items => items.map(i => i.dataset.tag)"
        )
        assert page_tags == api_tags
        shown = page.locator("#hashtags .tag").all_inner_texts()
        assert shown == [f"#{tag}" for tag in api_tags]
        expect(page.locator("#top-class")).to_have_text(api_top["top_class"])
        widths = page.locator("#hashtags .fill").evaluate_all(
            "fills => fills.map(f => f.getBoundingClientRect().width)"
        )
        assert widths[0] > 0 and widths == sorted(widths, reverse=True)
        assert page.locator("#classes li").count() == len(api_top["probabilities"])

        # copy: the clipboard holds the #-prefixed, space-separated tags
        page.click("#copy")
        expect(page.locator("#copy-status")).to_have_text("Copied!")
        expected_line = " ".join(f"#{tag}" for tag in api_tags)
        assert page.evaluate("navigator.clipboard.readText()") == expected_line
        expect(page.locator("#tag-line")).to_have_text(expected_line)
        # ... and through the textarea fallback where the async clipboard API is missing
        page.evaluate("navigator.clipboard.writeText('')")
        page.evaluate("Object.defineProperty(navigator, 'clipboard', { get: () => undefined })")
        page.locator("#copy-status").evaluate("el => { el.textContent = ''; }")
        page.click("#copy")
        expect(page.locator("#copy-status")).to_have_text("Copied!")
        reader = context.new_page()
        reader.goto(f"{base}/health")
        assert reader.evaluate("navigator.clipboard.readText()") == expected_line
        reader.close()

        # laptop: the two cards side by side; phone: stacked, nothing wider than the screen
        upload_box = page.locator("section.card").first.bounding_box()
        results_box = page.locator("#results").bounding_box()
        assert results_box["x"] > upload_box["x"] + upload_box["width"] - 1
        desktop = _save(page, tmp_path, "page-desktop.png")
        page.set_viewport_size({"width": 390, "height": 844})
        upload_box = page.locator("section.card").first.bounding_box()
        results_box = page.locator("#results").bounding_box()
        assert results_box["y"] >= upload_box["y"] + upload_box["height"]
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        phone = _save(page, tmp_path, "page-phone.png")

        # the API docs render offline too
        page.goto(f"{base}/docs")
        expect(page.locator(".swagger-ui .opblock-summary-path").first).to_be_visible()
        assert "/predict" in page.locator(".swagger-ui").inner_text()
        browser.close()

    assert desktop.stat().st_size > 10_000 and phone.stat().st_size > 10_000
    outside = [url for url in requests if not url.startswith((base, "blob:", "data:"))]
    assert outside == [], f"the page loaded something from elsewhere: {outside}"
    assert problems == []
