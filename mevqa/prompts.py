"""What the model is asked: one `Message` type rendered for HF processors and OpenAI servers,
the MEGC question templates and the prompt strategies (the labels themselves live in `facs.py`).

Every backend consumes the same `Message`, so a prompt cannot drift between transformers and vLLM.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

from mevqa.errors import InputError
from mevqa.facs import AU_NAMES, COARSE_LABELS, FINE_LABELS, FINE_TO_COARSE, LABEL_SETS

# The seven MEGC question templates, verbatim (3, 6 and 7 have singular and plural forms).
Q_COARSE = "What is the coarse expression class?"
Q_FINE = "What is the fine-grained expression class?"
Q_AU_ONE = "What is the action unit?"
Q_AU_MANY = "What are the action units?"
Q_PRESENCE = "Is the action unit {name} shown on the face?"
Q_SIDE = "Is the action unit {name} located on the left or right face?"
Q_COMBINED_ONE = (
    "What is the action unit present, and based on it, what is the fine-grained expression and the "
    "coarse expression class?"
)
Q_COMBINED_MANY = (
    "What are the action units present, and based on them, what is the fine-grained expression and the "
    "coarse expression class?"
)
# MEGC 2026 ME-VQA-v2: question 5 (the combined question) became a free-text analysis request, asked in
# one of these three phrasings, verbatim from the v2 test files.
Q_ANALYSIS = (
    "Please analyse the micro-expression shown in this video in detail.",
    "Provide a detailed analysis of the micro-expression observed in this clip.",
    "Provide a comprehensive analysis of the facial micro-expression shown in this clip.",
)
QUESTION_TYPES = ("coarse", "fine", "au_list", "au_presence", "au_side", "combined", "analysis")

# The six ME-LVQA (MEGC 2026 long-video) questions, verbatim; 5 and 6 are the type template with the
# event's number in time order, always spelled `n-th` (`1-th`, `23-th`). Kept apart from QUESTION_TYPES:
# those are the short-clip types the prompt strategies and their fingerprint cover.
Q_LVQA_COUNT_ALL = "How many expression events appear in this video?"
Q_LVQA_COUNT_MICRO = "How many micro-expression events appear in this video?"
Q_LVQA_COUNT_MACRO = "How many macro-expression events appear in this video?"
Q_LVQA_AUS = "What distinct action units appear in this video?"
Q_LVQA_TYPE = "What is the expression type of the {n}-th expression event in this video?"
LVQA_QUESTION_TYPES = ("lvqa_count_all", "lvqa_count_micro", "lvqa_count_macro", "lvqa_aus", "lvqa_type")

TEMPLATE_EXAMPLES = (
    Q_COARSE,
    Q_FINE,
    Q_AU_ONE,
    Q_AU_MANY,
    Q_PRESENCE.format(name="lip corner puller"),
    Q_SIDE.format(name="brow lowerer"),
    Q_COMBINED_ONE,
    Q_COMBINED_MANY,
)

_FIXED = {
    Q_COARSE: "coarse",
    Q_FINE: "fine",
    Q_AU_ONE: "au_list",
    Q_AU_MANY: "au_list",
    Q_COMBINED_ONE: "combined",
    Q_COMBINED_MANY: "combined",
    **dict.fromkeys(Q_ANALYSIS, "analysis"),
    Q_LVQA_COUNT_ALL: "lvqa_count_all",
    Q_LVQA_COUNT_MICRO: "lvqa_count_micro",
    Q_LVQA_COUNT_MACRO: "lvqa_count_macro",
    Q_LVQA_AUS: "lvqa_aus",
}
_AU_QUESTION = re.compile(
    r"is the action unit (?P<name>.+?) "
    r"(?:(?P<p>shown on the face)|(?P<s>located on the left or right face))\?"
)
# the files write `1-th`; `1st`, `2nd`, `1th` are accepted too, so a rephrased ordinal still classifies
_LVQA_TYPE_QUESTION = re.compile(
    r"what is the expression type of the (?P<n>\d+) ?(?:-th|th|st|nd|rd) expression event in this video\?"
)


def combined_answer(au_names: list[str], fine: str, coarse: str) -> str:
    """The answer of templates 6/7, as the MEGC files write it (singular for one AU)."""
    head = "The action unit present is" if len(au_names) == 1 else "The action units present are"
    return (
        f"{head}: {', '.join(au_names)}. Therefore, the fine-grained expression class is {fine}, "
        f"and the coarse expression class is {coarse}."
    )


def analysis_answer(au_names: list[str], fine: str, coarse: str) -> str:
    """A v2 analysis answer in mevqa's own wording: the official v2 training answers are long analyses whose
    wording is not public, so this short paragraph names only what the labels know (the AUs, the fine
    and the coarse class), in the combined answer's sentences so the label parser reads it too."""
    one = len(au_names) == 1
    head = "The action unit present is" if one else "The action units present are"
    return (
        f"The face shows a brief, subtle movement: a micro-expression. {head}: {', '.join(au_names)}. "
        f"Based on {'it' if one else 'them'}, the fine-grained expression class is {fine}, and the coarse "
        f"expression class is {coarse}."
    )


