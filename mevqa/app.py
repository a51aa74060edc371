"""The Gradio app (`mevqa app`, `python app.py`): upload a face clip, see what the model sees, ask about it.

`build_demo(cfg, limits, work_dir)` returns the gr.Blocks for an `AskConfig`: the same model settings as
`mevqa ask` and `mevqa chat`, an adapter's recorded ones included (`mevqa app` resolves them as they do),
and the page's widgets start at them. Nothing lives at module level. Without a model it runs on the demo's
tiny model (`make demo` builds it; else a random tiny Qwen2.5-VL is built) and says so.

Uploads are hostile until proven otherwise: each upload is unpacked into a fresh folder of its own
session (never named after the user's file), zips are checked against size and member caps from their
directory *before* anything is written and again while copying, every zip frame's header is checked for
pixel count before any frame is decoded, videos are probed for frame size and count before decoding, and
big clips wait for each other to decode. A failed upload is removed at once, an idle session's folder
after `idle_minutes`, everything (Gradio's upload cache too: it lives in the app's folder) when the app
exits; `max_disk_mb` caps all of it together (`UploadLimits`). Messages name files as the user knows them
(`clip/img3.png`), never by their server path; questions longer than `max_question_chars` are refused, and
a client that leaves stops its generation.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import weakref
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mevqa.agent import ClipContext, agent_markdown, hierarchical, long_video_answer, tool_llm
from mevqa.backends.base import Backend, VQARequest, load_backend, set_threads
from mevqa.config import FACE_MODES, INPUT_MODES, PROMPT_STRATEGIES, AskConfig, FrameConfig, UploadLimits
from mevqa.errors import InputError, MevqaError, MissingDependency
from mevqa.evaluation.parse import prompted
from mevqa.evaluation.spot_run import event_label, timeline_png
from mevqa.facs import REGION_ROWS
from mevqa.prompts import TEMPLATE_EXAMPLES, Message, check_question
from mevqa.video import FRAME_EXTS, VIDEO_EXTS, check_frame_file, open_clip

DEMO = Path(".cache/demo")
SHOWN_SIDE = 768  # the page shows frames at most this large; Gradio stores every image it shows as a PNG


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


def page_frames(base: FrameConfig, frames: int, mode: str, face: str | None = None) -> FrameConfig:
    """`base` with the page's frame count and input mode (and face stage): every other setting (sampling,
    flow_with_oao, flow_method, the fps, ...) stays as the adapter recorded it or the flags set it, so the
    app asks as `mevqa ask` does with the same settings."""
    face_cfg = base.face if face is None else dataclasses.replace(base.face, mode=face)
    return dataclasses.replace(base, frames=int(frames), input=mode, face=face_cfg)


def _probe_video(p: Path, limits: UploadLimits) -> None:
    """Frame size and count from the container header, before anything is decoded."""
    import cv2

    cap = cv2.VideoCapture(str(p))
    try:
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()
    if max(w, h) > limits.max_side or n > limits.max_video_frames:
        raise InputError(
            f"{p.name} — {w}x{h} pixels, {n} frames: over the limits ({limits.max_side} px a side, "
            f"{limits.max_video_frames} frames)"
        )


def _natural(name: str) -> list[str | int]:
    """Sort key reading numbers as numbers: `zip clip.zip *.jpg` stores img1, img10, img100, img2, ..."""
    return [int(t) if i % 2 else t.lower() for i, t in enumerate(re.split(r"([0-9]+)", name))]


def _safe(stem: str) -> str:
    """A member's or an upload's name, reduced to characters that are safe in a file name on any system."""
    return re.sub(r"[^A-Za-z0-9._-]", "", stem, flags=re.ASCII).lstrip(".")[-40:]


def _members(z: zipfile.ZipFile, name: str, limits: UploadLimits) -> list[zipfile.ZipInfo]:
    """The zip's frame members in the order of their names, refused from its directory when too many or
    too large."""
    members = [i for i in z.infolist() if not i.is_dir() and Path(i.filename).suffix.lower() in FRAME_EXTS]
    members.sort(key=lambda i: _natural(i.filename))
    if not members:
        raise InputError(f"{name} — the zip holds no {'/'.join(sorted(FRAME_EXTS))} frames")
    if len(members) > limits.max_members:
        raise InputError(f"{name} — {len(members)} frames; at most {limits.max_members} per clip")
    total = sum(i.file_size for i in members) / 2**20
    if total > limits.max_unpacked_mb:
        raise InputError(f"{name} — unpacks to {total:.0f} MB; at most {limits.max_unpacked_mb:g} MB")
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


def _extract(z: zipfile.ZipFile, name: str, out: Path, limits: UploadLimits) -> None:
    """Copy the frames, each checked for pixel count from its header (a 2 KB zip can hold two 13000x13000
    PNGs, 500 MB each once decoded): nothing is decoded before every frame has passed."""
    budget = [int(limits.max_unpacked_mb * 2**20)]
    for k, info in enumerate(_members(z, name, limits)):
        # a fresh name whose last number is the frame's place (FolderClip orders by it); no member can
        # write outside `out` and no two collide
        suffix = Path(info.filename).suffix.lower()
        dest = out / f"{_safe(Path(info.filename).stem) or 'frame'}_{k}{suffix}"
        _copy_capped(z, info, dest, budget, name)
        try:
            check_frame_file(dest)
        except InputError as e:
            raise InputError(f"{name}: {info.filename} — {str(e).partition(' — ')[2]}") from None


def unpack_upload(path: str, work: Path, limits: UploadLimits | None = None) -> Path:
    """A video file (probed), or a zip of frames extracted into a *new* folder under `work` (as
    `work/clip-XXXX/<upload name>/`, so that messages can name frames as `clip/img3_2.png`)."""
    limits = limits or UploadLimits()
    p = Path(path)
    size_mb = p.stat().st_size / 2**20
    if size_mb > limits.max_upload_mb:
        raise InputError(f"{p.name} — {size_mb:.1f} MB is over the {limits.max_upload_mb:g} MB upload limit")
    suffix = p.suffix.lower()
    if suffix in VIDEO_EXTS:
        _probe_video(p, limits)
        return p
    if suffix != ".zip":
        raise InputError(f"{p.name} — upload a video ({', '.join(sorted(VIDEO_EXTS))}) or a .zip of frames")
    work.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix="clip-", dir=work))  # fresh, never derived from the user's file
    out = fresh / (_safe(p.stem) or "clip")
    out.mkdir()
    try:
        with zipfile.ZipFile(p) as z:
            _extract(z, p.name, out, limits)
    except zipfile.BadZipFile:
        shutil.rmtree(fresh, ignore_errors=True)
        raise InputError(f"{p.name} — not a readable zip file") from None
    except UnicodeDecodeError:  # a member flagged UTF-8 whose name is not: zipfile cannot list the zip
        shutil.rmtree(fresh, ignore_errors=True)
        raise InputError(f"{p.name} — a member's name is not the UTF-8 the zip declares; zip again") from None
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    return out


def _remove(path: str | None) -> None:
    if path:
        shutil.rmtree(path, ignore_errors=True)


def _clear(folder: Path) -> None:
    for old in folder.iterdir():
        shutil.rmtree(old, ignore_errors=True)


def _disk_mb(root: Path) -> float:
    total = 0
    for folder, _, files in os.walk(root):
        for f in files:
            with contextlib.suppress(OSError):  # removed meanwhile by another session's clean-up
                total += os.lstat(os.path.join(folder, f)).st_size
    return total / 2**20


def _unpacked_mb(path: str) -> float:
    """What unpacking will add to the disk: a zip's frames (from its directory); a video is kept as is."""
    if Path(path).suffix.lower() != ".zip":
        return 0.0
    try:
        with zipfile.ZipFile(path) as z:
            frames = [i for i in z.infolist() if Path(i.filename).suffix.lower() in FRAME_EXTS]
            return sum(i.file_size for i in frames) / 2**20
    except (zipfile.BadZipFile, UnicodeDecodeError, OSError):
        return 0.0  # unpack_upload names what is wrong with it


