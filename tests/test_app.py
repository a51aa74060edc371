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
from helpers import drain, free_port

from mevqa.app import Demo
from mevqa.config import AskConfig, UploadLimits, from_dict

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
Q = "What is the coarse expression class?"


def settings(**values) -> AskConfig:
    """The app's settings as `mevqa app` builds them, for an in-process `Demo` (its backend given: the
    model is only a name here)."""
    return from_dict(AskConfig, {"model": "tiny", **values}, "test")


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
    assert "/tmp" not in status and str(Path.home()) not in status, status  # no server path
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
    clips = sorted(work.glob("mevqa-app-*/session-*/clip-*/clip"))
    assert len(clips) == 2 and sorted(len(list(c.iterdir())) for c in clips) == [6, 9]
    # Gradio's cache is the app's (removed with it), and the zips it holds are gone once unpacked
    assert list(work.glob("mevqa-app-*/gradio")) and not list(work.rglob("*.zip"))
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
    from mevqa.app import unpack_upload
    from mevqa.config import UploadLimits
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
    import numpy as np

    from mevqa.io import write_mp4

    write_mp4(big, [np.zeros((4096, 4096, 3), np.uint8)], 200)
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

    script = [
        AIMessage(content="", tool_calls=[{"name": "optical_flow", "args": {}, "id": "f"}]),
        AIMessage(content="Most motion at the mouth."),
    ]
    demo = Demo(qwen, settings(), UploadLimits(), tmp_path, lambda: ScriptedToolModel(responses=script))
    ctx = ctx_for(synthme, annotated(synthme)[0])
    *_, (history, _) = demo.respond("Where does it move?", [], ctx, "frames", 4, "plain", False, True)
    answer = history[-1]["content"]
    assert (
        answer.startswith("Most motion at the mouth.")
        and "`optical_flow({})`" in answer
        and '"mouth"' in answer
    )


def _noise_zip(path, names, size=64, flags=0):
    """A zip of noise PNGs named `names` (in that order), frame i a shade of grey i * 10."""
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as f:
        for i, name in enumerate(names):
            px = rng.integers(0, 8, (size, size, 3), dtype=np.uint8) + np.uint8(10 * (_num(name) or i))
            buf = io.BytesIO()
            Image.fromarray(px).save(buf, format="PNG")
            f.writestr(name, buf.getvalue())
    if flags:  # zipfile writes its own: set them in the local headers and the central directory
        data = bytearray(path.read_bytes())
        for sig, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            i = data.find(sig)
            while i >= 0:
                data[i + at] |= flags & 0xFF
                data[i + at + 1] |= flags >> 8
                i = data.find(sig, i + 4)
        path.write_bytes(bytes(data))
    return path


def _num(name):
    import re

    nums = re.findall(r"\d+", name)
    return int(nums[-1]) if nums else 0


def test_zip_frames_are_checked_for_pixels_before_decoding(tmp_path):
    """Two 13000x13000 PNG headers in a 2 KB zip (500 MB a frame once decoded) are refused from their
    headers, by the same check the CLI uses, and nothing is left on disk."""
    from test_hostile_inputs import bomb_png

    from mevqa.app import unpack_upload
    from mevqa.errors import InputError

    z = tmp_path / "clip.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as f:
        for n in (1, 2):
            f.writestr(f"img{n}.png", bomb_png(tmp_path / f"b{n}.png", 13000, 13000).read_bytes())
    work = tmp_path / "work"
    with pytest.raises(InputError, match=r"clip.zip: img1.png — frames are 13000x13000"):
        unpack_upload(str(z), work)
    assert not list(work.iterdir())


