"""What the model sees: a clip turned into message parts for one input mode.

- `frames`: N sampled images; `video`: the same frames as one video part;
- `oao`: onset, apex and offset images;
- `flow`: optical flow onset -> apex (Farneback), colour-coded and blended on the grey onset frame
  (with `FrameConfig.flow_with_oao`, preceded by the onset/apex/offset images);
- `diff`: |apex - onset|, amplified.
The MEGC 2025 paper found OAO and flow inputs beat raw video for Qwen2.5-VL.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

from mevqa.config import FrameConfig
from mevqa.data.megc import clip_key, resolve_clip
from mevqa.errors import MissingDependency
from mevqa.facs import REGION_ROWS
from mevqa.prompts import Message, Part, VideoPart
from mevqa.video import ClipFrames, sample, shrink

KEYFRAME_MODES = ("oao", "flow", "diff")


def flow_field(onset: np.ndarray, apex: np.ndarray, method: str = "farneback") -> np.ndarray:
    """Dense optical flow (H x W x 2, pixels) from the onset to the apex frame.

    `farneback` (OpenCV core) or `tvl1` (OpenCV contrib's Dual TV-L1, what ME papers and the MEGC 2025
    third-placed team use: sharper motion edges, slower).
    """
    import cv2  # only the flow key-frame modes need OpenCV

    a = cv2.cvtColor(onset, cv2.COLOR_RGB2GRAY)
    b = cv2.cvtColor(apex, cv2.COLOR_RGB2GRAY)
    if method == "tvl1":
        if not hasattr(cv2, "optflow"):
            raise MissingDependency(
                "frames.flow_method tvl1 — needs OpenCV's contrib modules (opencv-contrib-python-headless)"
            )
        return cv2.optflow.DualTVL1OpticalFlow_create().calc(a, b, None)
    return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)


def onset_flow(
    onset: np.ndarray, apex: np.ndarray, method: str = "farneback"
) -> tuple[np.ndarray, np.ndarray]:
    """(the onset frame flow is drawn on, the flow onset -> apex), both at most `video.ANALYSIS_MAX_SIDE` a
    side: larger frames are shrunk first."""
    small_onset = shrink(onset)
    return small_onset, flow_field(small_onset, shrink(apex), method)


def flow_image(onset: np.ndarray, flow: np.ndarray, max_mag: float | None = None) -> np.ndarray:
    """Flow as colour (hue = direction, brightness = magnitude) blended over the grey onset frame."""
    import cv2

    mag, ang = cv2.cartToPolar(flow[..., 0], flow[..., 1])
    scale = max_mag or max(float(np.percentile(mag, 99.5)), 1e-3)
    hsv = np.zeros((*mag.shape, 3), np.uint8)
    hsv[..., 0] = (ang * 90 / np.pi).astype(np.uint8)
    hsv[..., 1] = 255
    hsv[..., 2] = np.clip(mag / scale * 255, 0, 255).astype(np.uint8)
    colour = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float32)
    grey = cv2.cvtColor(cv2.cvtColor(onset, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB).astype(np.float32)
    alpha = np.clip(mag / scale, 0, 1)[..., None]  # motion shows, still skin stays grey
    return (grey * (1 - alpha) + colour * alpha).astype(np.uint8)


def diff_image(onset: np.ndarray, apex: np.ndarray, gain: float = 4.0) -> np.ndarray:
    """|apex - onset| amplified: a micro-movement is a few grey levels."""
    d = np.abs(apex.astype(np.int16) - onset.astype(np.int16)).astype(np.float32) * gain
    return np.clip(d, 0, 255).astype(np.uint8)


def keyframe_images(clip: ClipFrames, cfg: FrameConfig) -> list[np.ndarray]:
    """Images for a keyframe mode from a clip sampled as [onset, apex, offset]."""
    onset, apex, offset = clip.frames
    if cfg.input == "oao":
        return [onset, apex, offset]
    if cfg.input == "diff":
        return [diff_image(onset, apex)]
    flow = flow_image(*onset_flow(onset, apex, cfg.flow_method))
    return [onset, apex, offset, flow] if cfg.flow_with_oao else [flow]


def load_clip(
    path: str | Path,
    cfg: FrameConfig,
    onset: int | None = None,
    apex: int | None = None,
    offset: int | None = None,
) -> ClipFrames:
    """Decode what `cfg.input` needs: keyframes for oao/flow/diff, else `cfg.sampling`; with `--face crop`
    the frames are the aligned face (one alignment for the clip, so the movement itself is kept)."""
    if cfg.input in KEYFRAME_MODES:
        cfg = dataclasses.replace(cfg, sampling="keyframes")
    clip = sample(path, cfg, onset, apex, offset)
    if cfg.face.mode == "crop":
        from mevqa.face import crop_clip

        clip.frames = crop_clip(clip.frames, cfg.face)
    return clip


def visual_parts(clip: ClipFrames, cfg: FrameConfig) -> list[Part]:
    """The image/video parts for `cfg.input`, in the order the model is shown them."""
    if cfg.input in KEYFRAME_MODES:
        return [Image.fromarray(im) for im in keyframe_images(clip, cfg)]
    images = clip.images()
    if cfg.input == "video":
        # The camera's fps (200 for CASME II / SAMM) is deliberately not passed: see FrameConfig.video_fps.
        return [VideoPart(tuple(images), fps=cfg.video_fps)]
    return list(images)


class ClipParts:
    """A row's clip as model input, decoded once and kept in a small LRU cache by clip.

    Eval and training both go through this: a clip's questions share its decoded frames (and flow).
    (That they share their visual prefix is said by the requests' `prefix_key`, the clip's key, which
    the eval runner sets.)
    """

    def __init__(
        self, root: str | Path | None, frames: FrameConfig, pattern: str | None = None, cache: int = 64
    ):
        self.root, self.frames, self.pattern, self.cache = root or ".", frames, pattern, cache
        self._parts: OrderedDict[str, list[Part]] = OrderedDict()

    def __call__(self, row: dict) -> list[Part]:
        key = clip_key(row)
        if key in self._parts:
            self._parts.move_to_end(key)
            return self._parts[key]
        path = resolve_clip(row, self.root, self.pattern)
        keys = (row.get("onset_frame"), row.get("apex_frame"), row.get("offset_frame"))
        parts = visual_parts(load_clip(path, self.frames, *keys), self.frames)
        self._parts[key] = parts
        while len(self._parts) > self.cache:  # cache=0: decode every time (the no-reuse baseline)
            self._parts.popitem(last=False)
        return parts


def question_message(clip: ClipFrames, question: str, cfg: FrameConfig) -> Message:
    """A user turn with the clip's visual parts first, then the question (the order Qwen was tuned on)."""
    return Message.user(*visual_parts(clip, cfg), question)


def region_motion(
    flow: np.ndarray, regions: dict[str, tuple[float, float]] | None = None
) -> dict[str, float]:
    """Flow magnitude (pixels, 99th percentile) per facial band and per image half, for a centred face.

    A high percentile rather than the mean: an AU moves a small patch (a mouth corner), while head
    jitter moves everything a little, and a mean over the band would let the jitter win.

    Bands are rows of the frame (fractions of its height); `left`/`right` are the *subject's* sides
    (the image's right/left half), the convention L/R action units use.
    """
    mag = np.linalg.norm(flow, axis=2)
    h, w = mag.shape
    out = {name: _p99(mag[int(y0 * h) : int(y1 * h)]) for name, (y0, y1) in (regions or REGION_ROWS).items()}
    out["left"] = _p99(mag[:, w // 2 :])
    out["right"] = _p99(mag[:, : w // 2])
    return out


def _p99(a: np.ndarray) -> float:
    return float(np.percentile(a, 99)) if a.size else 0.0
