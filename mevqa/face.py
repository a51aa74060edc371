"""Find, landmark, align and crop a face, and follow it over a stream of frames.

dlib's HOG frontal detector finds the face; its 68-point shape predictor (iBUG 300-W layout) places the
landmarks. A long video is not detected frame by frame: `FaceTracker` detects every `detect_every` seconds
and in between runs only the shape predictor from a box derived from the previous landmarks (~1 ms),
smooths the landmarks, and warps the frame once into an aligned square crop. `crop_clip` aligns a short
clip with one matrix, so a micro-movement of a few pixels is not erased by per-frame re-alignment.

Temporal stability is the point: the spotter measures optical flow between aligned crops, so alignment
jitter shows up as false motion. Hence the alignment reads only points an expression does not move
(eye corners, nose), the landmarks are smoothed, and a periodic detection that agrees with the track only
confirms it instead of re-seeding it (a re-seed moves every landmark a little).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mevqa.config import FaceConfig
from mevqa.errors import InputError

log = logging.getLogger(__name__)

LANDMARKS = 68
# 68-point (iBUG 300-W) indices per facial region. `_l`/`_r` are the *subject's* sides, as mevqa/facs.py
# and SynthME use them: the subject's left is the image's right (points 22-26, 42-47, 54).
REGIONS: dict[str, tuple[int, ...]] = {
    "jaw": tuple(range(0, 17)),
    "brow_r": tuple(range(17, 22)),
    "brow_l": tuple(range(22, 27)),
    "nose_bridge": tuple(range(27, 31)),  # from between the eyes down to the tip
    "nose": tuple(range(31, 36)),  # the nostrils and the base below the tip
    "eye_r": tuple(range(36, 42)),
    "eye_l": tuple(range(42, 48)),
    "mouth_r": (48, 49, 50, 58, 59, 60, 61, 67),
    "mouth_l": (52, 53, 54, 55, 56, 63, 64, 65),
    "mouth": tuple(range(48, 68)),
}
# Eye corners (image-left eye 36/39, image-right eye 42/45): a blink moves the lids, not the corners, so
# eye centres taken as corner midpoints do not jump when the subject blinks.
_EYE_CORNERS = ((36, 39), (42, 45))
# Points facial actions move least: eye corners, nose tip and base. The track's box, drift check and
# alignment read only these, so a smile does not shift the crop. The upper bridge (27-28) is left out:
# dlib drags it with the brows (AU1/2/4, the commonest micro-expression AUs), measured +30% alignment drift.
_STABLE = np.array([36, 39, 42, 45, 30, 31, 32, 33, 34, 35])
_EYE_ROW = 0.4  # eye line at this share of the crop's height
_SIG = 16  # side of the grey thumbnail the appearance check compares
_MIN_IOU = 0.4  # a detection overlapping the track less than this (but more than 0) says it drifted
_MIN_NCC = 0.4  # a tracked crop less like the last detected face than this has lost the face
_RETRY_S = 0.25  # seconds between detection attempts while a lost face's box is held
_MAX_SCALE_STEP = 1.1  # a face that grows or shrinks more than this in one frame has lost its landmarks
_GIVE = 0.1  # smoothing gives way fully once the landmarks miss their prediction by this share of the radius
_MAX_RESIDUAL = 0.1  # stable-point shape error (share of the face's radius) beyond which landmarks are lost
_LANDMARK_SIDE = 200  # landmarks are placed on a face enlarged to about this box side
_ROI = 0.5  # verification searches the track box widened by this many sides on each edge
_ROI_FACE = 90  # ... with the region resized so the face is about this wide (HOG window: 80 px)
_LOST_SCORE = -0.5  # detector score that re-finds a lost face near its last box (a new face needs 0)

Box = tuple[float, float, float, float]


@functools.cache
def _models() -> tuple[Any, Any]:
    """dlib's HOG detector and 68-point shape predictor (about 75 MB), loaded once per process."""
    try:
        import dlib
    except ImportError as e:
        raise InputError("dlib — not installed: pip install dlib-bin (mevqa/face.py needs it)") from e
    # importing face_recognition_models needs pkg_resources; only its folder is wanted, so find it unimported
    spec = importlib.util.find_spec("face_recognition_models")
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = Path(spec.submodule_search_locations[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
    if path is None or not path.is_file():
        raise InputError(
            "shape_predictor_68_face_landmarks.dat — not found: pip install face_recognition_models "
            "(it ships dlib's 68-point landmark model)"
        )
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(path))


def _rgb(frame: np.ndarray) -> np.ndarray:
    """The frame as a C-contiguous HxWx3 uint8 array (what dlib reads); a grey HxW frame is widened."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] != 3):
        raise InputError(f"frame {frame.shape} {frame.dtype} — expected an HxWx3 uint8 RGB image")
    if frame.ndim == 2:
        frame = np.repeat(frame[:, :, None], 3, axis=2)
    return np.ascontiguousarray(frame)


def _boxes(frame: np.ndarray, width: int, upsample: int = 0) -> list[Box]:
    """Face boxes (frame pixels) found on the frame shrunk to `width` (never enlarged)."""
    detector, _ = _models()
    h, w = frame.shape[:2]
    f = min(1.0, width / w)
    small = (
        frame
        if f == 1.0
        else cv2.resize(frame, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    )
    rects = detector(small, upsample)
    return [(r.left() / f, r.top() / f, (r.right() + 1) / f, (r.bottom() + 1) / f) for r in rects]


def _find(frame: np.ndarray, width: int) -> list[Box]:
    """Boxes at the detection width, upsampled once if none: HOG's 80 px window misses smaller faces;
    then at full size (the shrunk and re-enlarged frame is blurred: SynthME's painted face, 135 px wide
    on a 640 px frame, is found at 640 and missed at 320 either way)."""
    w = frame.shape[1]
    return _boxes(frame, width, 0) or _boxes(frame, width, 1) or (_boxes(frame, w, 0) if width < w else [])


def _area(b: Box) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def _iou(a: Box, b: Box) -> float:
    inter = _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    return inter / max(_area(a) + _area(b) - inter, 1e-9)


def landmarks_in(frame: np.ndarray, box: Box) -> np.ndarray:
    """The 68 landmarks (float32, frame pixels) the shape predictor places for a face in `box`.

    dlib returns whole-pixel points; a small face is first enlarged (region around the box only) so its
    box is about 200 px, which makes the points sub-pixel in the frame and halves their jitter for the
    same cost (the predictor's cost does not depend on the image size).

    Args:
        frame: HxWx3 uint8 RGB.
        box: (x0, y0, x1, y1) in frame pixels, as the detector draws it (the predictor was trained on those).
    """
    _, predictor = _models()  # first: a missing dlib is one clear InputError
    import dlib

    frame = _rgb(frame)
    side = max(box[2] - box[0], box[3] - box[1], 1.0)
    up = min(max(_LANDMARK_SIDE / side, 1.0), 4.0)
    ox = oy = 0
    if up > 1.0:
        h, w = frame.shape[:2]
        ox, oy = max(0, int(box[0] - 0.3 * side)), max(0, int(box[1] - 0.3 * side))
        x1, y1 = min(w, int(box[2] + 0.3 * side) + 1), min(h, int(box[3] + 0.3 * side) + 1)
        if x1 - ox < 2 or y1 - oy < 2:  # the box is off the frame: nothing to enlarge
            ox = oy = 0
            up = 1.0
        else:
            frame = cv2.resize(frame[oy:y1, ox:x1], None, fx=up, fy=up, interpolation=cv2.INTER_LINEAR)
    x0, y0, x1, y1 = (
        int(round(v))
        for v in ((box[0] - ox) * up, (box[1] - oy) * up, (box[2] - ox) * up, (box[3] - oy) * up)
    )
    shape = predictor(frame, dlib.rectangle(x0, y0, max(x1 - 1, x0), max(y1 - 1, y0)))
    pts = np.array([(p.x, p.y) for p in shape.parts()], np.float64)
    return (pts / up + (ox, oy)).astype(np.float32)


def detect(frame: np.ndarray, detect_width: int = 320) -> np.ndarray | None:
    """(68, 2) float32 landmarks, in frame pixels, of the largest face, or None.

    Args:
        frame: HxWx3 uint8 RGB.
        detect_width: detection runs on the frame shrunk to this width (speed); the landmarks are placed on
            the full-size frame.
    """
    frame = _rgb(frame)
    boxes = _find(frame, detect_width)
    return landmarks_in(frame, max(boxes, key=_area)) if boxes else None


def _eye_centres(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image-left eye, image-right eye) centres as corner midpoints (blink-invariant)."""
    lm = np.asarray(landmarks, np.float64)
    return tuple(lm[list(c)].mean(axis=0) for c in _EYE_CORNERS)  # type: ignore[return-value]


def align_matrix(landmarks: np.ndarray, cfg: FaceConfig) -> np.ndarray:
    """2x3 frame->crop affine: eyes level, eye centres `eye_distance * size` apart, the eyes' midpoint at
    the crop's horizontal centre and at `0.4` of its height.

    Raises:
        InputError: the landmarks' eye centres coincide (no face geometry to align).
    """
    left, right = _eye_centres(landmarks)
    d = right - left
    dist = float(np.hypot(*d))
    if not np.isfinite(dist) or dist < 1e-3:
        raise InputError("landmarks — the eye centres coincide, so the face cannot be aligned")
    s = cfg.eye_distance * cfg.size / dist
    c, n = d / dist
    rot = s * np.array([[c, n], [-n, c]])  # rotates the eye line onto +x and scales
    mid = (left + right) / 2
    target = np.array([cfg.size / 2, _EYE_ROW * cfg.size])
    return np.hstack([rot, (target - rot @ mid)[:, None]])


def warp(frame: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """The (size, size, 3) crop `matrix` maps the frame onto (bilinear, edges replicated)."""
    return cv2.warpAffine(
        np.asarray(frame),
        np.asarray(matrix, np.float64),
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )


def transform(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(N, 2) points mapped by a 2x3 affine, as float32."""
    p = np.asarray(points, np.float64)
    m = np.asarray(matrix, np.float64)
    return (p @ m[:, :2].T + m[:, 2]).astype(np.float32)


@dataclass
class AlignedFace:
    """One frame's aligned face.

    Attributes:
        index: position of the frame in the stream (0-based, as fed).
        crop: (size, size, 3) uint8 RGB aligned face.
        landmarks: (68, 2) float32 landmarks in crop coordinates.
        matrix: the 2x3 frame->crop affine used.
        detected: False while the track holds its last box over a short gap (the face was not found).
    """

    index: int
    crop: np.ndarray
    landmarks: np.ndarray
    matrix: np.ndarray
    detected: bool


def _frame_of(lm: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre and RMS radius of the stable points: where the face is and how big, expression-free."""
    p = np.asarray(lm, np.float64)[_STABLE]
    c = p.mean(axis=0)
    return c, float(np.sqrt(((p - c) ** 2).sum(axis=1).mean()))


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 least-squares similarity (rotation, scale, shift) taking points `src` onto `dst`."""
    a, b = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    ca, cb = a.mean(axis=0), b.mean(axis=0)
    za, zb = (a - ca) @ (1, 1j), (b - cb) @ (1, 1j)  # as complex numbers a similarity is one product
    k = (np.conj(za) * zb).sum() / max(float((abs(za) ** 2).sum()), 1e-12)
    rot = np.array([[k.real, -k.imag], [k.imag, k.real]])
    return np.hstack([rot, (cb - rot @ ca)[:, None]])


def _residual(lm: np.ndarray, ref: np.ndarray) -> float:
    """RMS error of the stable points after the best similarity fit onto `ref`, as a share of its radius:
    how far the landmarks are from the shape of this face."""
    a, b = np.asarray(lm, np.float64)[_STABLE], np.asarray(ref, np.float64)[_STABLE]
    err = transform(a, similarity(a, b)) - b
    _, rb = _frame_of(ref)
    return float(np.sqrt((err**2).sum(axis=1).mean())) / max(rb, 1e-9)


def _signature(crop: np.ndarray) -> np.ndarray:
    """Zero-mean unit-norm blurred grey thumbnail of the crop's inner face (background left out); zeros
    when flat. Coarse on purpose: it should tell a face from a hand or a blank wall, not from a smile."""
    s = crop.shape[0]
    inner = crop[int(0.2 * s) : int(0.9 * s), int(0.2 * s) : int(0.8 * s)]
    g = cv2.GaussianBlur(cv2.cvtColor(inner, cv2.COLOR_RGB2GRAY), (0, 0), 2)
    v = cv2.resize(g, (_SIG, _SIG), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    v -= v.mean()
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-3 * _SIG else np.zeros_like(v)


def _relation(box: Box, lm: np.ndarray) -> tuple[float, float, float]:
    """Where the detector's box sits relative to the stable points (radius units): the tracker draws its
    box from the landmarks with this, so the predictor always sees a box like the one it was trained on."""
    c, r = _frame_of(lm)
    r = max(r, 1e-6)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half = ((box[2] - box[0]) + (box[3] - box[1])) / 4
    return (cx - c[0]) / r, (cy - c[1]) / r, half / r


@dataclass
class _Track:
    """A followed face."""

    raw: np.ndarray  # (68, 2) landmarks as last placed: the next box and the drift check read these
    landmarks: np.ndarray  # (68, 2) smoothed: the alignment reads these
    trend: np.ndarray  # (68, 2) smoothed per-frame change, so a steady head move does not lag
    rel: tuple[float, float, float]  # detector box = centre + radius * (dx, dy), half side = radius * k
    anchor: np.ndarray  # stable points in crop pixels at the seed: every later frame is fitted onto them
    shape: np.ndarray  # landmarks of the last confirmed detection: what "face-shaped" means for this face
    template: np.ndarray  # _signature of the last confirmed crop: what this face looks like
    face: AlignedFace  # the last frame it produced

    def box(self) -> Box:
        """Where the detector would box the face now: at the last landmarks moved on by the trend (a fast
        steady move would otherwise leave the box behind, and a far-off box distorts the landmarks)."""
        c, r = _frame_of(self.raw + self.trend)
        dx, dy, k = self.rel
        x, y, h = c[0] + r * dx, c[1] + r * dy, r * k
        return x - h, y - h, x + h, y + h


class FaceTracker:
    """Follows one face over a stream of frames and returns its aligned crop per frame.

    Detects every `cfg.detect_every` seconds (and at once when the track drifts or its landmarks look
    lost); in between, places the landmarks from the box of the previous frame's landmarks; smooths them
    with an exponential average (`cfg.smooth`, with a trend term so a steady head move does not lag, giving
    way to sudden moves, restarted when the track is re-seeded); holds the last box for up to `cfg.max_gap`
    seconds when the face is lost (`detected=False`), then returns None for faceless frames. Never raises
    for a frame without a face.

    The first frame of a track is aligned by `align_matrix` (eyes level, `eye_distance` apart); later
    frames are fitted (least-squares similarity) onto where that frame put the eye corners and nose: 10
    points instead of 4 cut the alignment jitter by ~30%, and a detection that confirms the track does
    not move the crop.

    Attributes:
        faceless: frames returned as None so far.
    """

    def __init__(self, cfg: FaceConfig, fps: float):
        if not fps > 0:
            raise InputError(f"fps {fps} — a frame rate must be positive")
        self.cfg, self.fps = cfg, float(fps)
        self.faceless = 0
        self._index = 0
        self._track: _Track | None = None
        self._lost_at: int | None = None  # first frame of the current gap
        self._next_detect = 0  # frame index of the next scheduled detection
        self._every = max(1, round(cfg.detect_every * fps))
        self._retry = max(1, round(min(cfg.detect_every, _RETRY_S) * fps))
        self._hold_frames = round(cfg.max_gap * fps)
        self._alpha = min(max(cfg.smooth, 0.0), 0.95)  # weight of the past; 1 would freeze the track
        _models()  # a missing model is the caller's error now, not a silent None per frame

    def __call__(self, frame: np.ndarray) -> AlignedFace | None:
        idx, self._index = self._index, self._index + 1
        face = self._step(_rgb(frame), idx)
        if face is None:
            self.faceless += 1
        return face

    def _step(self, frame: np.ndarray, idx: int) -> AlignedFace | None:
        face = self._follow(frame, idx) if self._track is not None else None
        if face is None and self._track is not None and self._lost_at is None:
            self._next_detect = idx  # the track just failed: look for the face at once
        if idx >= self._next_detect:
            face = self._detect(frame, idx, face)
        if face is not None:
            self._lost_at = None
            return face
        return self._hold(frame, idx)

    def _follow(self, frame: np.ndarray, idx: int) -> AlignedFace | None:
        """This frame's face from the track's box, or None when the landmarks or the look are off."""
        t = self._track
        assert t is not None
        raw = landmarks_in(frame, t.box()).astype(np.float64)
        if not _continues(raw, t, frame.shape):
            return None
        lm, trend = self._smoothed(raw, t)
        m = similarity(lm[_STABLE], t.anchor)
        face = AlignedFace(idx, warp(frame, m, self.cfg.size), transform(lm, m), m, True)
        if float(_signature(face.crop) @ t.template) < _MIN_NCC:
            return None  # face-shaped landmarks on something that no longer looks like the face
        t.raw, t.landmarks, t.trend, t.face = raw, lm, trend, face
        return face

    def _smoothed(self, raw: np.ndarray, t: _Track) -> tuple[np.ndarray, np.ndarray]:
        """Holt's exponential smoothing (level + trend) of the landmarks. The past's weight shrinks as the
        stable points stray from the prediction: jitter (~0.3 px) barely, a sudden move fully."""
        pred = t.landmarks + t.trend
        _, r = _frame_of(t.landmarks)
        miss = float(np.sqrt(((raw[_STABLE] - pred[_STABLE]) ** 2).sum(axis=1).mean()))
        a = self._alpha * (1 - min(1.0, miss / max(_GIVE * r, 1e-6)))
        lm = a * pred + (1 - a) * raw
        b = self._alpha / 2  # the trend forgets faster than the level, so it follows a stop or turn
        return lm, b * t.trend + (1 - b) * (lm - t.landmarks)

    def _detect(self, frame: np.ndarray, idx: int, face: AlignedFace | None) -> AlignedFace | None:
        """A detection: near a healthy track it confirms the track (or re-seeds one that drifted off the
        face); without one it searches the whole frame and seeds a new track."""
        t = self._track
        if face is not None and t is not None:
            self._next_detect = idx + self._every
            tb = t.box()
            best = max(_near(frame, tb), key=lambda b: _iou(b, tb), default=None)
            if best is None or _iou(best, tb) == 0:
                return face  # HOG misses turned faces the landmarks still follow; the look check passed
            if _iou(best, tb) >= _MIN_IOU:
                t.template, t.shape = _signature(face.crop), t.raw  # confirmed, not re-seeded: no jump
                return face
            return self._seed(frame, idx, best) or face
        if t is not None:
            # a lost track looks where the face was first, at the face's own scale and with a lower bar (a
            # weak detection where the face just was is the same face): SynthME's painted faces score
            # -0.1..1.3 on dlib's detector, and one scoring about 0 was faceless for 56% of its video
            tb = t.box()
            near = [b for b in _near(frame, tb, _LOST_SCORE) if _iou(b, tb) > 0]
            if near:
                self._next_detect = idx + self._every
                return self._seed(frame, idx, max(near, key=lambda b: _iou(b, tb)))
        boxes = _find(frame, self.cfg.detect_width)
        if not boxes:  # a held face may be back any moment; a faceless stream is searched at the usual rate
            self._next_detect = idx + (self._retry if t is not None else self._every)
            return None
        self._next_detect = idx + self._every
        last = t.box() if t is not None else None
        best = max(boxes, key=lambda b: (_iou(b, last) if last else 0.0, _area(b)))  # same face, else largest
        return self._seed(frame, idx, best)

    def _seed(self, frame: np.ndarray, idx: int, box: Box) -> AlignedFace | None:
        """A new track from a detector box; smoothing starts afresh (no lag behind a jump)."""
        raw = landmarks_in(frame, box).astype(np.float64)
        try:
            m = align_matrix(raw, self.cfg)
        except InputError:
            return None  # degenerate landmarks: no face here, not the caller's mistake
        face = AlignedFace(idx, warp(frame, m, self.cfg.size), transform(raw, m), m, True)
        log.debug("frame %d: face track seeded at %s", idx, [round(v) for v in box])
        anchor = transform(raw[_STABLE], m).astype(np.float64)
        self._track = _Track(
            raw, raw, np.zeros_like(raw), _relation(box, raw), anchor, raw, _signature(face.crop), face
        )
        return face

    def _hold(self, frame: np.ndarray, idx: int) -> AlignedFace | None:
        """The last good alignment applied to this frame while the gap is short; None after it."""
        t = self._track
        if t is None:
            return None
        if self._lost_at is None:
            self._lost_at = idx
        if idx - self._lost_at >= self._hold_frames:
            log.debug("frame %d: face lost for %.2f s, track dropped", idx, self.cfg.max_gap)
            self._track = None
            return None
        m = t.face.matrix
        return AlignedFace(idx, warp(frame, m, self.cfg.size), t.face.landmarks, m, False)


def _continues(raw: np.ndarray, t: _Track, shape: tuple[int, ...]) -> bool:
    """Whether new landmarks continue the track: finite, on the frame, shaped like this face, and no jump
    in scale or position since the last frame."""
    if not np.isfinite(raw).all():
        return False
    (c0, r0), (c1, r1) = _frame_of(t.raw), _frame_of(raw)
    if r1 < 2 or not 1 / _MAX_SCALE_STEP < r1 / r0 < _MAX_SCALE_STEP or np.hypot(*(c1 - c0)) > 2 * r0:
        return False
    if not (0 <= c1[0] < shape[1] and 0 <= c1[1] < shape[0]):
        return False
    return _residual(raw, t.shape) < _MAX_RESIDUAL


def _near(frame: np.ndarray, box: Box, score: float = 0.0) -> list[Box]:
    """Faces scoring above `score` (dlib's own threshold is 0) in a region around `box`, resized so a face of
    the box's size fills HOG's window: cheaper than a full-frame search and finds small faces without
    upsampling the whole frame."""
    detector, _ = _models()
    side = max(box[2] - box[0], 1.0)
    h, w = frame.shape[:2]
    x0, y0 = max(0, int(box[0] - _ROI * side)), max(0, int(box[1] - _ROI * side))
    x1, y1 = min(w, int(box[2] + _ROI * side) + 1), min(h, int(box[3] + _ROI * side) + 1)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return []
    f = _ROI_FACE / side
    region = cv2.resize(
        frame[y0:y1, x0:x1],
        (max(1, round((x1 - x0) * f)), max(1, round((y1 - y0) * f))),
        interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR,
    )
    return [
        (x0 + r.left() / f, y0 + r.top() / f, x0 + (r.right() + 1) / f, y0 + (r.bottom() + 1) / f)
        for r, v in zip(*detector.run(np.ascontiguousarray(region), 0, score)[:2])
        if v >= score
    ]


def crop_clip(frames: list[np.ndarray], cfg: FaceConfig) -> list[np.ndarray]:
    """Aligned face crops of a short clip, all warped with ONE matrix (from the median of the landmarks
    found on its frames), so a few-pixel micro-movement is not erased by per-frame re-alignment.

    Args:
        frames: HxWx3 uint8 RGB frames of one size.
        cfg: the face settings (size, eye_distance, detect_width).

    Raises:
        InputError: no frames, frames of different sizes, or no face on any frame.
    """
    if not frames:
        raise InputError("clip — it has no frames to find a face on")
    frames = [_rgb(f) for f in frames]
    if len({f.shape for f in frames}) > 1:
        raise InputError("clip — its frames differ in size, so one alignment cannot fit them all")
    found = [lm for lm in (detect(f, cfg.detect_width) for f in frames) if lm is not None]
    if not found:
        raise InputError(
            "clip — no face found on any frame; for clips that are already face crops set the face mode "
            "to none (`frames.face.mode`)"
        )
    m = align_matrix(np.median(np.stack(found), axis=0), cfg)
    return [warp(f, m, cfg.size) for f in frames]