def test_zip_frames_play_in_name_order_and_odd_names_load(tmp_path):
    """`zip clip.zip *.jpg` stores img1, img10, img11, img12, img2...: frames play as 1, 2, ... 12; a name
    in a legacy code page loads; a name that breaks the UTF-8 the zip declares is one clear error."""
    from mevqa.app import unpack_upload
    from mevqa.errors import InputError
    from mevqa.video import open_clip

    names = sorted(f"img{i}.png" for i in range(1, 13))  # the shell's order: img1, img10, img11, ...
    clip = open_clip(unpack_upload(str(_noise_zip(tmp_path / "a" / "clip.zip", names)), tmp_path / "w"))
    shades = [int(f[..., 0].mean()) // 10 for f in clip.read(list(range(clip.num_frames)))]
    assert shades == list(range(1, 13))
    odd = tmp_path / "b" / "clip.zip"
    _noise_zip(odd, ["Xmg1.png", "Xmg2.png"])
    odd.write_bytes(odd.read_bytes().replace(b"Xmg", b"\x81mg"))  # cp437, as old Windows zips store it
    assert len(list(unpack_upload(str(odd), tmp_path / "w").iterdir())) == 2
    bad = tmp_path / "c" / "clip.zip"
    _noise_zip(bad, ["Xmg1.png"], flags=0x800)  # flagged UTF-8 ...
    bad.write_bytes(bad.read_bytes().replace(b"Xmg", b"\xffmg"))  # ... but not UTF-8
    with pytest.raises(InputError, match="clip.zip — a member's name is not the UTF-8"):
        unpack_upload(str(bad), tmp_path / "w")


def _load(demo, z, session=None):
    return demo.load(str(z), None, "frames", 4, "none", session)


def test_a_failed_upload_is_removed_and_named_as_the_user_knows_it(tmp_path):
    """A zip whose frame decodes badly: the message names `clip/...`, never a server path, and the
    session keeps nothing of it."""
    z = _noise_zip(tmp_path / "up" / "clip.zip", ["img1.png", "img2.png"])
    cut = tmp_path / "up" / "cut.zip"
    with zipfile.ZipFile(z) as src, zipfile.ZipFile(cut, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info)[:60])  # the header survives, the pixels do not
    root = tmp_path / "root"
    root.mkdir()
    demo = Demo(None, settings(), UploadLimits(), root)
    ctx, _, _, status, session = _load(demo, cut)
    assert ctx is None and status.startswith("**error:** cut/img1_0.png — "), status
    assert str(tmp_path) not in status and str(root.resolve()) not in status
    assert not list(Path(session).iterdir())


def test_idle_sessions_expire_and_the_disk_is_capped(qwen, tmp_path):
    z = _noise_zip(tmp_path / "up" / "clip.zip", ["img1.png", "img2.png", "img3.png"], size=256)
    mb = sum(i.file_size for i in zipfile.ZipFile(z).infolist()) / 2**20
    root = tmp_path / "root"
    root.mkdir()
    demo = Demo(qwen, settings(), UploadLimits(max_disk_mb=mb * 1.5, idle_minutes=5), root)
    ctx, gallery, _, status, a = _load(demo, z)
    assert "Loaded" in status and len(gallery) == 3
    _, _, _, status, b = _load(demo, z)  # another user: the disk cap is reached
    assert (
        status.startswith("**error:** clip.zip — the app's uploads already fill")
        and "--max-disk-mb" in status
    )
    old = time.time() - 6 * 60
    os.utime(a, (old, old))  # user A walked away (an API client never says so)
    assert ctx._cache  # its frames and flow, decoded once for every turn
    demo.expire_idle()
    assert not Path(a).exists() and not ctx._cache  # the decoded frames went with the folder
    history, _ = list(demo.respond(Q, [], ctx, "frames", 4, "plain", False))[-1]
    assert "removed after 5 idle minutes" in history[-1]["content"]
    _, gallery, _, status, b = _load(demo, z, b)  # room again
    assert "Loaded" in status and len(list(Path(b).rglob("*.png"))) == 3


