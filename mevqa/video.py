"""Open a clip (a video file or a folder of frames) and read only the frames a selector picks.

Selectors are pure functions of the clip length (and key frames), so they can be tested and reused
without touching a decoder. Reading decodes only the selected frames: decord's `get_batch` for videos,
and only the selected files for folders — a 200 fps clip has hundreds of frames and we need ~8.
"""

from __future__ import annotations

import os
import re
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from mevqa.config import FrameConfig
from mevqa.errors import InputError

VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"}
FRAME_EXTS = {".jpg", ".jpeg", ".png", ".bmp"}
# The most pixels a frame may have: 4096x4096 (16.8 MP), the app's `UploadLimits.max_side` squared. Real ME
# clips are at most ~2k x 1k; a header claiming more is a broken or hostile file, and decoding it first
# (a few bytes of PNG can claim 30000x30000) would run the machine out of memory.
MAX_PIXELS = 4096 * 4096


# ---------------------------------------------------------------- pure index selectors
def uniform(n_total: int, n: int, start: int = 0, stop: int | None = None) -> list[int]:
    """`n` evenly spaced indices over [start, stop] (inclusive), both ends kept, no duplicates."""
    stop = n_total - 1 if stop is None else stop
    if n_total <= 0:
        return []
    if n <= 1:
        return [(start + stop) // 2]
    return sorted({int(round(x)) for x in np.linspace(start, stop, n)})


def keyframes(
    n_total: int, onset: int | None = None, apex: int | None = None, offset: int | None = None
) -> list[int]:
    """Onset, apex and offset (defaults: first frame, middle, last frame), in that order.

    Pass `apex` from `estimate_apex` when the annotation has none. Duplicates are kept so that the
    model always sees three images in the same roles."""
    onset = 0 if onset is None else onset
    offset = n_total - 1 if offset is None else offset
    apex = (onset + offset) // 2 if apex is None else apex
    return [min(max(i, 0), n_total - 1) for i in (onset, apex, offset)]


def all_frames(n_total: int, cap: int) -> list[int]:
    """Every frame, or `cap` uniform ones when the clip is longer."""
    return list(range(n_total)) if n_total <= cap else uniform(n_total, cap)


# Frames are compared (the apex estimate) and flow is computed (inputs.py) at most this many pixels a
# side; larger ones are shrunk first, by area. At 4096x4096 the full-size work held 2 GB (Farneback's
# pyramid ~120 bytes a pixel, the apex search 17 float frames) and took 15 s, while the VLM processors
# shrink every image under ~1000 px a side anyway. Dataset clips (CASME II 640x480, cropped faces,
# SynthME) are below it and unchanged.
ANALYSIS_MAX_SIDE = 1024


def shrink(frame: np.ndarray, max_side: int = ANALYSIS_MAX_SIDE) -> np.ndarray:
    """`frame` at most `max_side` pixels a side (shrunk by area), itself when it is that small."""
    h, w = frame.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return frame
    import cv2

    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


# ---------------------------------------------------------------- clips
def _frame_number(path: Path) -> tuple[int, str]:
    # Real datasets do not zero-pad (img2 before img10; SAMM 006_05562): sort by the last number.
    nums = re.findall(r"\d+", path.stem)
    return (int(nums[-1]) if nums else -1, path.name)


@dataclass
class ClipFrames:
    """Decoded frames (RGB uint8, HxWx3) and where they came from."""

    frames: list[np.ndarray]
    indices: list[int]
    fps: float
    num_frames: int
    size: tuple[int, int]  # source (width, height)
    source: str
    timestamps: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.timestamps:
            self.timestamps = [i / self.fps for i in self.indices]

    def images(self) -> list[Image.Image]:
        return [Image.fromarray(f) for f in self.frames]


class Clip(ABC):
    """A clip opened for random access. Use `open_clip`."""

    MIN_SIDE = 16  # smaller is no face clip (and the processors and the flow need some pixels)

    def __init__(self, path: Path, num_frames: int, fps: float, size: tuple[int, int]):
        if min(size) < self.MIN_SIDE:
            raise InputError(
                f"{path} — frames are {size[0]}x{size[1]} pixels; at least {self.MIN_SIDE} a side"
            )
        _check_pixels(path, size)  # again after the first frame: a header OpenCV could not read
        self.path, self.num_frames, self.fps, self.size = path, num_frames, fps, size

    @abstractmethod
    def read(self, indices: list[int]) -> list[np.ndarray]:
        """Decode the frames at `indices` (in that order) as RGB uint8 arrays."""

    def frames(self, step: int = 1) -> Iterator[tuple[int, np.ndarray]]:
        """(index, frame) for every `step`-th frame, in order, read one at a time (a long video's stream)."""
        for i in range(0, self.num_frames, step):
            yield i, self.read([i])[0]

    def index_of(self, frame: int) -> int:
        """Position of an annotated frame number (a video's frame number is its 0-based index)."""
        if not 0 <= frame < self.num_frames:
            raise InputError(f"{self.path} — frame {frame} outside the clip's {self.num_frames} frames")
        return frame


@contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Hide ffmpeg/decord's C-level log lines: the user gets our one-line error instead."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class VideoClip(Clip):
    def __init__(self, path: Path):
        import decord

        _check_pixels(path, _video_header_size(path))
        try:
            with _quiet_native_stderr():
                self._vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
                n = len(self._vr)
        except Exception as e:  # decord raises its own DECORDError/RuntimeError for any bad container
            raise InputError(
                f"{path} — cannot decode video ({_short(e)}); is it a complete video file?"
            ) from None
        # the first frame (its size, and proof the stream decodes) from OpenCV: a frame decoded by decord
        # sets its decoding thread running ahead (~400 MB of a 640x480 video within 3 s, see `frames`)
        first = _first_frame(path) if n else None
        if not n or first is None:
            raise InputError(f"{path} — video has no frames")
        fps = float(self._vr.get_avg_fps() or 0) or 25.0
        super().__init__(path, n, fps, (first.shape[1], first.shape[0]))

    def frames(self, step: int = 1) -> Iterator[tuple[int, np.ndarray]]:
        """Every `step`-th frame in order, decoded one at a time on demand by OpenCV's FFmpeg reader.

        Not decord here: its decoding thread runs ahead of a slow reader and keeps what it decoded
        (dmlc/decord#157, #208, #304) — 310 MB within the first 100 frames of a 640x480 video while the
        face stage worked, more the longer the video (and `get_batch` over a long video grew 112 MB ->
        1.5 GB). OpenCV decodes only when asked and `grab()` skips a frame without converting it.
        Frame i is decord's frame i (same FFmpeg decode, the frame count from decord's header)."""
        cap = _opencv(self.path)
        try:
            for i in range(self.num_frames):
                if not cap.grab():
                    # the header promised more frames than the file holds
                    raise InputError(f"{self.path} — frame {i} cannot be decoded (the file ends early)")
                if i % step == 0:
                    ok, bgr = cap.retrieve()
                    if not ok:
                        raise InputError(f"{self.path} — frame {i} cannot be decoded")
                    yield i, np.ascontiguousarray(bgr[:, :, ::-1])
        finally:
            cap.release()

    def read(self, indices: list[int]) -> list[np.ndarray]:
        """The frames, decoded one at a time: as fast as one `get_batch`, which held each frame twice
        (its own array and the numpy copy: 1.6 GB for 16 frames of 4096x4096 that keep 0.8 GB)."""
        try:
            with _quiet_native_stderr():
                return [self._vr.get_batch([i]).asnumpy()[0] for i in indices]
        except Exception as e:
            raise InputError(
                f"{self.path} — frames {indices[:3]}... cannot be decoded ({_short(e)}); "
                "the file may be truncated"
            ) from None


def _opencv(path: Path) -> Any:
    import cv2

    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 0)  # decord does not rotate: frame i must be decord's frame i
    return cap


