"""Find the moments a face moves like an expression in a long video, without training.

The method is the one the MEGC literature uses as its training-free baseline (optical-flow magnitude in
landmark regions, MEGC 2022): the face is tracked and aligned (`mevqa.face`), optical flow is computed
between the aligned frames i-k and i (k from `SpotConfig.interval` in seconds, so 30 and 200 fps
videos share settings), the head's own motion is removed by subtracting the nose bridge's flow, each
region's residual magnitude is measured, the strongest region per frame is the signal, it is smoothed,
and peaks above a threshold relative to the video's own signal (robust z-score: median + t x MAD) are
expanded to their valleys into onset / apex / offset intervals.

Memory stays flat in the video's length: frames are read in chunks and only the last k + 1 frames and
their aligned faces are kept; the per-frame signal (a few floats a frame) is all that grows.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from mevqa.config import FaceConfig, SpotConfig
from mevqa.errors import InputError
from mevqa.facs import REGION_ROWS
from mevqa.video import Clip, open_clip

log = logging.getLogger(__name__)

# Regions whose residual motion is the signal; the nose bridge is the reference (it moves with the head,
# never with an expression). Eyes are left out: blinks are the commonest facial motion and are not
# annotated as expressions; eyelid AUs (5, 7) still move the brows' and cheeks' boxes enough to be seen.
SIGNAL_REGIONS = ("brow_l", "brow_r", "nose", "mouth_l", "mouth_r")
# measured too, never the signal: an event whose eyes moved far more than the rest is a blink
MEASURED = (*SIGNAL_REGIONS, "eye_l", "eye_r")
REFERENCE = "nose_bridge"
CHUNK = 16  # frames decoded at a time
STABLE = [36, 39, 42, 45, 30, 31, 33, 35]  # eye corners and nose: what the head moves, not an expression
TEXTURED = 90  # percentile of the image gradient above which a region's pixels are measured


@dataclass(frozen=True)
class Event:
    """A spotted interval in the video's own frame numbers (file numbers for folders)."""

    onset: int
    apex: int
    offset: int
    type: str  # micro or macro
    score: float  # peak height in robust standard deviations above the median


@dataclass
class Signal:
    """One video's motion signal: one value per analysed frame."""

    frames: np.ndarray  # the video's frame numbers of the analysed frames
    regions: np.ndarray  # (n, len(MEASURED)) residual flow magnitude, pixels of the flow image
    faceless: np.ndarray  # bool: no face was tracked on this frame
    vectors: np.ndarray  # (n, len(MEASURED), 2) mean residual flow per region: the direction
    fps: float  # the analysed rate
    video_fps: float
    step: int  # analysed every `step`-th frame
    k: int  # flow distance, in analysed frames
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def motion(self) -> np.ndarray:
        """The strongest region per frame (NaN where faceless or within the first k frames)."""
        n = len(SIGNAL_REGIONS)
        return self.regions[:, :n].max(axis=1) if len(self.regions) else np.zeros(0, np.float32)


# ---------------------------------------------------------------- reading and the face stage
def analysis_step(video_fps: float, analysis_fps: float) -> int:
    """Analyse every n-th frame so the analysed rate is at most `analysis_fps` (200 fps -> 50: n = 4)."""
    return max(1, int(math.floor(video_fps / analysis_fps + 1e-9)))


