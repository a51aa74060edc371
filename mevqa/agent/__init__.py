"""The reasoning layer behind `mevqa chat` and the app: a clip's context, the hierarchical QA chain, and
terminal chat. It runs on any mevqa `Backend` directly (images go in as they are, no encode/decode round
trip); LangChain is only needed for the tool-calling agent and the chat-model adapter (`agent/lc.py`).

Tiny local models cannot drive free tool-calling, so the hierarchical chain's steps are explicit code:
coarse -> fine within that coarse class -> AUs -> a consistency check that flags contradictions.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from PIL import Image

from mevqa.backends.base import Answer, Backend, VQARequest
from mevqa.config import MAX_QUESTION_CHARS, AskConfig, FrameConfig, GenConfig
from mevqa.errors import MevqaError
from mevqa.evaluation.parse import parse_aus, parse_label, prompted
from mevqa.facs import AU_LOOKS, AU_NAMES, COARSE_LABELS, EMOTION_AUS, FINE_TO_COARSE
from mevqa.inputs import flow_image, load_clip, onset_flow, region_motion, visual_parts
from mevqa.prompts import (
    Q_AU_MANY,
    Q_COARSE,
    Q_FINE,
    Message,
    Part,
    VideoPart,
    check_question,
    hierarchical_question,
)


@dataclass
class ClipContext:
    """What the agent knows about one clip: its path, frame settings and key frames (if annotated).

    Decoded parts and the flow are computed once and kept: every chat turn and chain step reuses them. The
    parts of the last `KEEP` frame settings are kept (a user moving the app's frame slider would otherwise
    hold one decoded copy per position); `forget()` drops them all.
    """

    KEEP: ClassVar[int] = 2

    path: str
    frames: FrameConfig = field(default_factory=FrameConfig)
    onset: int | None = None
    apex: int | None = None
    offset: int | None = None
    spot_recipe: str | None = None  # the spotter's settings (`mevqa spot --tune`'s spot_recipe.yaml)
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    def parts(self, cfg: FrameConfig | None = None) -> list[Part]:
        """The message parts for the input mode (images, or one video part)."""
        cfg = cfg or self.frames
        parts = self._cache.pop(cfg, None)  # (the app may `forget()` this clip from another thread)
        if parts is None:
            kept = [k for k in self._cache if isinstance(k, FrameConfig)]
            for k in kept[: max(0, len(kept) - self.KEEP + 1)]:  # the least recently used first
                self._cache.pop(k, None)
            parts = visual_parts(load_clip(self.path, cfg, self.onset, self.apex, self.offset), cfg)
        self._cache[cfg] = parts  # the most recently used last
        return parts

    def forget(self) -> None:
        """Drop what was decoded (the app's expired sessions): a later turn decodes again if it can."""
        self._cache.clear()

    def kept_pixels(self) -> int:
        """Pixels of the decoded frames held for the model (the app caps them over all its sessions)."""
        images = [
            im
            for k, parts in self._cache.items()
            if isinstance(k, FrameConfig)
            for p in parts
            for im in (p.frames if isinstance(p, VideoPart) else (p,))
            if isinstance(im, Image.Image)
        ]
        return sum(im.width * im.height for im in images)

    def images(self, cfg: FrameConfig | None = None) -> list[Image.Image]:
        parts = self.parts(cfg)
        return [p for p in parts if isinstance(p, Image.Image)] or list(parts[0].frames)

    def spot_settings(self) -> Any:
        from mevqa.spot import spot_settings

        return spot_settings(self.frames.face, self.spot_recipe)

    def _spotted(self) -> tuple[list[Any], Any]:
        """The video's events and motion signal (`mevqa spot`), computed once and shared with the events'
        contexts: choosing another event does not spot the video again."""
        if "spot" not in self._cache:
            from mevqa.spot import spot_video

            self._cache["spot"] = spot_video(self.path, self.spot_settings(), None, self.frames.folder_fps)
        return self._cache["spot"]

    def events(self) -> list[Any]:
        """The expression events spotted in the whole video, in time order."""
        return self._spotted()[0]

    def signal(self) -> Any:
        return self._spotted()[1]

    def event(self, n: int) -> ClipContext:
        """The same video narrowed to its n-th spotted event (onset, apex, offset from the spotter)."""
        from mevqa.spot import nth_event

        e = nth_event(self.events(), n, self.path)
        narrowed = dataclasses.replace(self, onset=e.onset, apex=e.apex, offset=e.offset, _cache={})
        narrowed._cache["spot"] = self._spotted()
        return narrowed

    def flow(self) -> tuple[Image.Image, dict[str, float]]:
        """The onset -> apex flow image and per-region motion (pixels, 99th percentile)."""
        if "flow" not in self._cache:
            cfg = dataclasses.replace(self.frames, input="flow", flow_with_oao=False)
            onset, apex, _ = load_clip(self.path, cfg, self.onset, self.apex, self.offset).frames
            onset, f = onset_flow(onset, apex, cfg.flow_method)
            motion = {k: round(v, 3) for k, v in region_motion(f).items()}
            self._cache["flow"] = (Image.fromarray(flow_image(onset, f)), motion)
        return self._cache["flow"]


def ask(backend: Backend, parts: list[Part], text: str, gen: GenConfig) -> str:
    """One question to the VLM about these parts; a failure is an error the caller shows."""
    (ans,) = backend.generate([VQARequest("agent", (Message.user(*parts, text),))], gen)
    if ans.error:
        raise MevqaError(f"the model failed: {ans.error}")
    return ans.text


def au_reference(query: str = "") -> str:
    """FACS names, what each AU looks like, and the emotion rules (filtered by `query` if given)."""
    lines = [f"AU{n} {AU_NAMES[n]}: {AU_LOOKS[n]}" for n in AU_LOOKS]
    lines += [
        f"{e} ({FINE_TO_COARSE[e]}): AUs {', '.join(str(a) for a in sorted(aus))}"
        for e, aus in EMOTION_AUS.items()
    ]
    q = query.lower().strip()
    return "\n".join(ln for ln in lines if not q or q in ln.lower()) or f"nothing about {query!r}"


def consistency_flags(coarse: str, fine: str, aus: set[str]) -> list[str]:
    """Contradictions between the three levels (empty list = consistent)."""
    flags = []
    if fine in FINE_TO_COARSE and coarse in COARSE_LABELS and FINE_TO_COARSE[fine] != coarse:
        flags.append(f"fine '{fine}' is a {FINE_TO_COARSE[fine]} expression, but coarse was '{coarse}'")
    if coarse not in COARSE_LABELS:
        flags.append(f"coarse answer '{coarse}' is not one of {', '.join(COARSE_LABELS)}")
    if fine in EMOTION_AUS and aus:
        expected = {AU_NAMES[n] for n in EMOTION_AUS[fine]}
        if not aus & expected:
            names, cues = ", ".join(sorted(aus)), ", ".join(sorted(expected))
            flags.append(f"none of the AUs ({names}) is a cue of '{fine}' ({cues})")
    return flags


def hierarchical(backend: Backend, ctx: ClipContext, gen: GenConfig | None = None) -> dict[str, Any]:
    """coarse -> fine (within that coarse class) -> AUs, then the consistency check; with every step."""
    gen, images, steps = gen or GenConfig(), ctx.images(), []

    def step(name: str, question: str) -> str:
        answer = ask(backend, images, question, gen)
        steps.append({"step": name, "question": question, "answer": answer})
        return answer

    # the hierarchical strategy's own texts: stage 1 as eval asks it, then the rest given its answer
    coarse = parse_label(step("coarse", hierarchical_question(Q_COARSE)), "coarse")
    fine = parse_label(step("fine", hierarchical_question(Q_FINE, coarse)), "fine")
    aus = parse_aus(step("aus", hierarchical_question(Q_AU_MANY, coarse)))
    flags = consistency_flags(coarse, fine, aus)
    return {
        "coarse": coarse,
        "fine": fine,
        "aus": sorted(aus),
        "consistent": not flags,
        "flags": flags,
        "steps": steps,
    }


def agent_markdown(r: dict[str, Any]) -> str:
    """The chain's result as the app and the terminal show it."""
    steps = "\n".join(f"- **{s['step']}**: {s['answer']}" for s in r["steps"])
    verdict = "consistent" if r["consistent"] else "⚠️ " + "; ".join(r["flags"])
    head = f"coarse **{r['coarse']}**, fine **{r['fine']}**, AUs {', '.join(r['aus']) or '—'}"
    return f"{head}\n\n{steps}\n\n{verdict}"


ORDINALS = {
    "first": 1,
    "second": 2,
    "third": 3,
    "fourth": 4,
    "fifth": 5,
    "sixth": 6,
    "seventh": 7,
    "eighth": 8,
    "ninth": 9,
    "tenth": 10,
    "last": -1,
}
_COUNT = re.compile(r"\bhow many\b.*\b(micro|macro|expression|event)", re.I)
_NTH = re.compile(
    r"\b(?:(\d+)(?:st|nd|rd|th|-th)?|(" + "|".join(ORDINALS) + r"))\b\s*(?:one|event|expression)?", re.I
)


def long_video_answer(backend: Backend, ctx: ClipContext, text: str, gen: GenConfig) -> str | None:
    """Questions about a long video's events, answered through the spotter and the per-event VLM call
    with every step shown: "how many micro-expressions are there?" (the spotted events, counted) and
    "what happened in the second one?" (the hierarchical chain on the 2nd event). None: another question."""
    if _COUNT.search(text):
        events = ctx.events()
        micro = sum(e.type == "micro" for e in events)
        spans = "\n".join(
            f"- event {i}: {e.type}, frames {e.onset}–{e.offset} (apex {e.apex})"
            for i, e in enumerate(events, start=1)
        )
        macro = len(events) - micro
        head = f"{len(events)} expression events: {micro} micro-expressions, {macro} macro-expressions"
        return f"**spot**: {head}\n{spans}"
    m = re.search(r"\bwhat\b.*\b(?:in|during|at)\b.*?" + _NTH.pattern, text, re.I)
    if not m:
        return None
    n = int(m.group(1)) if m.group(1) else ORDINALS[m.group(2).lower()]
    n = len(ctx.events()) if n == -1 else n
    event = ctx.event(n)
    r = hierarchical(backend, event, gen)
    where = f"event {n} is frames {event.onset}–{event.offset} (apex {event.apex})"
    return f"**spot**: {where}\n\n{agent_markdown(r)}"


def tool_llm(cfg: AskConfig, backend: Backend) -> Callable[[], Any] | None:
    """What builds the chat model that drives the tool agent (`/tools` in chat, the app's tool switch): the
    served model itself, which must call tools; None for a model in this process (tiny local models cannot
    drive free tool-calling). Built on first use: LangChain is the `app` extra, and chat runs without it."""
    if cfg.model.backend != "openai":
        return None

    def build() -> Any:
        from mevqa.agent.lc import server_chat_model

        api_key = cfg.server.key
        return server_chat_model(cfg.server.base_url[0], backend.model, api_key, cfg.gen.max_new_tokens)

    return build


@dataclass(frozen=True)
class ChatCommand:
    """One chat command: what `/help` says about it, and the `ChatSession` method that answers it."""

    names: tuple[str, ...]
    arg: str
    help: str
    answer: Callable[
        [ChatSession, str], str | None
    ]  # (session, the text after the name) -> reply; None: quit


class ChatSession:
    """Multi-turn chat about one clip: the frames go with the first question, the history is kept.

    `tool_llm` builds the LangChain chat model that drives `/tools` (a served model that calls tools);
    None when the backend cannot. The commands are `CHAT_COMMANDS`.
    """

    def __init__(
        self,
        backend: Backend,
        ctx: ClipContext,
        gen: GenConfig | None = None,
        tool_llm: Callable[[], Any] | None = None,
        prompt: str = "plain",
        max_question_chars: int = MAX_QUESTION_CHARS,
        seed: int = 0,
    ):
        self.backend, self.ctx, self.gen, self.tool_llm = backend, ctx, gen or GenConfig(), tool_llm
        self.prompt = prompt  # the prompt strategy an adapter was trained with (its mevqa.yaml)
        self.history: list[Message] = []
        self.max_question_chars, self.seed = max_question_chars, seed

    def request(self, text: str) -> VQARequest:
        if not self.history:  # the first turn carries the frames, phrased as eval would phrase it
            parts = self.ctx.parts()
            text = prompted(self.backend, parts, text, self.prompt, self.gen, self.seed)
            return VQARequest("turn0", (Message.user(*parts, text),), seed=self.seed)
        turn = Message.user(text)
        return VQARequest(f"turn{len(self.history) // 2}", (*self.history, turn), seed=self.seed)

    def send(self, text: str) -> Answer:
        """Ask `text`; the turn joins the history only when it was answered."""
        req = self.request(text)
        (ans,) = self.backend.generate([req], self.gen)
        if ans.ok:
            self.history = [*req.messages, Message.assistant(ans.text)]
        return ans

    def command(self, line: str) -> str | None:
        """One input line -> what to print (None: quit). Commands start with '/'; the rest is a question."""
        name, _, arg = line.partition(" ")
        if name.startswith("/"):
            cmd = next((c for c in CHAT_COMMANDS if name in c.names), None)
            if cmd is None:
                known = ", ".join(n for c in CHAT_COMMANDS for n in c.names)
                return f"unknown command {name!r} — {known}"
            return cmd.answer(self, arg.strip())
        check_question(line, self.max_question_chars)
        events = long_video_answer(self.backend, self.ctx, line, self.gen)
        if events is not None:
            return f"mevqa> {events}"
        ans = self.send(line)
        return f"mevqa> {ans.text}" if ans.ok else f"error: the model failed: {ans.error}"

    def _agent(self, _: str) -> str:
        return json.dumps(hierarchical(self.backend, self.ctx, self.gen), indent=2)

    def _tools(self, question: str) -> str:
        question = check_question(question or Q_COARSE, self.max_question_chars)
        if self.tool_llm is None:
            return "/tools needs a served model that calls tools (--backend openai, vLLM with tool calling)"
        from mevqa.agent.lc import tool_agent

        result = tool_agent(self.tool_llm(), self.ctx, self.backend, self.gen, question)
        calls = "".join(f"\n  [{c['tool']}] {c['args']} -> {c['result'][:120]}" for c in result["calls"])
        return f"mevqa> {result['answer']}{calls}"

    def _flow(self, _: str) -> str:
        return json.dumps(self.ctx.flow()[1])

    def _reset(self, _: str) -> str:
        self.history = []
        return "(history cleared)"

    def _help(self, _: str) -> str:
        return chat_help()

    def _quit(self, _: str) -> None:
        return None

    def repl(self, read: Callable[[str], str], write: Callable[[str], None]) -> None:
        """The terminal loop: read lines until /quit or end of input; a failure is one line, not an exit."""
        while True:
            try:
                line = read("you> ").strip()
            except EOFError:
                write("")
                return
            if not line:
                continue
            try:
                out = self.command(line)
            except MevqaError as e:
                out = f"error: {e}"
            if out is None:
                return
            write(out)


# The chat's commands, in the order `/help` lists them: `ChatSession.command` answers from this table
CHAT_COMMANDS = (
    ChatCommand(("/agent",), "", "coarse -> fine -> AUs, with a consistency check", ChatSession._agent),
    ChatCommand(
        ("/tools",),
        "QUESTION",
        "the model calls mevqa's tools (served models with tool calling)",
        ChatSession._tools,
    ),
    ChatCommand(("/flow",), "", "per-region motion from onset to apex, in pixels", ChatSession._flow),
    ChatCommand(
        ("/reset",), "", "forget the conversation (the next question carries the frames)", ChatSession._reset
    ),
    ChatCommand(("/help",), "", "this list", ChatSession._help),
    ChatCommand(("/quit", "/exit"), "", "leave (so does the end of input)", ChatSession._quit),
)


def chat_help() -> str:
    """The commands, one a line (what `/help` answers and `mevqa chat` shows when it starts)."""
    usage = [(", ".join(c.names) + (f" {c.arg}" if c.arg else ""), c.help) for c in CHAT_COMMANDS]
    width = max(len(u) for u, _ in usage)
    return "commands:\n" + "\n".join(f"  {u:<{width}}  {h}" for u, h in usage)
