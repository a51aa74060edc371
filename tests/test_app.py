"""The Gradio app as people use it: a real server process, gradio_client, and headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
Q = "What is the coarse expression class?"


@pytest.fixture(scope="module")
def app_url(tiny_qwen, tmp_path_factory):
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    log = tmp_path_factory.mktemp("app") / "app.log"
    with log.open("w") as f:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "app.py"),
                "--model",
                str(tiny_qwen),
                "--port",
                str(port),
                "--max-upload-mb",
                "5",
            ],
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    import httpx

    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"app did not start: {log.read_text()[-2000:]}")
    yield url
    proc.kill()
    proc.wait()


def test_upload_and_ask_with_gradio_client(app_url, synthme, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(app_url, verbose=False)
    clip = synthme / "videos" / f"{sorted(p.name for p in (synthme / 'frames').iterdir())[0]}.mp4"
    gallery, flow, status = client.predict(handle_file(str(clip)), None, "frames", 4, api_name="/load_clip")
    assert "Loaded" in status and len(gallery) == 4 and flow
    history, _ = client.predict(Q, [], "frames", 4, "labels", False, api_name="/ask")
    answer = history[-1]["content"]
    text = answer[0]["text"] if isinstance(answer, list) else answer
    assert history[-1]["role"] == "assistant" and text.strip()
    # a text file renamed .mp4: a message in the UI, and the app keeps working
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n")
    _, _, status = client.predict(handle_file(str(fake)), None, "frames", 4, api_name="/load_clip")
    assert status.startswith("**error:**") and "notes.mp4" in status
    gallery, _, status = client.predict(handle_file(str(clip)), None, "frames", 4, api_name="/load_clip")
    assert "Loaded" in status and len(gallery) == 4
    history, _ = client.predict(Q, [], "frames", 4, "plain", True, api_name="/ask")  # agent mode
    last = history[-1]["content"]
    last = last[0]["text"] if isinstance(last, list) else last
    assert "coarse" in last and "fine" in last


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    not _chromium(), reason="no chromium installed (Debian package `chromium`; .ci/run installs it)"
)
def test_in_a_real_browser(app_url, synthme):
    from playwright.sync_api import sync_playwright

    clip = synthme / "videos" / f"{sorted(p.name for p in (synthme / 'frames').iterdir())[0]}.mp4"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=_chromium(),
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(app_url)
        page.locator("input[type=file]").first.set_input_files(str(clip))
        page.get_by_text("Loaded").wait_for(timeout=60_000)
        page.get_by_role("button", name=Q).click()
        bubbles = page.locator("#chat .message")
        page.wait_for_function("document.querySelectorAll('#chat .message').length >= 2", timeout=60_000)
        time.sleep(1.0)  # let the streamed answer finish
        assert bubbles.last.inner_text().strip()
        assert page.locator("#frames img").count() >= 4
        page.screenshot(path=str(ARTIFACTS / "app.png"), full_page=True)
        browser.close()
    assert (ARTIFACTS / "app.png").stat().st_size > 10_000
