"""`mevqa ask` (one question about one clip) and `mevqa chat` (a terminal conversation about one)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from mevqa import process_seconds
from mevqa.cli._args import add_settings, load_settings
from mevqa.config import AskConfig
from mevqa.errors import MevqaError


def _settings(a: argparse.Namespace, command: str) -> AskConfig:
    """Flags, with the adapter's recorded frame settings and prompt as defaults."""
    from mevqa.backends.base import adapter_defaults

    return load_settings(a, AskConfig, command, adapter_defaults)


def cmd_ask(a: argparse.Namespace) -> int:
    from mevqa.backends.base import VQARequest, load_backend, set_threads
    from mevqa.evaluation.parse import prompted, voted
    from mevqa.inputs import load_clip, visual_parts
    from mevqa.prompts import Message, check_question

    cfg = _settings(a, "ask")
    check_question(a.question, cfg.max_question_chars)
    # a bad clip fails before a model loads
    keys = _keyframes(a.clip, cfg)
    clip = load_clip(a.clip, cfg.frames, *keys)
    set_threads(cfg.threads)
    backend = load_backend(cfg.model, cfg.server, cfg.vllm)
    t0 = time.perf_counter()
    parts = visual_parts(clip, cfg.frames)
    text = prompted(backend, parts, a.question, cfg.prompt, cfg.gen, cfg.seed)
    req = VQARequest("ask", (Message.user(*parts, text),), seed=cfg.seed)
    (ans,) = backend.generate([req], cfg.gen)
    ans = voted(a.question, ans)
    if ans.error:
        raise MevqaError(f"{a.clip} — the model failed on this clip: {ans.error}")
    if a.json:
        out = {
            "answer": ans.text,
            "model": cfg.model.model,
            "adapter": cfg.model.adapter,
            "frames": clip.indices,
            "seconds": round(time.perf_counter() - t0, 3),  # answering: frames to model input, generate
            "process_seconds": round(process_seconds(), 3),  # since the process started, imports included
            "threads": _torch_threads(),
        }
        if cfg.event:
            out["event"] = dict(zip(("n", "onset", "apex", "offset"), (cfg.event, *keys)))
        if ans.samples:
            out["samples"] = list(ans.samples)
        print(json.dumps(out))
    else:
        from mevqa.cli import for_terminal  # here: mevqa.cli imports this module

        print(for_terminal(ans.text))
    return 0


def _torch_threads() -> int | None:
    torch = sys.modules.get("torch")  # a served model's ask imports no torch
    return torch.get_num_threads() if torch else None


def _keyframes(path: str, cfg: AskConfig) -> tuple[int | None, int | None, int | None]:
    """--onset/--apex/--offset, or those of the spotted --event."""
    if cfg.event is None:
        return cfg.onset, cfg.apex, cfg.offset
    from mevqa.spot import event_frames, spot_settings

    return event_frames(
        path, cfg.event, spot_settings(cfg.frames.face, cfg.spot_recipe), cfg.frames.folder_fps
    )


def cmd_chat(a: argparse.Namespace) -> int:
    from mevqa.agent import ChatSession, ClipContext, chat_help, tool_llm
    from mevqa.backends.base import load_backend, set_threads

    cfg = _settings(a, "chat")
    ctx = ClipContext(a.clip, cfg.frames, *_keyframes(a.clip, cfg), spot_recipe=cfg.spot_recipe)
    ctx.parts()  # a bad clip fails here, before the model loads
    set_threads(cfg.threads)
    backend = load_backend(cfg.model, cfg.server, cfg.vllm)
    session = ChatSession(
        backend,
        ctx,
        cfg.gen,
        tool_llm=tool_llm(cfg, backend),
        prompt=cfg.prompt,
        max_question_chars=cfg.max_question_chars,
        seed=cfg.seed,
    )
    who = cfg.model.model + (f" + {cfg.model.adapter}" if cfg.model.adapter else "")
    print(f"chatting about {a.clip} with {who}. {chat_help()}")
    from mevqa.cli import for_terminal  # here: mevqa.cli imports this module

    session.repl(input, lambda text: print(for_terminal(text)))
    return 0


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "ask",
        usage="mevqa ask CLIP QUESTION [options]",
        parents=[common],
        help="ask one question about one clip",
        description="Sample frames from CLIP (video file or frame folder) and ask QUESTION.",
    )
    p.add_argument("clip", help="video file (mp4, avi, ...) or folder of frames")
    p.add_argument("question", help='e.g. "What is the coarse expression class?"')
    p.add_argument(
        "--json",
        action="store_true",
        help="print the answer, frames, model and timing as JSON",
    )
    add_settings(p, AskConfig)
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser(
        "chat",
        usage="mevqa chat CLIP [options]",
        parents=[common],
        help="chat about one clip in the terminal (multi-turn)",
        # the commands are listed by /help (ChatSession's table): importing it here would slow every --help
        description="Multi-turn chat about CLIP; the frames go with the first question. In the chat, /help "
        "lists the commands (the agent chain, the tool agent, the flow, ...).",
    )
    p.add_argument("clip", help="video file or folder of frames")
    add_settings(p, AskConfig)
    p.set_defaults(func=cmd_chat)
