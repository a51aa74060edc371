"""mevqa Gradio demo: upload a face clip, see what the model sees, ask about it.

    python app.py [--model M] [--adapter A] [--base-url URL] [--host 127.0.0.1] [--port 7860]
                  [--auth user:pass] [--max-upload-mb 50] [--work-dir DIR]

`build_demo(...)` returns the gr.Blocks; nothing lives at module level. With no --model it runs on the
demo's tiny model (`make demo` builds it; else a random tiny Qwen2.5-VL is built) and says so.

Uploads are hostile until proven otherwise: each upload is unpacked into a fresh folder of its own
session (never named after the user's file), zips are checked against size and member caps from their
directory *before* anything is written and again while copying, videos are probed for frame size and
count before decoding, and a session's folders are deleted when the session ends or the app exits.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import os
import shutil
import signal
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mevqa.agent import ClipContext, agent_markdown, hierarchical, long_video_answer
from mevqa.backends.base import Backend, VQARequest, load_backend
from mevqa.config import (
    INPUT_MODES,
    PROMPT_STRATEGIES,
    FaceConfig,
    FrameConfig,
    GenConfig,
    ModelSpec,
    ServerSpec,
)
from mevqa.errors import InputError, MevqaError
from mevqa.evaluation.spot_run import event_label, timeline_png
from mevqa.facs import REGION_ROWS
from mevqa.models.adapters import recorded_settings
from mevqa.prompts import TEMPLATE_EXAMPLES, Message, render_question

VIDEO_TYPES = [".mp4", ".avi", ".mov", ".mkv", ".webm"]
FRAME_TYPES = (".jpg", ".jpeg", ".png", ".bmp")
DEMO = Path(".cache/demo")


@dataclass(frozen=True)
class UploadLimits:
    """What one upload may cost. A real ME clip is a few hundred frames of at most ~2k x 1k pixels."""

    max_mb: float = 50.0  # the upload itself
    max_unpacked_mb: float = 500.0  # a zip's members, uncompressed, in total
    max_members: int = 2000  # frames in a zip
    max_side: int = 4096  # frame width or height, in pixels
    max_frames: int = 20000  # frames in a video


def default_model() -> tuple[str, str | None, str]:
    """The demo's trained tiny model if `make demo` ran, else a freshly built random one."""
    base, adapter = DEMO / "tiny-base", DEMO / "tiny-synthme-lora"
    if (base / "config.json").exists():
        lora = str(adapter) if (adapter / "adapter_config.json").exists() else None
        return str(base), lora, "the demo's tiny Qwen2.5-VL trained on SynthME (not a real checkpoint)"
    from mevqa.models.tiny import build_tiny

    path = Path(".cache/app/tiny-qwen2_5_vl")
    if not (path / "config.json").exists():
        build_tiny("qwen2_5_vl", path)
    return (
        str(path),
        None,
        "a tiny random-weight Qwen2.5-VL (answers are noise; run `make demo` to train one)",
    )


def _probe_video(p: Path, limits: UploadLimits) -> None:
    """Frame size and count from the container header, before anything is decoded."""
    import cv2

    cap = cv2.VideoCapture(str(p))
    try:
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()
    if max(w, h) > limits.max_side or n > limits.max_frames:
        raise InputError(
            f"{p.name} — {w}x{h} pixels, {n} frames: over the limits ({limits.max_side} px a side, "
            f"{limits.max_frames} frames)"
        )


def _members(z: zipfile.ZipFile, name: str, limits: UploadLimits) -> list[zipfile.ZipInfo]:
    """The zip's frame members, refused from its directory when too many or too large."""
    members = [i for i in z.infolist() if not i.is_dir() and Path(i.filename).suffix.lower() in FRAME_TYPES]
    if not members:
        raise InputError(f"{name} — the zip holds no {'/'.join(FRAME_TYPES)} frames")
    if len(members) > limits.max_members:
        raise InputError(f"{name} — {len(members)} frames; at most {limits.max_members} per clip")
    total = sum(i.file_size for i in members) / 2**20
    if total > limits.max_unpacked_mb:
        raise InputError(f"{name} — unpacks to {total:.0f} MB; at most {limits.max_unpacked_mb:.0f} MB")
    return members


def _copy_capped(z: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, budget: list[int], name: str) -> None:
    """Copy one member in chunks, never more than the directory declared nor the remaining budget."""
    left = min(info.file_size, budget[0])
    with z.open(info) as src, dest.open("wb") as out:
        while chunk := src.read(1 << 20):
            left -= len(chunk)
            if left < 0:
                raise InputError(f"{name} — a member unpacks to more than its declared size (a zip bomb?)")
            out.write(chunk)
    budget[0] -= info.file_size


