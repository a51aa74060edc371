"""What the model sees: decoded clip frames turned into message parts for one input mode."""

from __future__ import annotations

from mevqa.config import FrameConfig
from mevqa.prompts import Message, Part, VideoPart
from mevqa.video import ClipFrames


def visual_parts(clip: ClipFrames, cfg: FrameConfig) -> list[Part]:
    """The image/video parts for `cfg.input`: `frames` -> N images, `video` -> one video part."""
    images = clip.images()
    if cfg.input == "video":
        # The camera's fps (200 for CASME II / SAMM) is deliberately not passed: see FrameConfig.video_fps.
        return [VideoPart(tuple(images), fps=cfg.video_fps)]
    return list(images)


def question_message(clip: ClipFrames, question: str, cfg: FrameConfig) -> Message:
    """A user turn with the clip's visual parts first, then the question (the order Qwen was tuned on)."""
    return Message.user(*visual_parts(clip, cfg), question)