def test_decoded_frames_kept_over_all_sessions_stay_within_the_budget(qwen, tmp_path):
    """Four sessions each keeping a big clip's frames held 3.2 GB beside the next decode: the clips used
    least recently forget theirs, and their next question decodes them again."""
    z = _noise_zip(tmp_path / "up" / "clip.zip", ["img1.png", "img2.png", "img3.png", "img4.png"], size=100)
    root = tmp_path / "root"
    root.mkdir()
    demo = Demo(qwen, settings(), UploadLimits(decode_megapixels=100 * 100 * 6 / 1e6), root)  # 1.5 clips
    a, *_ = _load(demo, z)
    assert a.kept_pixels() == 4 * 100 * 100
    b, *_ = _load(demo, z)
    assert a.kept_pixels() == 0 and b.kept_pixels() == 4 * 100 * 100
    history, _ = list(demo.respond(Q, [], a, "frames", 4, "plain", False))[-1]
    assert history[-1]["content"] and not history[-1]["content"].startswith("**error")
    assert a.kept_pixels() == 4 * 100 * 100  # decoded again for its question


def test_big_clips_wait_for_each_other_to_decode():
    """Four 4096x4096 uploads at once killed the app: decoding is admitted by pixel count."""
    import threading

    from mevqa.app import Budget

    budget, log = Budget(100), []

    def decode(name, pixels):
        with budget.hold(pixels):
            log.append(f"{name}+")
            time.sleep(0.3)
            log.append(f"{name}-")

    threads = [threading.Thread(target=decode, args=(n, 80)) for n in "ab"]
    threads += [threading.Thread(target=decode, args=("huge", 500))]  # above the budget: runs alone
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join(10)
    assert [e[-1] for e in log] == ["+", "-"] * 3, log


def test_questions_are_capped(qwen, synthme):
    from test_agent import annotated, ctx_for

    from mevqa.agent import ChatSession
    from mevqa.errors import InputError

    ctx = ctx_for(synthme, annotated(synthme)[0])
    demo = Demo(qwen, settings(max_question_chars=100), UploadLimits(), Path(synthme))
    history, _ = list(demo.respond("why? " * 1000, [], ctx, "frames", 4, "plain", False))[-1]
    assert (
        history[-1]["content"]
        == "error: question — 5000 characters; at most 100 (`max_question_chars` to change it)"
    )
    assert len(history[-2]["content"]) < 300
    with pytest.raises(InputError, match="5000 characters; at most 2000"):
        ChatSession(qwen, ctx).command("why? " * 1000)


def test_a_generation_error_ends_the_stream(qwen, synthme, monkeypatch):
    from test_agent import annotated, ctx_for

    def broken(**kwargs):
        raise RuntimeError("CUDA error: an illegal memory access\nmore lines")

    monkeypatch.setattr(qwen.model, "generate", broken)
    ctx = ctx_for(synthme, annotated(synthme)[0])
    demo = Demo(qwen, settings(), UploadLimits(), Path(synthme))
    out = drain(demo.respond(Q, [], ctx, "frames", 4, "plain", False))
    history, _ = out["items"][-1]
    text = history[-1]["content"]
    assert text.startswith("error: generation — the model failed while answering: RuntimeError: CUDA error")
    assert "\n" not in text


def test_a_client_that_leaves_stops_generation(qwen, monkeypatch):
    """Gradio closes the generator of a client that left: the model stops at its next token."""
    from mevqa.backends.base import VQARequest
    from mevqa.config import GenConfig
    from mevqa.prompts import Message

    real, made = qwen.model.generate, []

    def counting(**kwargs):
        out = real(**kwargs)
        made.append(out.shape[1] - kwargs["input_ids"].shape[1])
        return out

    monkeypatch.setattr(qwen.model, "generate", counting)
    monkeypatch.setattr(qwen.model.generation_config, "eos_token_id", None)  # never ends on its own
    stream = qwen.stream(
        VQARequest("q", (Message.user("Describe the face."),)), GenConfig(max_new_tokens=400)
    )
    next(stream)
    stream.close()
    deadline = time.time() + 60
    while not made and time.time() < deadline:
        time.sleep(0.05)
    assert made and made[0] < 50, made