def unpack_upload(path: str, work: Path, limits: UploadLimits = UploadLimits()) -> Path:
    """A video file (probed), or a zip of frames extracted into a *new* folder under `work`."""
    p = Path(path)
    size_mb = p.stat().st_size / 2**20
    if size_mb > limits.max_mb:
        raise InputError(f"{p.name} — {size_mb:.1f} MB is over the {limits.max_mb:.0f} MB upload limit")
    suffix = p.suffix.lower()
    if suffix in VIDEO_TYPES:
        _probe_video(p, limits)
        return p
    if suffix != ".zip":
        raise InputError(f"{p.name} — upload a video ({', '.join(VIDEO_TYPES)}) or a .zip of frames")
    work.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix="clip-", dir=work))  # fresh, never derived from the user's file name
    try:
        with zipfile.ZipFile(p) as z:
            budget = [int(limits.max_unpacked_mb * 2**20)]
            for k, info in enumerate(_members(z, p.name, limits)):
                # flatten to a numbered name: no member can write outside `out`, names cannot collide
                dest = out / f"{Path(info.filename).stem[-40:]}_{k}{Path(info.filename).suffix.lower()}"
                _copy_capped(z, info, dest, budget, p.name)
    except zipfile.BadZipFile:
        shutil.rmtree(out, ignore_errors=True)
        raise InputError(f"{p.name} — not a readable zip file") from None
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return out


def _remove(path: str | None) -> None:
    if path:
        shutil.rmtree(path, ignore_errors=True)