def stream(
    clip: Clip, step: int, on_short: Callable[[int], None] | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """(index, RGB frame) for every `step`-th frame, decoded in order by a thread up to two chunks ahead
    (the decoder releases the GIL: decoding and the flow share the two cores), in bounded memory. A video
    whose header promised more frames than it holds ends at its last decodable frame (`on_short`)."""
    import queue
    import threading

    chunks: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                chunks.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def decode() -> None:
        chunk: list = []
        try:
            for item in clip.frames(step):
                chunk.append(item)
                if len(chunk) == CHUNK and not put(chunk):
                    return
                chunk = [] if len(chunk) == CHUNK else chunk
            put(chunk) and put(None)
        except InputError:
            put(chunk) and put(_SHORT)
        except BaseException as e:  # anything else: raised in the reader, never a reader waiting forever
            put(e)

    threading.Thread(target=decode, daemon=True).start()
    last = -step
    try:
        while (chunk := chunks.get()) is not None:
            if chunk is _SHORT:
                if on_short:
                    on_short(last + step)
                return
            if isinstance(chunk, BaseException):
                raise chunk
            last = chunk[-1][0] if chunk else last
            yield from chunk
    finally:
        stop.set()


_SHORT = object()  # the decoder's word that the video ended before its header said


def _band_boxes(size: int) -> dict[str, tuple[int, int, int, int]]:
    """Region boxes for a face crop that was not aligned (`--face none`): the rows facs.py gives, halved."""
    s = size

    def box(x0: float, x1: float, rows: tuple[float, float]) -> tuple[int, int, int, int]:
        return int(x0 * s), int(rows[0] * s), int(x1 * s), int(rows[1] * s)

    return {
        "brow_l": box(0.52, 0.85, (REGION_ROWS["brows"][0], REGION_ROWS["eyes"][0] - 0.02)),
        "brow_r": box(0.15, 0.48, (REGION_ROWS["brows"][0], REGION_ROWS["eyes"][0] - 0.02)),
        "nose": box(0.36, 0.64, REGION_ROWS["nose"]),
        "eye_l": box(0.55, 0.85, REGION_ROWS["eyes"]),
        "eye_r": box(0.15, 0.45, REGION_ROWS["eyes"]),
        "mouth_l": box(0.5, 0.8, REGION_ROWS["mouth"]),
        "mouth_r": box(0.2, 0.5, REGION_ROWS["mouth"]),
        REFERENCE: box(0.42, 0.58, (0.36, 0.5)),
    }


def landmark_boxes(landmarks: np.ndarray, size: int) -> dict[str, tuple[int, int, int, int]]:
    """Region boxes around the landmark groups of `mevqa.face.REGIONS`, padded, in a `size` square."""
    from mevqa.face import REGIONS

    pad = 0.06 * size
    out = {}
    for name in (*MEASURED, REFERENCE):
        pts = landmarks[list(REGIONS[name])]
        x0, y0 = np.floor(pts.min(0) - pad).astype(int)
        x1, y1 = np.ceil(pts.max(0) + pad).astype(int)
        if name.startswith("brow"):  # stop above the upper lid: a blink is no brow movement
            lid = landmarks[list(REGIONS["eye" + name[4:]])][:, 1].min()
            y1 = int(min(y1, lid - 0.03 * size))
        out[name] = (max(0, x0), max(0, y0), min(size, max(x1, x0 + 2)), min(size, max(y1, y0 + 2)))
    return out


class FaceStage:
    """Frame -> (grey aligned face at the flow size, region boxes, alignment number, frame -> crop matrix)
    or None when faceless.

    The alignment is *held*: the crop keeps one frame -> crop transform until the head has moved `REALIGN`
    of the crop away from it. Re-aligning every frame would make the crop wobble with the landmarks, which
    an expression itself moves (measured on SynthME's painted face: 4.9 px p90 between frames i-6 and i,
    tracked, vs 0.5 px held); the slow drift in between is what the nose bridge's flow removes. Where the
    head is comes from the median of the last `WINDOW` seconds of landmarks, not one frame's: dlib's points
    on a painted face flip by 7-14 px between frames of a still head, and single frames re-aligned a 40 s
    training video 15 times, each a gap of k frames in the signal. An alignment made before the window was
    full (a video's start, after a faceless gap) is made again once it is. At a re-alignment the frames
    still in the flow window are cut again with the new one (`recut`), so the signal has no gap.
    """

    REALIGN = 0.06
    WINDOW = 1.0  # seconds

    def __init__(self, face: FaceConfig, fps: float, flow_size: int):
        self.size = flow_size
        self.tracker = None
        self.held: np.ndarray | None = None
        self.anchor: np.ndarray | None = None  # the stable points' crop positions when it was aligned
        self.partial = False  # aligned on fewer landmarks than the window holds
        self.recent: deque[np.ndarray] = deque(maxlen=max(1, round(self.WINDOW * fps)))
        self.epoch = 0
        if face.mode == "crop":
            from dataclasses import replace

            from mevqa.face import FaceTracker

            self.tracker = FaceTracker(replace(face, size=flow_size), fps)
        self.bands = _band_boxes(flow_size)

    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, dict, int, np.ndarray] | None:
        if self.tracker is None:
            return _grey(frame, self.size), self.bands, 0, _IDENTITY
        from mevqa.face import transform

        face = self.tracker(frame)
        if face is None:
            self.held = None
            self.recent.clear()
            return None
        self.recent.append(transform(face.landmarks, cv2.invertAffineTransform(face.matrix)))  # frame px
        full = len(self.recent) == self.recent.maxlen
        where = np.median(np.stack(self.recent), axis=0) if len(self.recent) > 1 else self.recent[-1]
        if self.held is None or (self.partial and full) or self._moved(where) > self.REALIGN * self.size:
            self._align(where, full, face.matrix)
        return self.recut(frame), self.boxes, self.epoch, self.held

    def _align(self, where: np.ndarray, full: bool, tracked: np.ndarray) -> None:
        """A new alignment (eyes level, set apart) on the landmarks `where`; the tracker's own if they are
        degenerate."""
        from mevqa.face import align_matrix, transform

        try:
            self.held = align_matrix(where, self.tracker.cfg)
        except InputError:
            self.held = tracked
        self.epoch, self.partial = self.epoch + 1, not full
        self.anchor = transform(where[STABLE], self.held)
        # boxes are held with the alignment: landmarks an expression moves must not move the boxes
        self.boxes = landmark_boxes(transform(where, self.held), self.size)

    def recut(self, frame: np.ndarray, matrix: np.ndarray | None = None) -> np.ndarray:
        """The frame's grey face crop under the held alignment (or `matrix`)."""
        from mevqa.face import warp

        return _grey(warp(frame, self.held if matrix is None else matrix, self.size), self.size)

    def _moved(self, where: np.ndarray) -> float:
        """How far (crop pixels) the head's stable points are from where they were when it was aligned."""
        from mevqa.face import transform

        return float(np.abs(transform(where[STABLE], self.held) - self.anchor).mean())


