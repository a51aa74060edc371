"""mevqa Gradio demo: upload a face clip, see what the model sees, ask about it.

    python app.py [--model M] [--adapter A] [--base-url URL] [--host 127.0.0.1] [--port 7860]
                  [--auth user:pass]

`build_demo(...)` returns the gr.Blocks; nothing lives at module level. With no --model it runs on the
demo's tiny model (`make demo` builds it; else a random tiny Qwen2.5-VL is built) and says so.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from mevqa.errors import InputError, MevqaError

VIDEO_TYPES = [".mp4", ".avi", ".mov", ".mkv", ".webm"]
DEMO = Path(".cache/demo")


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


def unpack_upload(path: str, work: Path, max_mb: float) -> Path:
    """A video file, or a zip of frames extracted safely; refuses what is too big or of the wrong type."""
    p = Path(path)
    size_mb = p.stat().st_size / 2**20
    if size_mb > max_mb:
        raise InputError(f"{p.name} — {size_mb:.1f} MB is over the {max_mb:.0f} MB upload limit")
    suffix = p.suffix.lower()
    if suffix in VIDEO_TYPES:
        return p
    if suffix != ".zip":
        raise InputError(f"{p.name} — upload a video ({', '.join(VIDEO_TYPES)}) or a .zip of frames")
    out = work / p.stem
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with zipfile.ZipFile(p) as z:
        names = [n for n in z.namelist() if Path(n).suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp")]
        if not names:
            raise InputError(f"{p.name} — the zip holds no .jpg/.png/.bmp frames")
        for n in names:  # flatten: only file names, so no member can write outside `out`
            (out / Path(n).name).write_bytes(z.read(n))
    return out


def build_demo(
    model: str | None = None,
    adapter: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    max_upload_mb: float = 50.0,
):
    """The app as a gr.Blocks; the model is loaded once here."""
    import gradio as gr

    from mevqa.agent import ClipContext, chat_model, hierarchical
    from mevqa.backends.base import VQARequest, load_backend
    from mevqa.config import INPUT_MODES, FrameConfig, GenConfig
    from mevqa.prompts import PROMPT_STRATEGIES, TEMPLATE_EXAMPLES, Message, render_question

    notice = f"Model: `{model}`" + (f" + adapter `{adapter}`" if adapter else "")
    if model is None:
        model, adapter, what = default_model()
        notice = f"No checkpoint given — running on {what}."
    from mevqa.train.adapters import recipe

    recorded = recipe(adapter) if adapter and Path(adapter).is_dir() else {}
    default_mode = recorded.get("input", "frames")  # what the adapter was trained on
    kind = "openai" if base_url else "transformers"
    backend = load_backend(kind, model=model, adapter=adapter, base_url=base_url, api_key=api_key)
    gen = GenConfig(max_new_tokens=64, batch_size=1)
    work = Path(tempfile.mkdtemp(prefix="mevqa-app-"))
    examples = sorted(str(p) for p in (DEMO / "synthme" / "frames").glob("*"))[:12]

    def load(file, example, mode, frames):
        try:
            clip = unpack_upload(file, work, max_upload_mb) if file else (Path(example) if example else None)
            if clip is None:
                return None, [], None, "Upload a clip or pick an example."
            ctx = ClipContext(str(clip), FrameConfig(frames=int(frames), input=mode))
            images = ctx.images(FrameConfig(frames=int(frames)))
            flow, motion = ctx.flow()
        except MevqaError as e:
            return None, [], None, f"**error:** {e}"
        top = max(("brows", "eyes", "nose", "mouth", "chin"), key=motion.get)
        return (
            str(clip),
            images,
            flow,
            f"Loaded `{Path(clip).name}`: {len(images)} frames; most motion: {top}.",
        )

    def respond(message, history, clip, mode, frames, prompt, agent) -> Iterator[tuple[list, str]]:
        history = list(history or [])
        if not message:
            yield history, ""
            return
        history.append({"role": "user", "content": message})
        if not clip:
            history.append({"role": "assistant", "content": "Load a clip first (upload or pick an example)."})
            yield history, ""
            return
        cfg = FrameConfig(frames=int(frames), input=mode)
        ctx = ClipContext(clip, cfg)
        if agent:
            r = hierarchical(chat_model(backend, gen), ctx)
            steps = "\n".join(f"- **{s['step']}**: {s['answer']}" for s in r["steps"])
            verdict = "consistent" if r["consistent"] else "⚠️ " + "; ".join(r["flags"])
            head = f"coarse **{r['coarse']}**, fine **{r['fine']}**, AUs {', '.join(r['aus']) or '—'}"
            text = f"{head}\n\n{steps}\n\n{verdict}"
            history.append({"role": "assistant", "content": text})
            yield history, ""
            return
        req = VQARequest("app", (Message.user(*ctx.parts(), render_question(message, prompt)),))
        history.append({"role": "assistant", "content": ""})
        if hasattr(backend, "stream"):
            for partial in backend.stream(req, gen):
                history[-1]["content"] = partial
                yield history, ""
            if not history[-1]["content"]:
                history[-1]["content"] = "(the model gave an empty answer)"
        else:
            (ans,) = backend.generate([req], gen)
            history[-1]["content"] = ans.text if ans.ok else f"error: {ans.error}"
        yield history, ""

    with gr.Blocks(title="mevqa — micro-expression VQA") as demo:
        gr.Markdown(f"# mevqa — ask about a micro-expression\n{notice}")
        clip_state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(
                    label=f"Clip: video or .zip of frames (≤ {max_upload_mb:.0f} MB)",
                    file_types=[*VIDEO_TYPES, ".zip"],
                    type="filepath",
                )
                example = gr.Dropdown(examples, label="…or a SynthME example", value=None)
                mode = gr.Radio(list(INPUT_MODES), value=default_mode, label="input mode")
                frames = gr.Slider(2, 16, value=8, step=1, label="frames")
                prompt = gr.Dropdown(
                    list(PROMPT_STRATEGIES), value=recorded.get("prompt", "labels"), label="prompt strategy"
                )
                agent = gr.Checkbox(False, label="agent: coarse → fine → AUs, with a consistency check")
                status = gr.Markdown("Upload a clip or pick an example.", elem_id="status")
                gallery = gr.Gallery(label="sampled frames", columns=4, height=220, elem_id="frames")
                flow_img = gr.Image(label="optical flow (onset → apex)", height=200)
            with gr.Column(scale=2):
                chat = gr.Chatbot(label="chat", height=420, elem_id="chat")
                box = gr.Textbox(placeholder="Ask about the clip…", label="question")
                with gr.Row():
                    buttons = [
                        gr.Button(q, size="sm") for q in TEMPLATE_EXAMPLES[:4] + TEMPLATE_EXAMPLES[6:7]
                    ]
        load_args = dict(
            inputs=[upload, example, mode, frames], outputs=[clip_state, gallery, flow_img, status]
        )
        upload.change(load, **load_args, api_name="load_clip")
        example.change(load, **load_args, api_name=False)
        chat_io = dict(inputs=[box, chat, clip_state, mode, frames, prompt, agent], outputs=[chat, box])
        box.submit(respond, **chat_io, api_name="ask")
        for b in buttons:
            b.click(lambda q: q, inputs=b, outputs=box, api_name=False).then(
                respond, **chat_io, api_name=False
            )
    return demo


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="mevqa Gradio demo")
    p.add_argument("--model", help="model directory or Hub id (default: the demo's tiny model)")
    p.add_argument("--adapter", help="LoRA adapter folder (or the served adapter name with --base-url)")
    p.add_argument("--base-url", help="use an OpenAI-compatible server (vLLM) instead of loading the model")
    p.add_argument("--api-key", help="key for --base-url (default: $MEVQA_API_KEY)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--auth", help="user:pass login (default: $MEVQA_AUTH; none if unset)")
    p.add_argument("--max-upload-mb", type=float, default=50.0)
    a = p.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    auth = a.auth or os.environ.get("MEVQA_AUTH")
    if auth and ":" not in auth:
        print("error: --auth — expected user:pass", file=sys.stderr)
        return 2
    if a.base_url and not a.model:
        print("error: --base-url — also pass --model (the served model name)", file=sys.stderr)
        return 2
    try:
        demo = build_demo(
            a.model, a.adapter, a.base_url, a.api_key or os.environ.get("MEVQA_API_KEY"), a.max_upload_mb
        )
    except MevqaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    demo.queue().launch(
        server_name=a.host,
        server_port=a.port,
        auth=tuple(auth.split(":", 1)) if auth else None,
        max_file_size=f"{a.max_upload_mb:.0f}mb",
        show_error=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