class Demo:
    """What the page's events do: one backend, one generation config, one folder for every upload."""

    def __init__(
        self, backend: Backend, limits: UploadLimits, root: Path, tool_llm: Callable[[], Any] | None = None
    ):
        self.backend, self.gen, self.limits, self.root = backend, GenConfig(), limits, root
        self.tool_llm = tool_llm  # the chat model that drives the tool agent: a served model that calls tools

    def load(self, file, example, mode, frames, face, session):
        """Unpack the upload into a fresh folder of this session; decode the frames and the flow once."""
        session = session or tempfile.mkdtemp(prefix="session-", dir=self.root)
        if not (file or example):
            return None, [], None, "Upload a clip or pick an example.", session
        try:
            for old in Path(session).iterdir():  # this session's previous upload
                shutil.rmtree(old, ignore_errors=True)
            clip = unpack_upload(file, Path(session), self.limits) if file else Path(example)
            cfg = FrameConfig(frames=int(frames), input=mode, face=FaceConfig(mode=face))
            ctx = ClipContext(str(clip), cfg)
            images, status = self._show(ctx, f"Loaded `{Path(file or example).name}`")
        except MevqaError as e:
            return None, [], None, f"**error:** {e}", session
        return ctx, images, ctx.flow()[0], status, session

    @staticmethod
    def _show(ctx: ClipContext, what: str) -> tuple[list, str]:
        images = ctx.images(dataclasses.replace(ctx.frames, input="frames"))
        top = max(REGION_ROWS, key=ctx.flow()[1].get)
        return images, f"{what}: {len(images)} frames; most motion: {top}."

    def spot(self, ctx, session):
        """Spot the expression events of the loaded video: the timeline picture and a list to choose from."""
        import gradio as gr

        if ctx is None:
            return None, gr.update(choices=[], value=None), "Load a video first."
        try:  # the whole video's events, also when an event is chosen
            events, sig = ctx.events(), ctx.signal()
            png = Path(session or self.root) / "timeline.png"
            timeline_png(png, Path(ctx.path).name, sig, events, [], ctx.spot_settings())
        except MevqaError as e:
            return None, gr.update(choices=[], value=None), f"**error:** {e}"
        choices = [event_label(i + 1, e, sig.video_fps) for i, e in enumerate(events)]
        micro = sum(e.type == "micro" for e in events)
        status = f"Spotted {len(events)} events ({micro} micro, {len(events) - micro} macro): choose one."
        return str(png), gr.update(choices=choices, value=None), status

    def pick(self, choice, ctx):
        """Point the chat at the chosen event: its onset, apex and offset feed the input modes."""
        if ctx is None or not choice:
            return ctx, [], None, "Spot the events first, then choose one."
        try:
            narrowed = ctx.event(int(choice.split(":")[0]))
            images, status = self._show(narrowed, f"Event {choice}")
        except (MevqaError, ValueError) as e:
            return ctx, [], None, f"**error:** {e}"
        return narrowed, images, narrowed.flow()[0], status

    def _reply(self, message, ctx, mode, frames, prompt, agent, tools=False) -> Iterator[str]:
        if tools and self.tool_llm:
            from mevqa.agent.lc import tool_agent

            r = tool_agent(self.tool_llm(), ctx, self.backend, self.gen, message)
            calls = "".join(f"\n- `{c['tool']}({c['args']})` → {c['result'][:200]}" for c in r["calls"])
            yield f"{r['answer']}\n{calls}"
            return
        if agent:
            yield agent_markdown(hierarchical(self.backend, ctx, self.gen))
            return
        events = long_video_answer(self.backend, ctx, message, self.gen)  # "how many micro-expressions?"
        if events is not None:
            yield events
            return
        parts = ctx.parts(FrameConfig(frames=int(frames), input=mode))
        req = VQARequest("app", (Message.user(*parts, render_question(message, prompt)),))
        yield from self.backend.stream(req, self.gen)

    def respond(
        self, message, history, ctx, mode, frames, prompt, agent, tools=False
    ) -> Iterator[tuple[list, str]]:
        """Stream the answer into the chat; a failure is shown in the chat, the app keeps running."""
        history = list(history or [])
        if not message:
            yield history, ""
            return
        history += [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        if ctx is None:
            history[-1]["content"] = "Load a clip first (upload or pick an example)."
            yield history, ""
            return
        try:
            for partial in self._reply(message, ctx, mode, frames, prompt, agent, tools):
                history[-1]["content"] = partial
                yield history, ""
        except (MevqaError, RuntimeError) as e:
            history[-1]["content"] = f"error: {e}"
        if not history[-1]["content"]:
            history[-1]["content"] = "(the model gave an empty answer)"
        yield history, ""


def _clip_column(demo: Demo, recorded: dict) -> dict[str, Any]:
    """The left column: the clip, the input settings, and what the model is shown."""
    import gradio as gr

    c: dict[str, Any] = {}
    c["upload"] = gr.File(
        label=f"Clip: video or .zip of frames (≤ {demo.limits.max_mb:.0f} MB)",
        file_types=[*VIDEO_TYPES, ".zip"],
        type="filepath",
    )
    examples = sorted(str(p) for p in (DEMO / "synthme" / "frames").glob("*"))[:12]
    c["example"] = gr.Dropdown(examples, label="…or a SynthME example", value=None)
    c["mode"] = gr.Radio(
        list(INPUT_MODES), value=recorded.get("frames", {}).get("input", "frames"), label="input mode"
    )
    c["frames"] = gr.Slider(2, 16, value=8, step=1, label="frames")
    c["prompt"] = gr.Dropdown(
        list(PROMPT_STRATEGIES), value=recorded.get("prompt", "labels"), label="prompt strategy"
    )
    c["agent"] = gr.Checkbox(False, label="agent: coarse → fine → AUs, with a consistency check")
    c["tools"] = (
        [gr.Checkbox(False, label="tool agent: the served model calls mevqa's tools")]
        if demo.tool_llm
        else []
    )
    c["face"] = gr.Radio(
        ["none", "crop"], value="none", label="face: crop finds and aligns the face (uncropped videos)"
    )
    c["status"] = gr.Markdown("Upload a clip or pick an example.", elem_id="status")
    c["gallery"] = gr.Gallery(label="sampled frames", columns=4, height=220, elem_id="frames")
    c["flow"] = gr.Image(label="optical flow (onset → apex)", height=200)
    with gr.Accordion("Long video: spot the expression events", open=False):
        c["spot"] = gr.Button("Spot events", size="sm")
        c["timeline"] = gr.Image(label="timeline (signal, threshold, events)", height=160, elem_id="timeline")
        c["events"] = gr.Dropdown([], label="events: choose one to ask about it", elem_id="events")
    return c


def _layout(demo: Demo, notice: str, recorded: dict):
    import gradio as gr

    with gr.Blocks(title="mevqa — micro-expression VQA") as blocks:
        gr.Markdown(f"# mevqa — ask about a micro-expression\n{notice}")
        clip_state = gr.State(None)
        session = gr.State(None, delete_callback=_remove)  # this user's upload folder, gone with the session
        with gr.Row():
            with gr.Column(scale=1):
                c = _clip_column(demo, recorded)
            with gr.Column(scale=2):
                chat = gr.Chatbot(label="chat", height=420, elem_id="chat")
                box = gr.Textbox(placeholder="Ask about the clip…", label="question")
                with gr.Row():
                    buttons = [
                        gr.Button(q, size="sm") for q in TEMPLATE_EXAMPLES[:4] + TEMPLATE_EXAMPLES[6:7]
                    ]
        # decoding runs beside other users' (4 at a time); the model answers one request at a time
        load_io = dict(
            inputs=[c["upload"], c["example"], c["mode"], c["frames"], c["face"], session],
            outputs=[clip_state, c["gallery"], c["flow"], c["status"], session],
            concurrency_limit=4,
            concurrency_id="decode",
        )
        c["upload"].change(demo.load, **load_io, api_name="load_clip")
        c["example"].change(demo.load, **load_io, api_visibility="private")
        c["spot"].click(
            demo.spot,
            inputs=[clip_state, session],
            outputs=[c["timeline"], c["events"], c["status"]],
            concurrency_limit=2,
            concurrency_id="decode",
            api_name="spot",
        )
        c["events"].change(
            demo.pick,
            inputs=[c["events"], clip_state],
            outputs=[clip_state, c["gallery"], c["flow"], c["status"]],
            concurrency_id="decode",
            api_name="pick_event",
        )
        chat_io = dict(
            inputs=[box, chat, clip_state, c["mode"], c["frames"], c["prompt"], c["agent"], *c["tools"]],
            outputs=[chat, box],
            concurrency_limit=1,
            concurrency_id="model",
        )
        box.submit(demo.respond, **chat_io, api_name="ask")
        for b in buttons:
            b.click(lambda q: q, inputs=b, outputs=box, api_visibility="private").then(
                demo.respond, **chat_io, api_visibility="private"
            )
    return blocks


def build_demo(
    model: str | None = None,
    adapter: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    limits: UploadLimits = UploadLimits(),
    work_dir: str | Path | None = None,
):
    """The app as a gr.Blocks; the model is loaded once here."""
    notice = f"Model: `{model}`" + (f" + adapter `{adapter}`" if adapter else "")
    if model is None:
        model, adapter, what = default_model()
        notice = f"No checkpoint given — running on {what}."
    server = ServerSpec(base_url=(base_url,), api_key=api_key) if base_url else ServerSpec()
    backend = load_backend(
        ModelSpec(model, adapter, backend="openai" if base_url else "transformers"), server
    )
    if work_dir:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="mevqa-app-", dir=work_dir))  # this app's; removed when it exits
    atexit.register(_remove, str(root))
    tool_llm = None
    if base_url:
        from mevqa.agent.lc import server_chat_model

        def tool_llm() -> Any:
            return server_chat_model(base_url, backend.model, api_key)

    return _layout(Demo(backend, limits, root, tool_llm), notice, recorded_settings(adapter))