_IDENTITY = np.eye(2, 3)


def _grey(rgb: np.ndarray, size: int) -> np.ndarray:
    # (normalising each crop's brightness against lighting changes lowered F1 on SynthME long: 0.75 -> 0.67;
    # mixing redness R-G into the grey, for lips as grey as the skin, lowered the painted 30 fps training
    # videos' tuned F1 0.96 -> 0.91 at 20% and 0.83 at 50%)
    g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return cv2.resize(g, (size, size), interpolation=cv2.INTER_AREA) if g.shape != (size, size) else g


# ---------------------------------------------------------------- the signal
@functools.cache
def _dis() -> Any:
    # DIS (Kroeger et al. 2016), OpenCV's "medium" preset: about twice as fast as Farneback at 112 px with
    # the sub-pixel accuracy a micro-movement of a pixel or two needs (BENCHMARKS: bench spot)
    return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)


def region_motion(
    prev: np.ndarray, cur: np.ndarray, boxes: dict[str, tuple[int, int, int, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """Residual flow per measured region (minus the nose bridge's) on its textured pixels: its magnitude
    (90th percentile) and its mean vector (the direction, to pair a movement's onset with its return)."""
    flow = _dis().calc(prev, cur, None)
    # the head's own motion is what the nose bridge does (no expression moves it); an affine fit of the
    # face outside the brows, eyes and mouth did worse on SynthME long (photo F1 0.82 vs 0.93)
    x0, y0, x1, y1 = boxes[REFERENCE]
    resid = flow - np.median(flow[y0:y1, x0:x1].reshape(-1, 2), axis=0)
    # flow is only measured where there is texture to see it: on a smooth patch (skin, a painted face) the
    # flow is whatever noise and the regulariser make it. The 10% most textured pixels of each region
    # (edges of brows, lids, lips, wrinkles): on SynthME long, F1 0.40 -> 0.96 for the painted face,
    # 0.93 either way for the photo.
    grad = np.abs(cv2.Sobel(prev, cv2.CV_32F, 1, 0, ksize=3)) + np.abs(
        cv2.Sobel(prev, cv2.CV_32F, 0, 1, ksize=3)
    )
    mags = np.empty(len(MEASURED), np.float32)
    vecs = np.empty((len(MEASURED), 2), np.float32)
    for j, name in enumerate(MEASURED):
        x0, y0, x1, y1 = boxes[name]
        g = grad[y0:y1, x0:x1].ravel()
        d = resid[y0:y1, x0:x1].reshape(-1, 2)[g >= np.percentile(g, TEXTURED)]
        # the 90th percentile, not the mean: an AU moves part of a box (a mouth corner), noise moves all of it
        mags[j] = np.percentile(np.hypot(d[:, 0], d[:, 1]), 90)
        vecs[j] = d.mean(axis=0)
    return mags, vecs


def motion_signal(clip: Clip, cfg: SpotConfig, fps: float | None = None, progress: bool = False) -> Signal:
    """Stream `clip` once and measure its motion signal (see the module docstring)."""
    from tqdm import tqdm

    video_fps = fps or clip.fps
    step = analysis_step(video_fps, cfg.analysis_fps)
    rate = video_fps / step
    k = max(1, round(cfg.interval * rate))
    measure = _Measure(FaceStage(cfg.face, rate, cfg.flow_size), k)
    frames, short = [], []
    total = math.ceil(clip.num_frames / step)
    with tqdm(
        total=total, desc=f"spot {clip.path.name}", unit="frame", disable=not progress, leave=False
    ) as bar:
        t0 = time.perf_counter()
        for index, frame in stream(clip, step, short.append):
            measure.timings["decode"] += time.perf_counter() - t0
            measure(frame)
            frames.append(clip_number(clip, index))
            bar.update()
            t0 = time.perf_counter()
    if short:
        log.warning(
            "%s: the header promises %d frames; decoding stopped at frame %d",
            clip.path,
            clip.num_frames,
            short[0],
        )
    n = len(MEASURED)
    rows = np.array(measure.rows, np.float32).reshape(-1, n)
    vectors = np.array(measure.vectors, np.float32).reshape(-1, n, 2)
    faceless = np.array(measure.faceless, bool)
    return Signal(np.array(frames, int), rows, faceless, vectors, rate, video_fps, step, k, measure.timings)


class _Measure:
    """Per analysed frame: the face, then the flow against the face k frames back (none where either is
    faceless); only those k + 1 frames are kept, so memory does not grow with the video."""

    def __init__(self, stage: FaceStage, k: int):
        self.stage, self.faces = stage, deque(maxlen=k + 1)
        self.rows: list[np.ndarray] = []
        self.vectors: list[np.ndarray] = []
        self.faceless: list[bool] = []
        self.timings = {"decode": 0.0, "face": 0.0, "flow": 0.0}
        self.empty = (np.full(len(MEASURED), np.nan, np.float32), np.zeros((len(MEASURED), 2), np.float32))

    def __call__(self, frame: np.ndarray) -> None:
        t1 = time.perf_counter()
        face = self.stage(frame)
        t2 = time.perf_counter()
        self.faces.append((frame, face))
        then, prev = self.faces[0] if len(self.faces) == self.faces.maxlen else (None, None)
        if face is not None and prev is not None:
            # a frame from before a re-alignment is cut again with the current one: like compared with like
            before = prev[0] if prev[2] == face[2] else self.stage.recut(then, face[3])
            mags, vecs = region_motion(before, face[0], face[1])
        else:
            mags, vecs = self.empty
        self.rows.append(mags)
        self.vectors.append(vecs)
        self.faceless.append(face is None)
        self.timings["face"] += t2 - t1
        self.timings["flow"] += time.perf_counter() - t2


def clip_number(clip: Clip, index: int) -> int:
    """The frame number the annotation sheets use: a video's index, a folder's file number."""
    files = getattr(clip, "files", None)
    if files is None:
        return index
    from mevqa.video import _frame_number

    return _frame_number(files[index])[0]


# ---------------------------------------------------------------- peaks -> intervals
def smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Moving average over `width` frames (NaN-aware: faceless frames do not pull the signal down)."""
    if width <= 1 or not len(x):
        return x.copy()
    valid = ~np.isnan(x)
    kernel = np.ones(width) / width
    num = np.convolve(np.where(valid, x, 0.0), kernel, mode="same")
    den = np.convolve(valid.astype(float), kernel, mode="same")
    return np.where(den > 0, num / np.maximum(den, 1e-9), np.nan)


def smoothed(sig: Signal, cfg: SpotConfig) -> np.ndarray:
    """The signal the peaks are found in (and the CSV and the timeline show): motion over `cfg.smooth` s."""
    return smooth(sig.motion, max(1, round(cfg.smooth * sig.fps)))


def threshold(x: np.ndarray, t: float) -> tuple[float, float, float]:
    """(median, robust sigma, threshold) of a signal: median + t x 1.4826 x MAD."""
    v = x[~np.isnan(x)]
    if not len(v):
        return 0.0, 0.0, math.inf
    med = float(np.median(v))
    sigma = 1.4826 * float(np.median(np.abs(v - med))) or float(v.std()) or 1e-6
    return med, sigma, med + t * sigma


def peaks(
    x: np.ndarray, level: float, prominence: float, min_gap: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Peaks above `level` that also stand `prominence` above their surrounding valleys (the flank of a
    bigger movement is not an event of its own), and each one's extent: where the signal falls back to a
    quarter of the peak's height over its base. Returns (peaks, left, right) as frame positions."""
    from scipy.signal import find_peaks, peak_widths

    y = np.nan_to_num(x, nan=float(np.nanmedian(x)) if np.isfinite(x).any() else 0.0)
    p, _ = find_peaks(y, height=level, prominence=prominence, distance=max(1, min_gap))
    if not len(p):
        return p, p, p
    _, _, left, right = peak_widths(y, p, rel_height=0.75)
    return p, np.floor(left).astype(int), np.ceil(right).astype(int).clip(max=len(y) - 1)


def intervals(sig: Signal, cfg: SpotConfig) -> list[Event]:
    """The signal's peaks as events in the video's frame numbers, merged where they overlap."""
    x = smoothed(sig, cfg)
    med, sigma, level = threshold(x, cfg.threshold)
    found, left, right = peaks(x, level, level - med, sig.k)
    spans = [[lo, p, hi, float((x[p] - med) / sigma)] for p, lo, hi in zip(found, left, right)]
    spans = pair(_merge(spans), sig, x, round(cfg.max_duration * sig.fps), round(cfg.hold * sig.fps))
    events = []
    for lo, p, hi, score in (s for s in spans if not is_blink(sig, s[0], s[2], cfg.blink)):
        # D(i) compares frame i with i-k, so a movement that ends at f still shows until f + k
        hi = max(p, hi - sig.k)
        onset, apex, offset = (int(sig.frames[i]) for i in (lo, p, hi))
        seconds = (offset - onset + 1) / sig.video_fps
        if cfg.min_duration <= seconds <= cfg.max_duration:
            kind = "micro" if seconds <= cfg.micro_max else "macro"
            events.append(Event(onset, apex, offset, kind, round(score, 2)))
    return events


def is_blink(sig: Signal, lo: int, hi: int, ratio: float) -> bool:
    """The eyes moved `ratio` times more than brows, nose and mouth: a blink (the datasets do not annotate
    blinks; an eyelid AU moves the brows or cheeks too). On SynthME long's painted face blinks reach
    1.46-1.7x and expressions at most 1.18x; on the photographed one the skin above the lid drags the brow
    boxes along (blinks 1.00-1.31x, expressions at most 1.01x): `spot --tune` picks the ratio."""
    r = sig.regions[lo : hi + 1]
    n = len(SIGNAL_REGIONS)
    if not len(r) or np.isnan(r).all():
        return False
    return float(np.nanmax(r[:, n:])) > ratio * float(np.nanmax(r[:, :n]))


def direction(sig: Signal, lo: int, hi: int) -> np.ndarray:
    """A span's movement per region: the mean residual vectors over it, magnitude-weighted, (regions, 2)."""
    w = np.nan_to_num(sig.regions[lo : hi + 1])[..., None]
    return (sig.vectors[lo : hi + 1] * w).sum(axis=0)


def opposed(a: np.ndarray, b: np.ndarray) -> float:
    """How far two spans' movements oppose: the per-region cosines, weighted by the regions' movement in
    both spans (brows up then down, -1). All regions vote: an open-mouth macro's mouth box nets out to a
    weak direction while its brows reverse cleanly, and picking the single region that moved most took the
    mouth by a hair (cosine -0.41) and split the event in two."""
    # sum_j w_j cos_j / sum_j w_j with w_j = |a_j| |b_j| is sum_j a_j . b_j / sum_j |a_j| |b_j|
    w = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float((a * b).sum() / (w.sum() + 1e-9))


def pair(spans: list[list], sig: Signal, x: np.ndarray, longest: int, hold: int) -> list[list]:
    """A movement out of neutral and its return are two bumps of the i-k -> i flow, in opposite directions:
    join consecutive spans whose directions oppose (weighted cosine < -0.5, `opposed`) and
    that are at most `hold` frames apart into one event, apex at the pause between them, when the whole
    fits in `longest` frames. (MDMD uses the flow's main direction the same way.)"""
    out: list[list] = []
    i = 0
    while i < len(spans):
        cur = spans[i]
        if i + 1 < len(spans) and spans[i + 1][2] - cur[0] <= longest and spans[i + 1][0] - cur[2] <= hold:
            nxt = spans[i + 1]
            if opposed(direction(sig, cur[0], cur[2]), direction(sig, nxt[0], nxt[2])) < -0.5:
                apex = cur[1] + int(np.argmin(np.nan_to_num(x[cur[1] : nxt[1] + 1], nan=np.inf)))
                out.append([cur[0], apex, nxt[2], max(cur[3], nxt[3])])
                i += 2
                continue
        out.append(cur)
        i += 1
    return out


def _merge(spans: list[list]) -> list[list]:
    out: list[list] = []
    for s in sorted(spans):
        if out and s[0] <= out[-1][2] + 1:  # overlapping or touching: one movement
            last = out[-1]
            if s[3] > last[3]:
                last[1], last[3] = s[1], s[3]
            last[2] = max(last[2], s[2])
        else:
            out.append(list(s))
    return out


def faceless_spans(sig: Signal) -> list[tuple[int, int]]:
    """Runs of faceless frames, as (first, last) frame numbers."""
    out, start = [], None
    for i, f in enumerate(sig.faceless):
        if f and start is None:
            start = i
        if not f and start is not None:
            out.append((int(sig.frames[start]), int(sig.frames[i - 1])))
            start = None
    if start is not None:
        out.append((int(sig.frames[start]), int(sig.frames[-1])))
    return out


def spot_video(
    path: str, cfg: SpotConfig, fps: float | None = None, folder_fps: float = 200.0, progress: bool = False
) -> tuple[list[Event], Signal]:
    """Open one video (file or frame folder), measure its signal and spot its events."""
    clip = open_clip(path, folder_fps)
    if clip.num_frames < 2:
        raise InputError(f"{path} — {clip.num_frames} frame; spotting needs a video of at least 2 frames")
    sig = motion_signal(clip, cfg, fps, progress)
    return intervals(sig, cfg), sig


def nth_event(events: list[Event], n: int, path: str) -> Event:
    """The n-th spotted event (1-based, in time order), or an error saying how many there are."""
    if not 1 <= n <= len(events):
        raise InputError(
            f"{path} — event {n} asked for, but {len(events)} "
            f"{'was' if len(events) == 1 else 'were'} spotted (mevqa spot shows them)"
        )
    return sorted(events, key=lambda e: e.onset)[n - 1]


def spot_settings(face: FaceConfig, recipe: str | None = None) -> SpotConfig:
    """The spotter behind ask/chat `--event`, the agent's spot tool and the app: a recipe's settings (the
    `spot:` section `mevqa spot --tune` writes) or the defaults, with the clip's own face stage (--face):
    a clip that is already a face crop is not searched for a face."""
    from dataclasses import replace

    from mevqa.config import from_dict, load_yaml

    cfg = (
        from_dict(SpotConfig, load_yaml(recipe).get("spot", {}), recipe, "spot.") if recipe else SpotConfig()
    )
    return replace(cfg, face=face)


def event_frames(path: str, n: int, cfg: SpotConfig, folder_fps: float) -> tuple[int, int, int]:
    """Onset, apex and offset of the n-th event spotted in `path`."""
    events, _ = spot_video(path, cfg, None, folder_fps)
    e = nth_event(events, n, path)
    return e.onset, e.apex, e.offset