def _gradio_cache() -> Path:
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder()).resolve()


def _drop_upload(path: str | None) -> None:
    """Gradio's copy of an upload, once unpacked or refused; a file outside Gradio's cache (an in-process
    caller's own) is never touched."""
    if not path or _gradio_cache() not in Path(path).resolve().parents:
        return
    Path(path).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        Path(path).parent.rmdir()  # Gradio keeps each upload in a folder of its own


def _thumb(im: Any) -> Any:
    im = im.copy()
    im.thumbnail((SHOWN_SIDE, SHOWN_SIDE))
    return im


class Budget:
    """An amount (pixels being decoded, megabytes on disk) shared by all users: `hold` waits for room,
    `take` refuses at once when there is none."""

    def __init__(self, total: float):
        self.total, self.used, self.cond = total, 0.0, threading.Condition()

    @contextlib.contextmanager
    def hold(self, need: float) -> Iterator[None]:
        need = min(need, self.total)  # more than all of it runs alone
        with self.cond:
            self.cond.wait_for(lambda: self.used + need <= self.total)
            self.used += need
        with self._given_back(need):
            yield

    @contextlib.contextmanager
    def take(self, need: float, in_use: float, name: str) -> Iterator[None]:
        with self.cond:
            used = in_use + self.used
            if used + need > self.total:
                raise InputError(
                    f"{name} — the app's uploads already fill {used:.0f} of its {self.total:.0f} MB "
                    "(--max-disk-mb); try again later"
                )
            self.used += need
        with self._given_back(need):
            yield

    @contextlib.contextmanager
    def _given_back(self, need: float) -> Iterator[None]:
        """What `hold` and `take` reserved, released (and any waiter woken) however the work ends."""
        try:
            yield
        finally:
            with self.cond:
                self.used -= need
                self.cond.notify_all()