def parse_auth(auth: str | None) -> tuple[str, str] | None:
    """`user:pass` (from --auth or $MEVQA_AUTH); an empty user or password would lock everyone out."""
    if not auth:
        return None
    user, sep, password = auth.partition(":")
    if not sep or not user or not password:
        raise InputError("--auth / MEVQA_AUTH — expected user:pass with a non-empty user and password")
    return user, password


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="mevqa Gradio demo")
    p.add_argument("--model", help="model directory or Hub id (default: the demo's tiny model)")
    p.add_argument("--adapter", help="LoRA adapter folder (or the served adapter name with --base-url)")
    p.add_argument("--base-url", help="use an OpenAI-compatible server (vLLM) instead of loading the model")
    p.add_argument("--api-key", help="key for --base-url (default: $MEVQA_API_KEY)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--auth", help="user:pass login (default: $MEVQA_AUTH; none if unset)")
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="largest upload (default: 50)")
    p.add_argument(
        "--work-dir", help="folder for unpacked uploads (default: a temporary folder, removed on exit)"
    )
    a = p.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        auth = parse_auth(a.auth or os.environ.get("MEVQA_AUTH"))
        if a.base_url and not a.model:
            raise InputError("--base-url — also pass --model (the served model name)")
        limits = UploadLimits(max_mb=a.max_upload_mb)
        demo = build_demo(
            a.model, a.adapter, a.base_url, a.api_key or os.environ.get("MEVQA_API_KEY"), limits, a.work_dir
        )
    except MevqaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # SIGTERM runs the clean-up, as Ctrl-C does
    demo.queue().launch(
        server_name=a.host,
        server_port=a.port,
        auth=auth,
        max_file_size=f"{max(1, int(a.max_upload_mb * 1024))}kb",  # "0.4" MB as "0mb" refused every upload
        show_error=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