def _first_frame(path: Path) -> np.ndarray | None:
    cap = _opencv(path)
    try:
        with _quiet_native_stderr():
            ok, bgr = cap.read()
        return np.ascontiguousarray(bgr[:, :, ::-1]) if ok else None
    finally:
        cap.release()


class FolderClip(Clip):
    def __init__(self, path: Path, fps: float):
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in FRAME_EXTS), key=_frame_number)
        if not files:
            raise InputError(f"{path} — folder has no frames ({'/'.join(sorted(FRAME_EXTS))})")
        self.files = files
        self._numbers = {_frame_number(p)[0]: i for i, p in enumerate(files)}
        first = _read_image(files[0])
        super().__init__(path, len(files), fps, (first.shape[1], first.shape[0]))

    def index_of(self, frame: int) -> int:
        """Annotation sheets number frames by file name (CASME II onset 46 = img46.jpg)."""
        if frame not in self._numbers:
            lo, hi = min(self._numbers), max(self._numbers)
            raise InputError(f"{self.path} — no frame file numbered {frame} (files run {lo}..{hi})")
        return self._numbers[frame]

    def read(self, indices: list[int]) -> list[np.ndarray]:
        return [_read_image(self.files[i]) for i in indices]


def _check_pixels(path: Path, size: tuple[int, int] | None) -> None:
    """Refuse, from the header's size, a frame too large to decode (before anything is decoded)."""
    if size and size[0] * size[1] > MAX_PIXELS:
        raise InputError(
            f"{path} — frames are {size[0]}x{size[1]} pixels ({size[0] * size[1] / 1e6:.1f} MP); "
            f"mevqa decodes frames of at most {MAX_PIXELS / 1e6:.1f} MP (4096x4096)"
        )