class Demo:
    """What the page's events do: one backend answering with one AskConfig (its generation and frame
    settings, the page choosing only the frame count, input mode, face stage and prompt), one folder for
    every upload."""

    def __init__(
        self,
        backend: Backend,
        cfg: AskConfig,
        limits: UploadLimits,
        root: Path,
        tool_llm: Callable[[], Any] | None = None,
    ):
        self.backend, self.cfg, self.limits, self.root = backend, cfg, limits, Path(root).resolve()
        self.tool_llm = tool_llm  # the chat model that drives the tool agent: a served model that calls tools
        self.pixels, self.disk = Budget(limits.decode_megapixels * 1e6), Budget(limits.max_disk_mb)
        # every clip a session decoded, weakly: an expired session's frames leave memory with its folder
        self._decoded: dict[int, weakref.ref[ClipContext]] = {}
        self._decoded_lock = threading.Lock()  # loads run on Gradio's worker threads

    def _track(self, ctx: ClipContext) -> ClipContext:
        with self._decoded_lock:
            self._decoded.pop(id(ctx), None)
            self._decoded[id(ctx)] = weakref.ref(ctx)  # the most recently used last
        return ctx

    def _make_room(self, used: ClipContext) -> None:
        """The decoded frames all sessions keep stay within the decode budget's pixels: the clips used
        least recently forget theirs (their next question decodes again). Without it, four sessions each
        keeping a 16-frame 4096x4096 clip held 3.2 GB beside the next clip's decoding."""
        self._track(used)
        with self._decoded_lock:
            live = [c for c in (ref() for ref in self._decoded.values()) if c is not None]
        sizes = [(c, c.kept_pixels()) for c in live]
        kept = sum(px for _, px in sizes)
        for ctx, px in sizes[:-1]:  # never the clip in use
            if kept <= self.pixels.total:
                break
            kept -= px
            ctx.forget()

    def load(self, file, example, mode, frames, face, session):
        """Unpack the upload into a fresh folder of this session; decode the frames and the flow once."""
        session = self._session(session)
        if file and not Path(file).exists():  # Gradio sends an upload again when the example changes
            file = None
        if not (file or example):
            return None, [], None, "Upload a clip or pick an example.", str(session)
        _clear(session)  # this session's previous upload
        try:
            clip = self._unpack(file, session) if file else Path(example)
            cfg = page_frames(self.cfg.frames, frames, mode, face)
            ctx = self._track(ClipContext(str(clip), cfg, spot_recipe=self.cfg.spot_recipe))
            width, height = open_clip(clip, cfg.folder_fps).size  # from the first frame only
            with self.pixels.hold(width * height * (int(frames) + 3)):  # + the flow's 3 frames
                images, status = self._show(ctx, f"Loaded `{Path(file or example).name}`")
            self._make_room(ctx)
        except BaseException as e:
            _clear(session)  # a failed upload is removed at once
            if not isinstance(e, MevqaError):
                raise
            return None, [], None, f"**error:** {self.public(str(e))}", str(session)
        finally:
            _drop_upload(file)
        return ctx, images, _thumb(ctx.flow()[0]), status, str(session)

    def _unpack(self, file: str, session: Path) -> Path:
        """The upload in this session's folder, within the app's disk cap."""
        with self.disk.take(_unpacked_mb(file), _disk_mb(self.root), Path(file).name):
            clip = unpack_upload(file, session, self.limits)
        if clip == Path(file) and _gradio_cache() in clip.resolve().parents:  # a video: move it in too
            dest = Path(tempfile.mkdtemp(prefix="clip-", dir=session)) / (_safe(clip.name) or "clip.mp4")
            clip = Path(shutil.move(clip, dest))
        return clip

    def _session(self, session: str | None) -> Path:
        """This user's folder, created on first use, and again after it expired; marked as in use."""
        path = Path(session) if session else Path(tempfile.mkdtemp(prefix="session-", dir=self.root))
        path.mkdir(parents=True, exist_ok=True)
        os.utime(path)
        return path

    def _touch(self, ctx: ClipContext) -> bool:
        """Mark the session of an uploaded clip as in use; False when it expired (its folder is gone)."""
        clip = Path(ctx.path).resolve()
        if self.root not in clip.parents:
            return True  # an example
        with contextlib.suppress(OSError):
            os.utime(self.root / clip.relative_to(self.root).parts[0])
        return clip.exists()

    def expire_idle(self) -> None:
        """Remove what idle sessions left (folders, and files in Gradio's cache when it is the app's)."""
        cutoff = time.time() - self.limits.idle_minutes * 60
        for folder in self.root.glob("session-*"):
            with contextlib.suppress(OSError):
                if folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
        for f in (self.root / "gradio").rglob("*"):
            with contextlib.suppress(OSError):
                if f.is_file() and f.stat().st_mtime < cutoff:
                    f.unlink()
        for key, ref in list(self._decoded.items()):
            ctx = ref()
            if ctx is None or not Path(ctx.path).exists():
                if ctx is not None:
                    ctx.forget()
                self._decoded.pop(key, None)

    def expire_forever(self) -> None:
        while True:  # a daemon thread: checks four times per idle period, at least once a minute
            time.sleep(max(1.0, min(60.0, self.limits.idle_minutes * 15)))
            self.expire_idle()

    def public(self, text: str) -> str:
        """A message with server paths shown as the user knows them: relative to the uploaded clip."""

        def shown(m: re.Match) -> str:  # session-X/clip-Y/clip/img3_2.png -> clip/img3_2.png
            parts = Path(m.group(1).lstrip("/")).parts
            clip = next((i for i, d in enumerate(parts) if d.startswith("clip-")), len(parts) - 2)
            return "/".join(parts[clip + 1 :]) or "the upload"

        for prefix in sorted({str(self.root), str(_gradio_cache())}, key=len, reverse=True):
            text = re.sub(re.escape(prefix) + r"([^\s'\"`,;)]*)", shown, text)
        return text

    @staticmethod
    def _show(ctx: ClipContext, what: str) -> tuple[list, str]:
        images = ctx.images(dataclasses.replace(ctx.frames, input="frames"))
        top = max(REGION_ROWS, key=ctx.flow()[1].get)
        return [_thumb(im) for im in images], f"{what}: {len(images)} frames; most motion: {top}."

    def spot(self, ctx, session):
        """Spot the expression events of the loaded video: the timeline picture and a list to choose from."""
        import gradio as gr

        if ctx is None or not self._touch(ctx):
            return None, gr.update(choices=[], value=None), "Load a video first."
        try:  # the whole video's events, also when an event is chosen
            events, sig = ctx.events(), ctx.signal()
            png = self._session(session) / "timeline.png"
            timeline_png(png, Path(ctx.path).name, sig, events, [], ctx.spot_settings())
        except MevqaError as e:
            return None, gr.update(choices=[], value=None), f"**error:** {self.public(str(e))}"
        choices = [event_label(i + 1, e, sig.video_fps) for i, e in enumerate(events)]
        micro = sum(e.type == "micro" for e in events)
        status = f"Spotted {len(events)} events ({micro} micro, {len(events) - micro} macro): choose one."
        return str(png), gr.update(choices=choices, value=None), status

    def pick(self, choice, ctx):
        """Point the chat at the chosen event: its onset, apex and offset feed the input modes."""
        if ctx is None or not choice or not self._touch(ctx):
            return ctx, [], None, "Spot the events first, then choose one."
        try:
            narrowed = self._track(ctx.event(int(choice.split(":")[0])))
            images, status = self._show(narrowed, f"Event {choice}")
        except (MevqaError, ValueError) as e:
            return ctx, [], None, f"**error:** {self.public(str(e))}"
        return narrowed, images, _thumb(narrowed.flow()[0]), status

    def _reply(self, message, ctx, mode, frames, prompt, agent, tools=False) -> Iterator[str]:
        gen = self.cfg.gen
        if tools and self.tool_llm:
            from mevqa.agent.lc import tool_agent

            r = tool_agent(self.tool_llm(), ctx, self.backend, gen, message)
            calls = "".join(f"\n- `{c['tool']}({c['args']})` → {c['result'][:200]}" for c in r["calls"])
            yield f"{r['answer']}\n{calls}"
            return
        if agent:
            yield agent_markdown(hierarchical(self.backend, ctx, gen))
            return
        events = long_video_answer(self.backend, ctx, message, gen)  # "how many micro-expressions?"
        if events is not None:
            yield events
            return
        # the clip's frame settings (the recorded ones, the face stage it was loaded with) with the page's
        # count and mode; the question phrased as ask and chat phrase it (hierarchical: stage 1 first)
        parts = ctx.parts(page_frames(ctx.frames, frames, mode))
        text = prompted(self.backend, parts, message, prompt, gen, self.cfg.seed)
        req = VQARequest("app", (Message.user(*parts, text),), seed=self.cfg.seed)
        yield from self.backend.stream(req, gen)

    def respond(
        self, message, history, ctx, mode, frames, prompt, agent, tools=False
    ) -> Iterator[tuple[list, str]]:
        """Stream the answer into the chat; a failure is shown in the chat, the app keeps running.

        Gradio closes this generator when the client leaves; closing the reply with it stops the model."""
        history = list(history or [])
        if not message:
            yield history, ""
            return
        limit = self.cfg.max_question_chars
        shown = message if len(message) <= limit else message[:200] + "…"  # not 256 KB echoed back
        history += [{"role": "user", "content": shown}, {"role": "assistant", "content": ""}]
        if ctx is None or not self._touch(ctx):
            expired = (
                f"The upload was removed after {self.limits.idle_minutes:g} idle minutes: upload it again."
            )
            history[-1]["content"] = expired if ctx else "Load a clip first (upload or pick an example)."
            yield history, ""
            return
        try:
            check_question(message, limit)
            with contextlib.closing(self._reply(message, ctx, mode, frames, prompt, agent, tools)) as reply:
                for partial in reply:
                    history[-1]["content"] = partial
                    yield history, ""
        except (MevqaError, RuntimeError) as e:
            history[-1]["content"] = f"error: {self.public(str(e))}"
        if not history[-1]["content"]:
            history[-1]["content"] = "(the model gave an empty answer)"
        yield history, ""