def _norm(question: str) -> str:
    return " ".join(question.strip().lower().split())


_FIXED_NORM = {_norm(k): v for k, v in _FIXED.items()}


def classify(question: str) -> tuple[str, str | None]:
    """(question type, AU name for templates 4-5 or the event number of "lvqa_type").

    Unknown questions are type "free" (chat).
    """
    q = _norm(question)
    if q in _FIXED_NORM:
        return _FIXED_NORM[q], None
    m = _AU_QUESTION.fullmatch(q)
    if m:
        return ("au_presence" if m.group("p") else "au_side"), m.group("name")
    m = _LVQA_TYPE_QUESTION.fullmatch(q)
    if m:
        return "lvqa_type", str(int(m.group("n")))
    return "free", None


@dataclass(frozen=True)
class VideoPart:
    """Frames shown to the model as one video, with the frame rate the model should assume.

    `fps` is what the processor turns into temporal position ids, not the camera's rate: Qwen2.5-VL
    spaces time ids by `tokens_per_second * temporal_patch / fps`, so the 200 fps of ME cameras would
    collapse every frame onto one time id. The input builder sets it (see `inputs.py`).
    """

    frames: tuple[Image.Image, ...]
    fps: float


Part = str | Image.Image | VideoPart


@dataclass(frozen=True)
class Message:
    """One chat turn: a role and an ordered list of text, image and video parts."""

    role: Literal["system", "user", "assistant"]
    parts: tuple[Part, ...] = field(default_factory=tuple)

    @classmethod
    def user(cls, *parts: Part) -> Message:
        return cls("user", tuple(parts))

    @classmethod
    def assistant(cls, text: str) -> Message:
        return cls("assistant", (text,))

    def text(self) -> str:
        return "".join(p for p in self.parts if isinstance(p, str))


def to_hf(messages: list[Message]) -> tuple[list[dict], list[Image.Image], list[VideoPart]]:
    """Render for `processor.apply_chat_template`; returns (chat, images, videos) in prompt order."""
    chat, images, videos = [], [], []
    for m in messages:
        content = []
        for p in m.parts:
            if isinstance(p, str):
                content.append({"type": "text", "text": p})
            elif isinstance(p, VideoPart):
                content.append({"type": "video"})
                videos.append(p)
            else:
                content.append({"type": "image"})
                images.append(p)
        chat.append({"role": m.role, "content": content})
    return chat, images, videos


def video_kwargs(videos: list[VideoPart]) -> dict[str, Any]:
    """Frames plus metadata saying they were sampled at `fps` (the frames are already selected)."""
    if not videos:
        return {}
    from transformers.video_utils import VideoMetadata  # transformers is heavy; only HF paths need it

    meta = [
        VideoMetadata(total_num_frames=len(v.frames), fps=v.fps, frames_indices=list(range(len(v.frames))))
        for v in videos
    ]
    return {"videos": [list(v.frames) for v in videos], "video_metadata": meta, "do_sample_frames": False}


def image_data_url(image: Image.Image, fmt: str = "png", quality: int = 95) -> str:
    """A base64 data URL; PNG by default because a micro-movement is as small as JPEG artefacts."""
    buf = io.BytesIO()
    fmt = fmt.lower()
    if fmt in ("jpg", "jpeg"):
        image.convert("RGB").save(buf, format="JPEG", quality=quality)
        mime = "jpeg"
    else:
        image.save(buf, format="PNG")
        mime = "png"
    return f"data:image/{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def video_data_url(video: VideoPart) -> str:
    """The frames as an mp4 (mp4v, at the part's model-facing fps) in a base64 data URL."""
    import numpy as np

    from mevqa.io import write_mp4

    frames = (np.ascontiguousarray(np.asarray(f.convert("RGB"))[..., ::-1]) for f in video.frames)
    fd, path = tempfile.mkstemp(suffix=".mp4")
    os.close(fd)
    try:
        write_mp4(path, frames, video.fps)
        with open(path, "rb") as fh:
            data = fh.read()
    finally:
        os.unlink(path)
    return f"data:video/mp4;base64,{base64.b64encode(data).decode('ascii')}"