def _video_header_size(path: Path) -> tuple[int, int] | None:
    """Width and height from the container header (OpenCV reads it without decoding frames; decord has no
    such call). None when OpenCV cannot tell: decord then names what is wrong with the file."""
    import cv2

    with _quiet_native_stderr():
        cap = cv2.VideoCapture(str(path))
        try:
            size = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        finally:
            cap.release()
    return size if min(size) > 0 else None


def check_frame_file(path: Path) -> tuple[int, int]:
    """An image's (width, height) from its header, refused as `_read_image` refuses it, nothing decoded:
    the app checks every frame of an uploaded zip before the first one is decoded."""
    with _open_image(path) as im:
        return im.size


def _read_image(path: Path) -> np.ndarray:
    with _open_image(path) as im:
        return np.asarray(im.convert("RGB"))


@contextmanager
def _open_image(path: Path) -> Iterator[Image.Image]:
    if path.exists() and not path.is_file():  # a FIFO named img10.jpg held `ask` until it was killed
        raise InputError(f"{path} — not a regular file (a pipe, a device or a folder named like a frame)")
    try:
        with Image.open(path) as im:  # reads the header only: the size is known before decoding
            _check_pixels(path, im.size)
            yield im
    except Image.DecompressionBombError:  # PIL's own refusal at open, for headers above ~179 MP
        raise InputError(
            f"{path} — image header claims more than {Image.MAX_IMAGE_PIXELS * 2 / 1e6:.0f} MP; "
            f"mevqa decodes frames of at most {MAX_PIXELS / 1e6:.1f} MP (4096x4096)"
        ) from None
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"{path} — unreadable image ({_short(e)})") from None


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:160]


def open_clip(path: str | Path, folder_fps: float = 200.0) -> Clip:
    """Open a video file (decord) or a folder of frames; raise `InputError` naming the path if unusable."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} — no such file or folder")
    if path.is_dir():
        return FolderClip(path, folder_fps)
    if not path.is_file():  # a FIFO or a device named .mp4 would block the decoder forever
        raise InputError(f"{path} — not a regular file")
    if path.suffix.lower() not in VIDEO_EXTS:
        raise InputError(f"{path} — not a video ({', '.join(sorted(VIDEO_EXTS))}) or a folder of frames")
    return VideoClip(path)


def estimate_apex(clip: Clip, onset: int, offset: int, probes: int = 16) -> int:
    """The frame farthest from onset among `probes` uniform candidates in (onset, offset]."""
    cands = uniform(clip.num_frames, probes, onset, offset)
    ref = shrink(clip.read([onset])[0]).astype(np.float32)

    def difference(i: int) -> float:  # one frame decoded at a time: 17 of 4096x4096 together held 2 GB
        return float(np.abs(shrink(clip.read([i])[0]).astype(np.float32) - ref).mean())

    return max(cands, key=difference)  # the first of equals


def select(
    clip: Clip, cfg: FrameConfig, onset: int | None = None, apex: int | None = None, offset: int | None = None
) -> list[int]:
    """The indices `cfg.sampling` picks; onset/apex/offset are annotated frame numbers (see `index_of`)."""
    n = clip.num_frames
    lo = clip.index_of(onset) if onset is not None else 0
    hi = clip.index_of(offset) if offset is not None else n - 1
    if lo > hi:
        raise InputError(f"{clip.path} — onset {onset} comes after offset {offset}")
    if cfg.sampling == "uniform":  # within onset..offset when they are given: the expression itself
        return uniform(n, cfg.frames, lo, hi)
    if cfg.sampling == "whole":  # the clip as recorded, lead-in and tail too (other harnesses' frames)
        return uniform(n, cfg.frames)
    if cfg.sampling == "all":
        return [lo + i for i in all_frames(hi - lo + 1, cfg.max_frames)]
    mid = clip.index_of(apex) if apex is not None else estimate_apex(clip, lo, hi)
    return keyframes(n, lo, mid, hi)


def sample(
    path: str | Path,
    cfg: FrameConfig,
    onset: int | None = None,
    apex: int | None = None,
    offset: int | None = None,
) -> ClipFrames:
    """Open `path`, select frames by `cfg` and decode only those."""
    clip = open_clip(path, cfg.folder_fps)
    idx = select(clip, cfg, onset, apex, offset)
    return ClipFrames(clip.read(idx), idx, clip.fps, clip.num_frames, clip.size, str(path))
