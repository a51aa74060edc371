"""The reasoning layer behind `mevqa chat` and the app: LangChain tools and the hierarchical QA chain.

The VLM is a LangChain chat model — `ChatOpenAI` pointed at a vLLM / OpenAI-compatible server, or
`MevqaChatModel` over the in-process backend — and both receive the same OpenAI-style messages (images
as data URLs), rendered from mevqa's `Message`. Tiny local models cannot drive free tool-calling, so the
hierarchical chain's steps are explicit code (coarse -> fine within that coarse class -> AUs -> a
consistency check); `tools()` is what a real model served with vLLM's tool parser can call freely.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from mevqa.backends.base import Backend, VQARequest
from mevqa.config import FrameConfig, GenConfig
from mevqa.errors import MissingDependency
from mevqa.prompts import (
    AU_NAMES,
    COARSE_LABELS,
    FINE_TO_COARSE,
    Q_AU_MANY,
    Q_COARSE,
    Q_FINE,
    Message,
    label_hint,
    to_openai,
)

# What each AU looks like (FACS), for the au_reference tool and the consistency check.
AU_LOOKS = {
    1: "inner ends of the brows rise",
    2: "outer ends of the brows rise",
    4: "brows lower and draw together",
    5: "upper eyelid rises, eyes widen",
    6: "cheeks rise, crow's feet",
    7: "eyelids tighten",
    9: "nose wrinkles",
    10: "upper lip rises",
    12: "lip corners pull up and out",
    14: "dimples form at the lip corners",
    15: "lip corners pull down",
    16: "lower lip pulls down",
    17: "chin boss pushes up",
    20: "lips stretch sideways",
    23: "lips tighten and narrow",
    24: "lips press together",
    25: "lips part",
    26: "jaw drops",
}
EMOTION_AUS = {  # EMFACS-style cues (SynthME follows these rules)
    "happiness": {6, 12},
    "surprise": {1, 2, 5, 26},
    "disgust": {9, 10},
    "anger": {4, 7, 23},
    "sadness": {1, 4, 15},
    "fear": {1, 2, 4, 20},
    "contempt": {12, 14},
    "repression": {14, 15, 17, 24},
}


def _langchain() -> Any:
    try:
        import langchain_core  # noqa: F401
    except ImportError:
        raise MissingDependency("the agent needs LangChain: pip install 'mevqa[app]'") from None


# ---------------------------------------------------------------- the VLM as a LangChain chat model
def _to_message(m: Any) -> Message:
    """A LangChain message (OpenAI-style content) back to mevqa's Message."""
    role = {"human": "user", "ai": "assistant", "system": "system"}.get(m.type, "user")
    if isinstance(m.content, str):
        return Message(role, (m.content,))
    parts: list = []
    for block in m.content:
        if block.get("type") == "text":
            parts.append(block["text"])
        elif block.get("type") == "image_url":
            data = block["image_url"]["url"].split(",", 1)[1]
            parts.append(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
    return Message(role, tuple(parts))


def chat_model(backend: Backend, gen: GenConfig | None = None) -> Any:
    """A LangChain BaseChatModel over any mevqa backend (in-process transformers, vLLM, ...)."""
    _langchain()
    from langchain_core.language_models.chat_models import BaseChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, ChatResult

    class MevqaChatModel(BaseChatModel):
        backend: Any
        gen: Any

        @property
        def _llm_type(self) -> str:
            return f"mevqa-{getattr(self.backend, 'name', 'backend')}"

        def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
            (ans,) = self.backend.generate(
                [VQARequest("chat", tuple(_to_message(m) for m in messages))], self.gen
            )
            if ans.error:
                raise RuntimeError(ans.error)
            return ChatResult(generations=[ChatGeneration(message=AIMessage(content=ans.text))])

    return MevqaChatModel(backend=backend, gen=gen or GenConfig(max_new_tokens=48, batch_size=1))


def server_chat_model(base_url: str, model: str, api_key: str | None = None) -> Any:
    """`ChatOpenAI` pointed at a vLLM / OpenAI-compatible server (model = base or adapter name)."""
    try:
        from langchain_openai import ChatOpenAI
    except ImportError:
        raise MissingDependency(
            "--base-url with the agent needs langchain-openai: pip install langchain-openai"
        ) from None
    return ChatOpenAI(
        base_url=base_url, model=model, api_key=api_key or "EMPTY", temperature=0, max_tokens=64
    )


# ---------------------------------------------------------------- a clip, its frames and flow
@dataclass
class ClipContext:
    """What the agent knows about one clip: its path and key frames (onset/apex/offset if annotated)."""

    path: str
    frames: FrameConfig = field(default_factory=FrameConfig)
    onset: int | None = None
    apex: int | None = None
    offset: int | None = None

    def parts(self, cfg: FrameConfig | None = None) -> list:
        """The message parts for the input mode (images, or one video part)."""
        from mevqa.inputs import load_clip, visual_parts

        cfg = cfg or self.frames
        return visual_parts(load_clip(self.path, cfg, self.onset, self.apex, self.offset), cfg)

    def images(self, cfg: FrameConfig | None = None) -> list[Image.Image]:
        parts = self.parts(cfg)
        return [p for p in parts if isinstance(p, Image.Image)] or list(parts[0].frames)

    def flow(self) -> tuple[Image.Image, dict[str, float]]:
        """The onset -> apex flow image and per-region motion (pixels, 99th percentile)."""
        from mevqa.inputs import flow_field, flow_image, load_clip, region_motion

        clip = load_clip(self.path, FrameConfig(input="flow"), self.onset, self.apex, self.offset)
        onset, apex, _ = clip.frames
        f = flow_field(onset, apex)
        return Image.fromarray(flow_image(onset, f)), {k: round(v, 3) for k, v in region_motion(f).items()}


def ask(llm: Any, images: list[Image.Image], text: str) -> str:
    """One question to the VLM (a LangChain chat model) about these images."""
    from langchain_core.messages import HumanMessage

    (msg,) = to_openai([Message.user(*images, text)])
    return str(llm.invoke([HumanMessage(content=msg["content"])]).content).strip()


def au_reference(query: str = "") -> str:
    """FACS names, what each AU looks like, and the emotion rules (filtered by `query` if given)."""
    lines = [f"AU{n} {AU_NAMES[n]}: {AU_LOOKS[n]}" for n in AU_LOOKS]
    lines += [
        f"{e} ({FINE_TO_COARSE[e]}): AUs {', '.join(str(a) for a in sorted(aus))}"
        for e, aus in EMOTION_AUS.items()
    ]
    q = query.lower().strip()
    return "\n".join(ln for ln in lines if not q or q in ln.lower()) or f"nothing about {query!r}"


def tools(ctx: ClipContext, llm: Any) -> list[Any]:
    """LangChain tools bound to one clip and one VLM."""
    _langchain()
    from langchain_core.tools import tool

    @tool(response_format="content_and_artifact")
    def sample_frames(strategy: str = "uniform", count: int = 8) -> tuple[str, list[Image.Image]]:
        """Sample frames from the clip: strategy uniform | keyframes | all, and how many."""
        imgs = ctx.images(FrameConfig(frames=count, sampling=strategy))
        return f"{len(imgs)} frames ({strategy})", imgs

    @tool(response_format="content_and_artifact")
    def optical_flow() -> tuple[str, Image.Image]:
        """Optical flow from onset to apex: per-region motion in pixels (brows, eyes, nose, mouth, chin,
        and the subject's left vs right half), plus the colour-coded flow image."""
        image, motion = ctx.flow()
        return json.dumps(motion), image

    @tool("au_reference")
    def au_reference_tool(query: str = "") -> str:
        """FACS action-unit names, what each looks like, and which AUs signal which emotion."""
        return au_reference(query)

    @tool
    def ask_vlm(question: str) -> str:
        """Ask the vision-language model a question about the clip's frames."""
        return ask(llm, ctx.images(), question)

    return [sample_frames, optical_flow, au_reference_tool, ask_vlm]


# ---------------------------------------------------------------- the hierarchical chain
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
            flags.append(
                f"none of the AUs ({', '.join(sorted(aus))}) is a cue of '{fine}' "
                f"({', '.join(sorted(expected))})"
            )
    return flags


def hierarchical(llm: Any, ctx: ClipContext) -> dict[str, Any]:
    """coarse -> fine (within that coarse class) -> AUs, then the consistency check; with every step."""
    from mevqa.evaluation.parse import parse_aus, parse_label

    images, steps = ctx.images(), []

    def step(name: str, question: str) -> str:
        answer = ask(llm, images, question)
        steps.append({"step": name, "question": question, "answer": answer})
        return answer

    coarse = parse_label(step("coarse", f"{Q_COARSE} {label_hint('coarse')}"), "coarse")
    fine = parse_label(step("fine", f"{Q_FINE} {label_hint('fine', coarse)}"), "fine")
    aus = parse_aus(step("aus", f"{Q_AU_MANY} {label_hint('au_list')}"))
    flags = consistency_flags(coarse, fine, aus)
    return {
        "coarse": coarse,
        "fine": fine,
        "aus": sorted(aus),
        "consistent": not flags,
        "flags": flags,
        "steps": steps,
    }


class ChatSession:
    """Multi-turn chat about one clip: the frames go with the first question, the history is kept."""

    def __init__(self, backend: Backend, ctx: ClipContext, gen: GenConfig | None = None):
        self.backend, self.ctx = backend, ctx
        self.gen = gen or GenConfig(max_new_tokens=64, batch_size=1)
        self.images = ctx.images()
        self.history: list[Message] = []

    def request(self, text: str) -> VQARequest:
        turn = Message.user(*self.images, text) if not self.history else Message.user(text)
        return VQARequest(f"turn{len(self.history) // 2}", (*self.history, turn))

    def send(self, text: str) -> str:
        req = self.request(text)
        (ans,) = self.backend.generate([req], self.gen)
        if ans.error:
            return f"(error: {ans.error})"
        self.history = [*req.messages, Message.assistant(ans.text)]
        return ans.text