def _clip_column(demo: Demo) -> dict[str, Any]:
    """The left column: the clip, the input settings (starting at the AskConfig's: the flags', else the
    adapter's recorded ones), and what the model is shown."""
    import gradio as gr

    c: dict[str, Any] = {}
    c["upload"] = gr.File(
        label=f"Clip: video or .zip of frames (≤ {demo.limits.max_upload_mb:g} MB)",
        file_types=[*sorted(VIDEO_EXTS), ".zip"],
        type="filepath",
    )
    examples = sorted(str(p) for p in (DEMO / "synthme" / "frames").glob("*"))[:12]
    c["example"] = gr.Dropdown(examples, label="…or a SynthME example", value=None)
    frames = demo.cfg.frames
    c["mode"] = gr.Radio(list(INPUT_MODES), value=frames.input, label="input mode")
    c["frames"] = gr.Slider(
        min(2, frames.frames), max(16, frames.frames), value=frames.frames, step=1, label="frames"
    )
    c["prompt"] = gr.Dropdown(list(PROMPT_STRATEGIES), value=demo.cfg.prompt, label="prompt strategy")
    c["agent"] = gr.Checkbox(False, label="agent: coarse → fine → AUs, with a consistency check")
    c["tools"] = (
        [gr.Checkbox(False, label="tool agent: the served model calls mevqa's tools")]
        if demo.tool_llm
        else []
    )
    c["face"] = gr.Radio(
        list(FACE_MODES),
        value=frames.face.mode,
        label="face: crop finds and aligns the face (uncropped videos)",
    )
    c["status"] = gr.Markdown("Upload a clip or pick an example.", elem_id="status")
    c["gallery"] = gr.Gallery(label="sampled frames", columns=4, height=220, elem_id="frames")
    c["flow"] = gr.Image(label="optical flow (onset → apex)", height=200)
    with gr.Accordion("Long video: spot the expression events", open=False):
        c["spot"] = gr.Button("Spot events", size="sm")
        c["timeline"] = gr.Image(label="timeline (signal, threshold, events)", height=160, elem_id="timeline")
        c["events"] = gr.Dropdown([], label="events: choose one to ask about it", elem_id="events")
    return c