def to_openai(messages: list[Message], image_format: str = "png", video_as: str = "frames") -> list[dict]:
    """Render as OpenAI chat messages. A video goes as its frames (`image_url` parts, what every server
    accepts) or, with `video_as="video_url"`, as one mp4 `video_url` part (vLLM's video input)."""
    out = []
    for m in messages:
        content: list[dict] = []
        for p in m.parts:
            if isinstance(p, str):
                content.append({"type": "text", "text": p})
            elif isinstance(p, VideoPart) and video_as == "video_url":
                content.append({"type": "video_url", "video_url": {"url": video_data_url(p)}})
            else:
                for frame in p.frames if isinstance(p, VideoPart) else (p,):
                    content.append(
                        {"type": "image_url", "image_url": {"url": image_data_url(frame, image_format)}}
                    )
        out.append({"role": m.role, "content": content})
    return out


# ---------------------------------------------------------------- prompt strategies
_AU_HINT = "Answer with the action unit names, comma-separated, from: " + ", ".join(AU_NAMES.values()) + "."
_COMBINED_HINT = (
    "Answer in the form: The action units present are: <names>. Therefore, the fine-grained expression class "
    "is <fine>, and the coarse expression class is <coarse>."
)
# v2 analysis: free text whose official wording is unknown, so no fixed form; asking for the AUs and both
# classes keeps a zero-shot paragraph on what the labels know
_ANALYSIS_HINT = (
    "In your analysis, name the action units present, the fine-grained expression class and the coarse "
    "expression class."
)


def label_hint(qtype: str, coarse: str | None = None) -> str:
    """The "Answer with one of: ..." sentence for a question type; `coarse` narrows the fine labels."""
    if qtype == "fine" and coarse in COARSE_LABELS:
        fine = [f for f in FINE_LABELS if FINE_TO_COARSE[f] == coarse]
        return f"The coarse expression class is {coarse}. Answer with one of: {', '.join(fine)}."
    if qtype in LABEL_SETS:
        return f"Answer with one of: {', '.join(LABEL_SETS[qtype])}."
    if qtype == "au_list":
        return _AU_HINT
    if qtype in ("combined", "analysis"):
        hint = f" The coarse expression class is {coarse}." if coarse in COARSE_LABELS else ""
        return (_COMBINED_HINT if qtype == "combined" else _ANALYSIS_HINT) + hint
    return ""


def hierarchical_question(question: str, coarse: str | None = None) -> str:
    """The hierarchical strategy's text for `question`, the one home of that strategy.

    Stage 1 asks the clip's coarse class (`coarse` None: the coarse label set is appended); every later
    question of the clip is told that class where it matters (fine: the fine labels within it; combined
    and analysis: the class as a given). `coarse` is the model's stage-1 answer in eval, ask, chat and
    the agent chain, and the clip's gold coarse label in training (teacher forcing), so a question is
    trained with the same text it is asked with.
    """
    qtype, _ = classify(question)
    return f"{question} {label_hint(qtype, coarse)}".strip()


def render_question(question: str, strategy: str, coarse: str | None = None) -> str:
    """The text sent for `question` under a prompt strategy (`coarse`: the hierarchical stage-1 answer)."""
    if strategy == "plain":
        return question
    if strategy == "hierarchical":
        return hierarchical_question(question, coarse)
    qtype, _ = classify(question)
    return f"{question} {label_hint(qtype)}".strip()


def visible(text: str) -> str:
    """`text` without whitespace and invisible format characters (a zero-width space, a BOM): what a
    reader would see of it."""
    import unicodedata

    return "".join(c for c in text if not c.isspace() and unicodedata.category(c) != "Cf")


def check_question(question: str, limit: int) -> str:
    """`question`, refused when empty or longer than `limit` characters (before anything reaches a model)."""
    if not visible(question):
        raise InputError("question — empty: ask the model something")
    if len(question) > limit:
        raise InputError(
            f"question — {len(question)} characters; at most {limit} (`max_question_chars` to change it)"
        )
    return question


def prompt_fingerprint(strategy: str) -> str:
    """A hash of every text the strategy can add, so an edited prompt never reuses stale answers."""
    texts = [strategy] + [label_hint(t, c) for t in QUESTION_TYPES for c in (None, *COARSE_LABELS)]
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]
