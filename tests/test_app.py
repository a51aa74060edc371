"""The Gradio app as people use it: a real server process, gradio_client, and headless Chromium."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
Q = "What is the coarse expression class?"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("app-work")


@pytest.fixture(scope="module")
def app_proc(tiny_qwen, tmp_path_factory, work):
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
                "--work-dir",
                str(work),
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
    yield url, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def app_url(app_proc):
    return app_proc[0]


def test_upload_and_ask_with_gradio_client(app_url, synthme, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(app_url, verbose=False)
    clip = synthme / "videos" / f"{sorted(p.name for p in (synthme / 'frames').iterdir())[0]}.mp4"
    gallery, flow, status = client.predict(
        handle_file(str(clip)), None, "frames", 4, "none", api_name="/load_clip"
    )
    assert "Loaded" in status and len(gallery) == 4 and flow
    history, _ = client.predict(Q, [], "frames", 4, "labels", False, api_name="/ask")
    answer = history[-1]["content"]
    text = answer[0]["text"] if isinstance(answer, list) else answer
    assert history[-1]["role"] == "assistant" and text.strip()
    # a text file renamed .mp4: a message in the UI, and the app keeps working
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n")
    _, _, status = client.predict(handle_file(str(fake)), None, "frames", 4, "none", api_name="/load_clip")
    assert status.startswith("**error:**") and "notes.mp4" in status
    gallery, _, status = client.predict(
        handle_file(str(clip)), None, "frames", 4, "none", api_name="/load_clip"
    )
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
        # the streamed answer is done when the input box is cleared and the last bubble has text
        page.wait_for_function(
            "(() => { const b = document.querySelectorAll('#chat .message');"
            " return b.length >= 2 && b[b.length - 1].innerText.trim().length > 0; })()",
            timeout=60_000,
        )
        assert bubbles.last.inner_text().strip()
        assert page.locator("#frames img").count() >= 4
        page.screenshot(path=str(ARTIFACTS / "app.png"), full_page=True)
        browser.close()
    assert (ARTIFACTS / "app.png").stat().st_size > 10_000


def zip_of(path, frames, size, name="clip.zip"):
    from PIL import Image

    path.mkdir(parents=True, exist_ok=True)
    z = path / name
    with zipfile.ZipFile(z, "w") as f:
        for i in range(frames):
            buf = io.BytesIO()
            Image.new("RGB", (size, size), (i * 20 % 255, 80, 120)).save(buf, format="PNG")
            f.writestr(f"frames/img{i + 1}.png", buf.getvalue())
    return z


def test_users_do_not_share_uploads(app_url, work, tmp_path):
    """Two users upload a zip of the same name: each gets a folder of their own, and each sees their clip."""
    from gradio_client import Client, handle_file

    a, b = Client(app_url, verbose=False), Client(app_url, verbose=False)
    za, zb = zip_of(tmp_path / "a", 6, 64), zip_of(tmp_path / "b", 9, 96)
    ga, _, sa = a.predict(handle_file(str(za)), None, "frames", 4, "none", api_name="/load_clip")
    gb, _, sb = b.predict(handle_file(str(zb)), None, "frames", 4, "none", api_name="/load_clip")
    assert "Loaded `clip.zip`" in sa and "Loaded `clip.zip`" in sb
    clips = sorted(work.glob("mevqa-app-*/session-*/clip-*"))
    assert len(clips) == 2 and sorted(len(list(c.iterdir())) for c in clips) == [6, 9]
    history, _ = a.predict(Q, [], "frames", 4, "plain", False, api_name="/ask")  # A still answers about A
    assert history[-1]["role"] == "assistant"


def test_hidden_endpoints_stay_hidden(app_url):
    from gradio_client import Client

    api = Client(app_url, verbose=False).view_api(return_format="dict", print_info=False)
    assert (
        set(api["named_endpoints"]) == {"/load_clip", "/ask", "/spot", "/pick_event"}
        and not api["unnamed_endpoints"]
    )


def test_upload_caps_before_extracting(tmp_path):
    """Too many members or too many bytes are refused from the zip directory: nothing is written."""
    from app import UploadLimits, unpack_upload
    from mevqa.errors import InputError

    work = tmp_path / "work"
    many = zip_of(tmp_path / "many", 11, 16)
    with pytest.raises(InputError, match="11 frames; at most 10"):
        unpack_upload(str(many), work, UploadLimits(max_members=10))
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as f:
        f.writestr("img1.jpg", b"\0" * (8 << 20))  # 8 MB of zeros, a few KB zipped
    assert bomb.stat().st_size < 100_000
    with pytest.raises(InputError, match="unpacks to 8 MB"):
        unpack_upload(str(bomb), work, UploadLimits(max_unpacked_mb=4))
    assert not any(p.is_file() for p in work.rglob("*"))
    big = tmp_path / "big.mp4"
    import cv2
    import numpy as np

    w = cv2.VideoWriter(str(big), cv2.VideoWriter_fourcc(*"mp4v"), 200, (4096, 4096))
    w.write(np.zeros((4096, 4096, 3), np.uint8))
    w.release()
    with pytest.raises(InputError, match="4096x4096 pixels"):
        unpack_upload(str(big), work, UploadLimits(max_side=2048))
    first, second = unpack_upload(str(many), work), unpack_upload(str(many), work)
    assert first != second and len(list(first.iterdir())) == 11  # a fresh folder per upload


def test_empty_auth_is_refused():
    r = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "--auth", "admin:"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert r.returncode == 2 and r.stderr.startswith("error: --auth") and "non-empty" in r.stderr


def test_uploads_are_removed_when_the_app_stops(app_proc, work):
    """Runs last: SIGTERM stops the app and removes its upload folders."""
    _, proc = app_proc
    assert list(work.glob("mevqa-app-*"))
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert not list(work.glob("mevqa-app-*"))


def test_the_tool_agent_answers_in_the_chat(qwen, synthme, tmp_path):
    """With a served model that calls tools, the app's tool agent runs LangChain's loop over mevqa's
    tools (here a scripted tool-calling model stands in for the served one; the tools and VLM are real)."""
    from langchain_core.messages import AIMessage
    from test_agent import ScriptedToolModel, annotated, ctx_for

    from app import Demo, UploadLimits

    script = [
        AIMessage(content="", tool_calls=[{"name": "optical_flow", "args": {}, "id": "f"}]),
        AIMessage(content="Most motion at the mouth."),
    ]
    demo = Demo(qwen, UploadLimits(), tmp_path, tool_llm=lambda: ScriptedToolModel(responses=script))
    ctx = ctx_for(synthme, annotated(synthme)[0])
    *_, (history, _) = demo.respond("Where does it move?", [], ctx, "frames", 4, "plain", False, True)
    answer = history[-1]["content"]
    assert (
        answer.startswith("Most motion at the mouth.")
        and "`optical_flow({})`" in answer
        and '"mouth"' in answer
    )