def _layout(demo: Demo, notice: str):
    import gradio as gr

    with gr.Blocks(title="mevqa — micro-expression VQA") as blocks:
        gr.Markdown(f"# mevqa — ask about a micro-expression\n{notice}")
        clip_state = gr.State(None)
        session = gr.State(None, delete_callback=_remove)  # this user's upload folder, gone with the session
        with gr.Row():
            with gr.Column(scale=1):
                c = _clip_column(demo)
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
    cfg: AskConfig,
    limits: UploadLimits | None = None,
    work_dir: str | Path | None = None,
    notice: str | None = None,
):
    """The app as a gr.Blocks answering with `cfg` (its model loaded once, here); `notice` heads the page
    (default: the model and adapter)."""
    try:
        import gradio  # noqa: F401  (the page is built from it; say what is missing before loading a model)
    except ImportError:
        raise MissingDependency("the app needs gradio: pip install 'mevqa[app]'") from None
    limits = limits or UploadLimits()
    notice = notice or f"Model: `{cfg.model.model}`" + (
        f" + adapter `{cfg.model.adapter}`" if cfg.model.adapter else ""
    )
    set_threads(cfg.threads)
    backend = load_backend(cfg.model, cfg.server, cfg.vllm)
    if work_dir:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="mevqa-app-", dir=work_dir)).resolve()  # removed when it exits
    atexit.register(_remove, str(root))
    # Gradio's upload cache in the app's folder: counted in max_disk_mb, expired, and removed with it
    # (Gradio's own lives on in /tmp/gradio after the app exits)
    os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio")
    demo = Demo(backend, cfg, limits, root, tool_llm(cfg, backend))
    threading.Thread(target=demo.expire_forever, daemon=True, name="mevqa-expire").start()
    return _layout(demo, notice)


def parse_auth(auth: str | None) -> tuple[str, str] | None:
    """`user:pass` (from --auth or $MEVQA_AUTH); an empty user or password would lock everyone out."""
    if not auth:
        return None
    user, sep, password = auth.partition(":")
    if not sep or not user or not password:
        raise InputError("--auth / MEVQA_AUTH — expected user:pass with a non-empty user and password")
    return user, password


def launch(blocks: Any, host: str, port: int, auth: tuple[str, str] | None, limits: UploadLimits) -> None:
    """Serve the page until Ctrl-C or SIGTERM; both run the clean-up (the upload folders go)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    blocks.queue().launch(
        server_name=host,
        server_port=port,
        auth=auth,
        # in bytes, mevqa's MB (2**20) exactly: "0.4" MB as "0mb" refused every upload, and as "409kb"
        # Gradio's limit was not mevqa's
        max_file_size=max(1, int(limits.max_upload_mb * 2**20)),
        show_error=True,
    )
