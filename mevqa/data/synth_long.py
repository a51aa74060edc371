"""SynthME-long: long videos holding micro- and macro-expressions among blinks, head drift and lighting.

A long video (ME-STR, ME-LVQA) is mostly neutral face. Spotting is hard not because the events are rare
but because the face keeps moving for other reasons, so each video holds, besides its annotated events:
- micro-expressions (synth.py's `plan_clip`: emotion -> AUs, 0.2-0.5 s onset -> offset, a few pixels) and
  macro-expressions (0.6-4 s, 2-3x the amplitude, a broader set of the emotion's AUs), >= 1.5 s apart;
- blinks every 2-6 s (0.1-0.3 s, lids closed at the middle), *not* annotated, as in the datasets, and
  listed in `blinks.csv` so a benchmark can count the false positives they cause;
- slow head drift (a few px over seconds) and roll within +-2 degrees, one lighting change (a gain ramp
  across the frame over ~1 s, recorded in `videos.json`) and sensor noise.

Two identities, both on uncropped 640x480 frames (the face stage must find and align the face):
- `photo`: `skimage.data.astronaut()`, the one real photographed face available offline, scaled and
  placed per subject (mirror, scale, position, tint). Its 68 landmarks are found once with dlib; each AU
  is a smooth displacement field (Gaussian bumps around the landmarks it moves) precomputed per event, so
  a frame is one scale + one `cv2.remap` of the face box; blinks slide the upper-lid skin over the eye.
- `procedural`: synth.py's `FacePainter` face. dlib's frontal detector does find the painted face (and
  its 68 landmarks fall on the painted brows, eyes, nose and mouth), so it is composited onto a 640x480
  textured background like the photo, not shipped as a face-filling crop.

Layout of `out`: `videos/<video>.mp4` (or, with `frames=True`, `frames/<video>/img<N>.jpg` from 1, as
SAMM ships long videos), `annotations.csv` (subject,video,onset,apex,offset,aus,emotion,type),
`blinks.csv` (subject,video,onset,offset) and `videos.json`. Frame numbers are the video's own: 0-based
indices for mp4 files, file numbers (from 1) for frame folders. Same arguments -> identical sheets.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import io
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
from tqdm import tqdm

from mevqa.data.qa import AU
from mevqa.data.synth import (
    FacePainter,
    Identity,
    _test_subjects,
    choose_expression,
    intensity,
    make_identity,
    plan_clip,
)
from mevqa.errors import InputError, MissingDependency
from mevqa.facs import EMOTION_RULES
from mevqa.io import atomic_dir, atomic_write, disk_errors, write_mp4

IDENTITIES = ("procedural", "photo")
COLUMNS = ("subject", "video", "onset", "apex", "offset", "aus", "emotion", "type")
BLINK_COLUMNS = ("subject", "video", "onset", "offset")
WIDTH, HEIGHT = 640, 480
FACE_SIZE = 224  # the painted face's side: SynthME's clip size, so its AU amplitudes are the clips' ones
MIN_FPS = 10.0  # below this a 0.2 s micro-expression has too few frames for onset < apex < offset
MICRO_MAX = 0.5  # seconds: MEGC's micro/macro boundary
MICRO_SHARE = 0.5
MACRO_PEAK = (1.8, 2.6)  # x the micro unit; micro peaks are 0.7-1.0, so macro moves 2-3x as far
MACRO_SECONDS = (0.6, 4.0)
GAP_SECONDS = (1.5, 8.5)  # neutral time between events: with the events, one per ~5-8 s
BLINK_SECONDS, BLINK_EVERY = (0.1, 0.3), (2.0, 6.0)
MARGIN = 0.3  # seconds kept free of blinks and lighting around each event: a clean ground truth
# Extra AUs a macro-expression may add: a full prototype shows where a micro-expression shows a fragment
MACRO_EXTRA = {"happiness": ("25",), "surprise": ("5", "25"), "fear": ("25",), "disgust": ("25",)}


@dataclass(frozen=True)
class Event:
    """One annotated expression, frames as 0-based indices (onset and offset are its neutral ends)."""

    kind: str  # "micro" or "macro"
    emotion: str
    aus: tuple[AU, ...]
    onset: int
    apex: int
    offset: int
    peak: float  # intensity at apex, in micro units (synth.py's k)


@dataclass(frozen=True)
class Lighting:
    """A gain ramp: frames after `offset` are brighter (delta > 0) or darker, more so on one side."""

    onset: int
    offset: int
    delta: float
    from_left: bool


@dataclass(frozen=True)
class VideoPlan:
    subject: str
    video: str
    fps: float
    n_frames: int
    events: tuple[Event, ...]
    blinks: tuple[tuple[int, int], ...]  # (onset, offset) 0-based, lids shut midway
    lighting: Lighting | None


# ---------------------------------------------------------------------------------------------- planning


def _micro(rng: np.random.Generator, subject: str, video: str, fps: float, start: int) -> Event:
    """synth.py's clip plan, moved to `start`; capped so that even onset..offset *inclusive* is <= 0.5 s."""
    clip = plan_clip(rng, subject, video, fps)
    lab = clip.label
    span = min(lab.offset - lab.onset, int(MICRO_MAX * fps) - 1)
    rise = min(lab.apex - lab.onset, span - 1)
    return Event("micro", lab.emotion, lab.aus, start, start + rise, start + span, clip.peak)


def _macro_expression(rng: np.random.Generator) -> tuple[str, tuple[AU, ...]]:
    """An emotion's recipe joined with a second recipe of it and maybe a prototype's extra AUs."""
    emotion, aus = choose_expression(rng)
    recipes = EMOTION_RULES[emotion]
    codes = list(recipes[int(rng.integers(len(recipes)))])
    codes += [c for c in MACRO_EXTRA.get(emotion, ()) if rng.random() < 0.5]
    side = next((a.side for a in aus if a.side), None)  # a unilateral expression stays on its side
    for code in codes:
        num = int(code.lstrip("S"))
        if num not in {a.number for a in aus}:
            aus.append(AU(num, side))
    return emotion, tuple(aus)


def _macro(rng: np.random.Generator, fps: float, start: int) -> Event:
    emotion, aus = _macro_expression(rng)
    lo, hi = MACRO_SECONDS
    seconds = math.exp(rng.uniform(math.log(lo), math.log(hi)))  # log-uniform: most macros are short
    span = max(int(MICRO_MAX * fps) + 2, round(seconds * fps))
    rise = max(1, int(span * rng.uniform(0.3, 0.6)))
    return Event("macro", emotion, aus, start, start + rise, start + span, float(rng.uniform(*MACRO_PEAK)))


def _place_events(rng: np.random.Generator, subject: str, video: str, n: int, fps: float) -> list[Event]:
    events: list[Event] = []
    start = rng.uniform(1.0, 4.0) * fps
    while True:
        if rng.random() < MICRO_SHARE:
            ev = _micro(rng, subject, video, fps, int(start))
        else:
            ev = _macro(rng, fps, int(start))
        if ev.offset > n - 1 - fps:  # keep a neutral second at the end
            return events
        events.append(ev)
        start = ev.offset + rng.uniform(*GAP_SECONDS) * fps


def _clash(on: int, off: int, events: list[Event], margin: int) -> Event | None:
    return next((e for e in events if on <= e.offset + margin and off >= e.onset - margin), None)


def _place_blinks(rng: np.random.Generator, n: int, fps: float, events: list[Event]) -> list[tuple[int, int]]:
    """Blinks every few seconds, kept clear of the events so that every blink is a pure distractor."""
    blinks, margin = [], round(MARGIN * fps)
    start = int(rng.uniform(0.3, 3.0) * fps)
    while True:
        span = max(3, round(rng.uniform(*BLINK_SECONDS) * fps))
        while (ev := _clash(start, start + span, events, margin)) is not None:
            start = ev.offset + margin + 1
        if start + span > n - 1:
            return blinks
        blinks.append((start, start + span))
        start = start + span + int(rng.uniform(*BLINK_EVERY) * fps)


def _place_lighting(rng: np.random.Generator, n: int, fps: float, events: list[Event]) -> Lighting | None:
    """One gain ramp of ~1 s in a neutral stretch (none if the video has no stretch long enough)."""
    span, margin = round(rng.uniform(0.8, 1.2) * fps), round(MARGIN * fps)
    edges = [round(0.5 * fps)] + [x for e in events for x in (e.onset - margin, e.offset + margin)]
    edges.append(n - 1 - round(0.5 * fps))
    gaps = [(a, b) for a, b in zip(edges[::2], edges[1::2], strict=True) if b - a >= span]
    delta = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 0.2))
    from_left = bool(rng.random() < 0.5)
    if not gaps:
        return None
    a, b = gaps[int(rng.integers(len(gaps)))]
    on = int(rng.integers(a, b - span + 1))
    return Lighting(on, on + span, delta, from_left)


def plan_video(rng: np.random.Generator, subject: str, video: str, seconds: float, fps: float) -> VideoPlan:
    """Events, blinks and the lighting change of one long video (no pixels)."""
    n = max(1, round(seconds * fps))
    events = _place_events(rng, subject, video, n, fps)
    blinks = _place_blinks(rng, n, fps, events)
    lighting = _place_lighting(rng, n, fps, events)
    return VideoPlan(subject, video, fps, n, tuple(events), tuple(blinks), lighting)


@dataclass(frozen=True)
class Timeline:
    """Per frame: which event (-1 none) at what intensity, how shut the lids are, the lighting ramp."""

    event: np.ndarray
    k: np.ndarray
    blink: np.ndarray
    light: np.ndarray

    @classmethod
    def of(cls, plan: VideoPlan) -> Timeline:
        n = plan.n_frames
        event, k = np.full(n, -1, np.int32), np.zeros(n)
        blink, light = np.zeros(n), np.zeros(n)
        for i, e in enumerate(plan.events):
            event[e.onset : e.offset + 1] = i
            k[e.onset : e.offset + 1] = [
                e.peak * intensity(t, e.onset, e.apex, e.offset) for t in range(e.onset, e.offset + 1)
            ]
        for on, off in plan.blinks:
            apex = on + max(1, round(0.4 * (off - on)))  # lids close faster than they reopen
            blink[on : off + 1] = [intensity(t, on, apex, off) for t in range(on, off + 1)]
        if plan.lighting:
            on, off = plan.lighting.onset, plan.lighting.offset
            x = np.clip((np.arange(n) - on) / max(1, off - on), 0, 1)
            light = x * x * (3 - 2 * x)  # smoothstep: a camera's gain or a cloud, not a switch
        return cls(event, k, blink, light)


# ---------------------------------------------------------------------------------------------- faces


class Scene(Protocol):
    """A subject's neutral frame and how it changes with an expression or a blink."""

    canvas: np.ndarray  # BGR, HEIGHT x WIDTH, the neutral frame
    head: tuple[float, float, float, float]  # head ellipse: cx, cy, rx, ry (what moves rigidly)
    face_box: tuple[int, int, int, int]
    noise: float

    def render(self, aus: tuple[AU, ...], k: float, blink: float) -> np.ndarray: ...


def _background(rng: np.random.Generator) -> np.ndarray:
    """A static, lightly textured wall: smooth colour gradients plus fine grain the codec must keep."""
    low = cv2.resize(rng.uniform(70, 160, (6, 8, 3)).astype(np.float32), (WIDTH, HEIGHT), cv2.INTER_CUBIC)
    grain = cv2.GaussianBlur(rng.normal(0, 6, (HEIGHT, WIDTH, 3)).astype(np.float32), (0, 0), 1.5)
    return np.clip(low + grain, 0, 255).astype(np.uint8)


class PaintedScene:
    """synth.py's painted face composited onto a background; FacePainter draws AUs and blinks."""

    def __init__(self, ident: Identity, rng: np.random.Generator):
        self.painter, self.ident, self.noise = FacePainter(ident, FACE_SIZE), ident, ident.noise
        bg = _background(rng)
        x0 = int(WIDTH / 2 - FACE_SIZE / 2 + rng.uniform(-60, 60))
        y0 = int(HEIGHT / 2 - FACE_SIZE / 2 + rng.uniform(-25, 25))
        self.box = (x0, y0, x0 + FACE_SIZE, y0 + FACE_SIZE)
        mask = np.zeros((FACE_SIZE, FACE_SIZE), np.uint8)
        f = FACE_SIZE * 16  # the painter's fixed-point geometry (4 bits), so the mask fits its ellipse
        centre = (round(ident.cx * f), round(ident.cy * f))
        cv2.ellipse(
            mask, centre, (int(ident.face_w * f), int(ident.face_h * f)), 0, 0, 360, 255, -1, cv2.LINE_AA, 4
        )
        self.alpha = (mask.astype(np.float32) / 255)[..., None]
        self.bg = bg
        self.canvas = self._compose(self.painter.draw([], 0.0))
        cx, cy = x0 + ident.cx * FACE_SIZE, y0 + ident.cy * FACE_SIZE
        rx, ry = ident.face_w * FACE_SIZE, ident.face_h * FACE_SIZE
        self.head = (cx, cy, 1.05 * rx, 1.05 * ry)
        self.face_box = (int(cx - rx), int(cy - ry), int(cx + rx), int(cy + ry))

    def _compose(self, face: np.ndarray) -> np.ndarray:
        out = self.bg.copy()
        x0, y0, x1, y1 = self.box
        roi = out[y0:y1, x0:x1].astype(np.float32)
        out[y0:y1, x0:x1] = (face * self.alpha + roi * (1 - self.alpha)).astype(np.uint8)
        return out

    def render(self, aus: tuple[AU, ...], k: float, blink: float) -> np.ndarray:
        if k == 0 and blink == 0:
            return self.canvas
        return self._compose(self.painter.draw(list(aus), k, blink))


# 68-point (iBUG) groups the photo's AUs move. Sided groups give indices per *image* side (-1 image left =
# the subject's right, +1 = the subject's left, as synth.py's `_act`); "cheek" and "dimple" are points
# derived from the 68 (below the eye, beside the lip corner).
SIDED = {
    "brow_inner": {-1: (20, 21), 1: (22, 23)},
    "brow_mid": {-1: (19,), 1: (24,)},
    "brow_outer": {-1: (17, 18), 1: (25, 26)},
    "lid_upper": {-1: (37, 38), 1: (43, 44)},
    "lid_lower": {-1: (40, 41), 1: (46, 47)},
    "nostril": {-1: (31, 32), 1: (34, 35)},
    "corner": {-1: (48, 60), 1: (54, 64)},
    "corner_near": {-1: (49, 59), 1: (53, 55)},
    "cheek": {-1: (), 1: ()},
    "dimple": {-1: (), 1: ()},
}
CENTRAL = {
    "bridge": (28, 29),
    "nose_tip": (30, 33),
    "lip_upper": (50, 51, 52, 61, 62, 63),
    "lip_lower": (56, 57, 58, 65, 66, 67),
    "chin": (7, 8, 9),
}
# AU -> (group, dx outward from the midline, dy down, in micro units A; bump sigma in eye distances u).
# Directions and ratios follow synth.py's FacePainter, so both identities show an AU alike.
PHOTO_MOVES: dict[int, tuple[tuple[str, float, float, float], ...]] = {
    1: (("brow_inner", 0, -1.0, 0.25), ("brow_mid", 0, -0.5, 0.25)),
    2: (("brow_outer", 0, -1.0, 0.25), ("brow_mid", 0, -0.5, 0.25)),
    4: (("brow_inner", -0.3, 0.8, 0.25), ("brow_mid", 0, 0.4, 0.25)),
    5: (("lid_upper", 0, -0.5, 0.08),),
    6: (("lid_lower", 0, -0.3, 0.08), ("cheek", 0, -0.6, 0.3)),
    7: (("lid_upper", 0, 0.3, 0.08), ("lid_lower", 0, -0.5, 0.08)),
    9: (("nostril", 0, -0.4, 0.15), ("nose_tip", 0, -0.3, 0.15), ("brow_inner", 0, 0.3, 0.2)),
    10: (("lip_upper", 0, -1.0, 0.18), ("nostril", 0, -0.4, 0.15)),
    12: (("corner", 0.5, -1.0, 0.2), ("corner_near", 0.25, -0.5, 0.2), ("cheek", 0, -0.3, 0.3)),
    14: (("corner", -0.7, 0, 0.15),),
    15: (("corner", 0, 0.8, 0.2), ("corner_near", 0, 0.4, 0.2)),
    17: (("chin", 0, -0.5, 0.3), ("lip_lower", 0, -0.4, 0.2)),
    20: (("corner", 0.8, 0.1, 0.2), ("corner_near", 0.4, 0, 0.2)),
    23: (("lip_upper", 0, 0.3, 0.12), ("lip_lower", 0, -0.3, 0.12), ("corner", -0.2, 0, 0.15)),
    24: (("lip_upper", 0, 0.6, 0.15), ("lip_lower", 0, -0.6, 0.15)),
    25: (("lip_lower", 0, 0.5, 0.18),),
    26: (("lip_lower", 0, 0.9, 0.25), ("chin", 0, 0.8, 0.35)),
}
# AU -> (group, darkening at k = 1, sigma x, sigma y in u): what a warp of a still photo cannot show
# (creases over the bridge, the dimple's hollow)
PHOTO_SHADES: dict[int, tuple[tuple[str, float, float, float], ...]] = {
    9: (("bridge", 0.1, 0.12, 0.04),),
    14: (("dimple", 0.12, 0.05, 0.07),),
}
OPENING = (25, 26)  # lips part: the mouth darkens where the warp stretches it open
OPENING_DARK = 1.5  # darkening per unit of vertical stretch
# micro unit A as a share of the eye distance: ~4 px on the photo's ~58 px eye distance; measured over 10
# planned minutes, a micro apex moves the face at most 1.4-4.1 px (median 3.4), a macro one 5.6-11 (8.5)
PHOTO_AMPLITUDE = 0.07
EYES = {-1: (36, 37, 38, 39, 40, 41), 1: (42, 43, 44, 45, 46, 47)}


@functools.cache
def _dlib() -> tuple[Any, Any]:
    """dlib's frontal detector and 68-point shape predictor, loaded once per process."""
    try:
        import dlib
    except ImportError as e:
        raise MissingDependency(
            "dlib — not installed: pip install dlib-bin (the photo identity needs it)"
        ) from e
    # importing face_recognition_models needs pkg_resources; only its folder is wanted, so find it unimported
    spec = importlib.util.find_spec("face_recognition_models")
    folders = spec.submodule_search_locations if spec else None
    path = Path(folders[0]) / "models" / "shape_predictor_68_face_landmarks.dat" if folders else None
    if path is None or not path.is_file():
        raise MissingDependency(
            "face_recognition_models — not installed: pip install face_recognition_models (68-point model)"
        )
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(path))


def face_landmarks(bgr: np.ndarray) -> np.ndarray:
    """The 68 landmarks (x, y) of the largest face dlib finds in a BGR frame."""
    detector, predictor = _dlib()
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    faces = detector(rgb, 1)
    if not faces:
        raise RuntimeError("SynthME-long — dlib finds no face on the photo canvas")  # a bug, not user input
    shape = predictor(rgb, max(faces, key=lambda r: r.area()))
    return np.array([(shape.part(i).x, shape.part(i).y) for i in range(68)], np.float32)


@functools.cache
def _astronaut() -> np.ndarray:
    try:
        from skimage import data
    except ImportError as e:
        raise MissingDependency("scikit-image — not installed: pip install scikit-image (the photo)") from e
    return np.ascontiguousarray(data.astronaut()[..., ::-1])  # RGB -> BGR


@dataclass(frozen=True)
class PhotoLook:
    """How one subject sees the one photo: mirrored or not, scale, crop offset, colour tint, noise."""

    mirror: bool
    scale: float
    x0: int
    y0: int
    tint: tuple[float, float, float]
    noise: float


def make_look(rng: np.random.Generator) -> PhotoLook:
    # scale >= 1.25: the face is then ~115 px wide, which dlib still finds at a 320-px detection width
    scale = float(rng.uniform(1.25, 1.4))
    side = int(512 * scale)
    mirror, x0, y0 = (
        bool(rng.random() < 0.5),
        int(rng.integers(0, side - WIDTH + 1)),
        int(rng.integers(0, 41)),
    )
    b, g, r = (float(x) for x in rng.uniform(0.92, 1.08, 3))
    return PhotoLook(mirror, scale, x0, y0, (b, g, r), float(rng.uniform(1.0, 3.0)))


def photo_canvas(look: PhotoLook) -> np.ndarray:
    img = _astronaut()[:, ::-1] if look.mirror else _astronaut()
    side = int(512 * look.scale)
    img = cv2.resize(img, (side, side), interpolation=cv2.INTER_CUBIC)
    crop = img[look.y0 : look.y0 + HEIGHT, look.x0 : look.x0 + WIDTH].astype(np.float32)
    return np.clip(crop * np.float32(look.tint), 0, 255).astype(np.uint8)


def _points(lm: np.ndarray, u: float, group: str, side: int) -> np.ndarray:
    if group == "cheek":
        return lm[list(EYES[side])].mean(0)[None] + np.float32([0, 0.55 * u])
    if group == "dimple":
        return lm[SIDED["corner"][side][0]][None] + np.float32([side * 0.1 * u, 0])
    return lm[list(SIDED[group][side] if group in SIDED else CENTRAL[group])]


def _targets(
    au: AU, table: dict, lm: np.ndarray, u: float, outward: bool
) -> Iterator[tuple[np.ndarray, float, float, float]]:
    """(points, a, b, c) per entry of `table` for this AU: sided groups on the AU's side(s) only; with
    `outward`, `a` is a dx away from the midline and turns with the side."""
    sides = (-1, 1) if au.side is None else ((1,) if au.side == "L" else (-1,))
    for group, a, b, sigma in table.get(au.number, ()):
        if group in SIDED:
            for s in sides:
                yield _points(lm, u, group, s), s * a if outward else a, b, sigma
        else:  # a midline point moves half as far for a one-sided AU (synth.py's `_centre`)
            half = 1.0 if au.side is None else 0.5
            yield _points(lm, u, group, 0), a * half, b * half, sigma


def au_field(aus: tuple[AU, ...], lm: np.ndarray, u: float, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Displacement (2, h, w) in px at k = 1 over the grid.

    The AUs' moves are first added per point (as FacePainter adds its AU terms per feature: 1 + 2 raise the
    whole brow by A, 1 + 4 leave the inner brow at -0.2 A), then spread by Gaussian bumps normalised by
    their summed weight, so that neighbouring points moving alike do not add up."""
    moves: dict[tuple[float, float], list[float]] = {}  # point -> [dx, dy, sigma]
    for au in aus:
        for pts, dx, dy, sigma in _targets(au, PHOTO_MOVES, lm, u, outward=True):
            for x, y in pts:
                m = moves.setdefault((float(x), float(y)), [0.0, 0.0, 0.0])
                m[0], m[1], m[2] = m[0] + dx, m[1] + dy, max(m[2], sigma)
    amp = PHOTO_AMPLITUDE * u
    acc, wsum = np.zeros((2, *gx.shape), np.float32), np.zeros(gx.shape, np.float32)
    for (x, y), (dx, dy, sigma) in moves.items():
        w = np.exp(-((gx - x) ** 2 + (gy - y) ** 2) / (2 * (sigma * u) ** 2))
        acc[0] += w * (dx * amp)
        acc[1] += w * (dy * amp)
        wsum += w
    return acc / np.maximum(1.0, wsum)


def au_shade(
    aus: tuple[AU, ...], lm: np.ndarray, u: float, gx: np.ndarray, gy: np.ndarray, disp: np.ndarray
) -> np.ndarray:
    """Darkening (h, w) at k = 1: negative where creases, dimples or parted lips darken the skin.

    Parted lips are dark where `disp` (the AU field) stretches the mouth vertically; that is linear in
    the field, so it scales with k like the rest."""
    shade = np.zeros(gx.shape, np.float32)
    if any(a.number in OPENING for a in aus):
        mx, my = lm[60:68].mean(0)
        mouth = np.exp(-(((gx - mx) / (0.35 * u)) ** 2 + ((gy - my) / (0.12 * u)) ** 2) / 2)
        shade -= OPENING_DARK * mouth * np.maximum(0, np.gradient(disp[1], axis=0))
    for au in aus:
        for pts, strength, sx, sy in _targets(au, PHOTO_SHADES, lm, u, outward=False):
            for x, y in pts:
                shade -= strength * np.exp(-(((gx - x) / (sx * u)) ** 2 + ((gy - y) / (sy * u)) ** 2) / 2)
    return shade


class PhotoScene:
    """The photo with AU warps: per event one precomputed field over the face box, scaled per frame."""

    def __init__(self, look: PhotoLook):
        self.canvas, self.noise = photo_canvas(look), look.noise
        self.lm = lm = face_landmarks(self.canvas)
        self.u = float(np.linalg.norm(lm[42:48].mean(0) - lm[36:42].mean(0)))  # eye distance, px
        (x0, y0), (x1, y1) = lm.min(0) - self.u, lm.max(0) + self.u  # bumps reach ~3 sigma <= 1 u
        x0, y0, x1, y1 = max(0, int(x0)), max(0, int(y0)), min(WIDTH, int(x1) + 1), min(HEIGHT, int(y1) + 1)
        self.roi = (x0, y0, x1, y1)
        self.gx, self.gy = np.meshgrid(
            np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32)
        )
        cx, cy = lm[:27].mean(0)
        self.head = (float(cx), float(cy - 0.3 * self.u), 1.5 * self.u, 1.9 * self.u)  # face + hair
        (bx0, by0), (bx1, by1) = lm.min(0), lm.max(0)
        self.face_box = (int(bx0), int(by0), int(bx1) + 1, int(by1) + 1)
        self._fields: dict[tuple[AU, ...], tuple[np.ndarray, np.ndarray]] = {}

    def field(self, aus: tuple[AU, ...]) -> tuple[np.ndarray, np.ndarray]:
        """(displacement, shade) at k = 1 for this AU set, computed once per set."""
        if aus not in self._fields:
            args = (aus, self.lm, self.u, self.gx, self.gy)
            disp = au_field(*args)
            self._fields[aus] = (disp, au_shade(*args, disp))
        return self._fields[aus]

    def render(self, aus: tuple[AU, ...], k: float, blink: float) -> np.ndarray:
        if k == 0 and blink == 0:
            return self.canvas
        img = self.canvas.copy()
        if k and aus:
            disp, shade = self.field(aus)
            x0, y0, x1, y1 = self.roi
            # backward map: the pixel that moves by d to x comes from x - d (fields are smooth and small)
            part = cv2.remap(self.canvas, self.gx - k * disp[0], self.gy - k * disp[1], cv2.INTER_LINEAR)
            gain = np.maximum(0.2, 1 + k * shade)[..., None]
            img[y0:y1, x0:x1] = np.clip(part * gain, 0, 255).astype(np.uint8)
        if blink:
            for side in (-1, 1):
                self._blink(img, side, blink)
        return img

    def _blink(self, img: np.ndarray, side: int, b: float) -> None:
        """Slide the upper lid's skin down over a fraction `b` of the eye; the lower lid stays put."""
        i = EYES[side]  # corner, upper, upper, corner, lower, lower (clockwise)
        upper, lower = self.lm[[i[0], i[1], i[2], i[3]]], self.lm[[i[0], i[5], i[4], i[3]]]
        lid = 0.18 * self.u  # skin between the lid line and the brow that stretches over the eye
        x0, x1 = int(upper[:, 0].min()), int(upper[:, 0].max()) + 2
        y0, y1 = int(upper[:, 1].min() - lid) - 1, int(lower[:, 1].max()) + 2
        gx, gy = np.meshgrid(np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32))
        yu = np.interp(gx[0], upper[:, 0], upper[:, 1]).astype(np.float32)
        yl = np.interp(gx[0], lower[:, 0], lower[:, 1]).astype(np.float32)
        top, edge = yu - lid, yu + b * (yl - yu)
        stretch = (yu - top) / np.maximum(edge - top, 1e-3)
        src = np.where((gy >= top) & (gy < edge), top + (gy - top) * stretch, gy).astype(np.float32)
        img[y0:y1, x0:x1] = cv2.remap(img, gx, src, cv2.INTER_LINEAR)


def make_scene(identity: str, seed: int, subject: int) -> Scene:
    """Subject `subject`'s face: the same identity stream as synth.py's (seed, subject)."""
    rng = np.random.default_rng([seed, subject])
    if identity == "photo":
        return PhotoScene(make_look(rng))
    return PaintedScene(make_identity(rng), np.random.default_rng([seed, subject, 1]))


# ---------------------------------------------------------------------------------------------- camera


class HeadMotion:
    """Slow drift and roll: three slow sinusoids per axis, so the motion is the same in seconds at any fps."""

    def __init__(self, rng: np.random.Generator, shift: float = 4.0, roll: float = 2.0):
        self.terms = []
        for amp in (shift, 0.75 * shift, roll):  # x px, y px, degrees; the weights sum to <= amp
            weights = rng.dirichlet(np.ones(3)) * amp * rng.uniform(0.6, 1.0)
            self.terms.append((weights, rng.uniform(0.02, 0.12, 3), rng.uniform(0, 2 * math.pi, 3)))

    def at(self, seconds: np.ndarray) -> np.ndarray:
        """(n, 3): dx, dy (px) and roll (degrees) at each time."""
        return np.stack(
            [
                (w[:, None] * np.sin(2 * math.pi * f[:, None] * seconds + p[:, None])).sum(0)
                for w, f, p in self.terms
            ],
            axis=1,
        )


class HeadWarp:
    """Moves the head (a soft ellipse) rigidly while the background stays; the neck region stretches."""

    OUTER = 1.5  # the weight falls from 1 at the ellipse to 0 at this multiple of it

    def __init__(self, head: tuple[float, float, float, float]):
        cx, cy, rx, ry = head
        x0, x1 = max(0, int(cx - self.OUTER * rx)), min(WIDTH, int(cx + self.OUTER * rx) + 1)
        y0, y1 = max(0, int(cy - self.OUTER * ry)), min(HEIGHT, int(cy + self.OUTER * ry) + 1)
        self.box = (x0, y0, x1, y1)
        self.gx, self.gy = np.meshgrid(
            np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32)
        )
        r = np.sqrt(((self.gx - cx) / rx) ** 2 + ((self.gy - cy) / ry) ** 2)
        t = np.clip((self.OUTER - r) / (self.OUTER - 1), 0, 1)
        self.w = (t * t * (3 - 2 * t)).astype(np.float32)
        self.wx, self.wy = self.w * (self.gx - cx), self.w * (self.gy - cy)

    def apply(self, img: np.ndarray, dx: float, dy: float, degrees: float) -> np.ndarray:
        c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
        # output x shows the head point R(-a)(x - centre - shift) + centre: a displacement linear in x
        bx, by = -(c * dx + s * dy), -(-s * dx + c * dy)
        mx = self.gx + (c - 1) * self.wx + s * self.wy + bx * self.w
        my = self.gy - s * self.wx + (c - 1) * self.wy + by * self.w
        out = img.copy()
        x0, y0, x1, y1 = self.box
        out[y0:y1, x0:x1] = cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return out


class Sensor:
    """The lighting ramp (a gain, stronger on one side) and sensor noise.

    Noise comes from a small bank of fields read at random offsets: drawing a fresh 640x480x3 normal field
    costs more than the rest of a frame, and a spotter cannot tell the difference."""

    BANK, PAD = 6, 16

    def __init__(self, rng: np.random.Generator, sigma: float, lighting: Lighting | None):
        shape = (self.BANK, HEIGHT + self.PAD, WIDTH + self.PAD, 3)
        self.bank = rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)
        self.gain = None
        if lighting:
            ramp = np.linspace(1.0, 0.0, WIDTH) if lighting.from_left else np.linspace(0.0, 1.0, WIDTH)
            self.gain = (lighting.delta * (0.6 + 0.4 * ramp)).astype(np.float32)[None, :, None]

    def apply(self, img: np.ndarray, light: float, rng: np.random.Generator) -> np.ndarray:
        out = img.astype(np.float32)
        if light and self.gain is not None:
            out *= 1 + np.float32(light) * self.gain
        i, oy, ox = rng.integers(self.BANK), rng.integers(self.PAD), rng.integers(self.PAD)
        out += self.bank[i, oy : oy + HEIGHT, ox : ox + WIDTH]
        return np.clip(out, 0, 255, out=out).astype(np.uint8)


def render_video(scene: Scene, plan: VideoPlan, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """The video's BGR frames, one at a time (a 60 s 200 fps video does not fit in memory as a list)."""
    tl = Timeline.of(plan)
    pose = HeadMotion(rng).at(np.arange(plan.n_frames) / plan.fps)
    warp, sensor = HeadWarp(scene.head), Sensor(rng, scene.noise, plan.lighting)
    for t in range(plan.n_frames):
        e = int(tl.event[t])
        aus = plan.events[e].aus if e >= 0 else ()
        img = scene.render(aus, float(tl.k[t]), float(tl.blink[t]))
        img = warp.apply(img, *(float(x) for x in pose[t]))  # Python floats keep the maps float32
        yield sensor.apply(img, float(tl.light[t]), rng)


# ---------------------------------------------------------------------------------------------- files


def _counted(frames: Iterator[np.ndarray], bar: tqdm) -> Iterator[np.ndarray]:
    for f in frames:
        yield f
        bar.update()


def _write_mp4(path: Path, frames: Iterator[np.ndarray], fps: float, bar: tqdm) -> None:
    """mp4v at the video's own fps, written under a temporary name and renamed when complete."""
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # the suffix picks the container
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_mp4(tmp, _counted(frames, bar), fps)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def _write_folder(folder: Path, frames: Iterator[np.ndarray], bar: tqdm) -> None:
    with atomic_dir(folder) as tmp:
        for t, f in enumerate(frames, start=1):
            if not cv2.imwrite(str(tmp / f"img{t}.jpg"), f, [cv2.IMWRITE_JPEG_QUALITY, 95]):
                raise InputError(f"{folder} — cannot write img{t}.jpg")
            bar.update()


def _csv(rows: list[dict], columns: tuple[str, ...]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _event_rows(plan: VideoPlan, base: int) -> list[dict]:
    return [
        {
            "subject": plan.subject,
            "video": plan.video,
            "onset": e.onset + base,
            "apex": e.apex + base,
            "offset": e.offset + base,
            "aus": "+".join(a.code() for a in e.aus),  # as synth.py's `_annotation` writes them
            "emotion": e.emotion,
            "type": e.kind,
        }
        for e in plan.events
    ]


def _blink_rows(plan: VideoPlan, base: int) -> list[dict]:
    return [
        {"subject": plan.subject, "video": plan.video, "onset": on + base, "offset": off + base}
        for on, off in plan.blinks
    ]


def _entry(plan: VideoPlan, scene: Scene, identity: str, split: str, path: str, base: int) -> dict:
    light = plan.lighting
    kinds = [e.kind for e in plan.events]
    return {
        "subject": plan.subject,
        "video": plan.video,
        "path": path,
        "fps": plan.fps,
        "frames": plan.n_frames,
        "first_frame": base,
        "width": WIDTH,
        "height": HEIGHT,
        "identity": identity,
        "split": split,
        "micro": kinds.count("micro"),
        "macro": kinds.count("macro"),
        "blinks": len(plan.blinks),
        "lighting": None
        if light is None
        else {"onset": light.onset + base, "offset": light.offset + base, "gain": round(1 + light.delta, 4)},
        "face_box": [int(x) for x in scene.face_box],
    }


def _check(
    subjects: int, videos_per_subject: int, seconds: float, fps: float, identity: str, tf: float
) -> None:
    if identity not in IDENTITIES:
        raise InputError(f"data synth --identity {identity!r} — choose one of {', '.join(IDENTITIES)}")
    if subjects < 1 or videos_per_subject < 1 or not seconds > 0 or not fps >= MIN_FPS or not 0 <= tf < 1:
        raise InputError(
            f"data synth --long — subjects={subjects}, videos_per_subject={videos_per_subject}, "
            f"seconds={seconds}, fps={fps}, test_fraction={tf}: need at least 1 subject and 1 video, "
            f"seconds > 0, fps >= {MIN_FPS:g} (a 0.2 s micro-expression needs a few frames) and "
            "0 <= test_fraction < 1"
        )


@dataclass
class _Sheets:
    events: list[dict] = field(default_factory=list)
    blinks: list[dict] = field(default_factory=list)
    videos: list[dict] = field(default_factory=list)


def synthesize_long(
    out: str | Path,
    subjects: int = 4,
    videos_per_subject: int = 2,
    seconds: float = 60.0,
    fps: float = 30.0,
    identity: str = "photo",
    seed: int = 0,
    test_fraction: float = 0.25,
    frames: bool = False,
) -> Path:
    """Write SynthME-long videos and their sheets to `out`; returns `out`.

    Args:
        out: output folder (see the module docstring for its layout).
        subjects: identities; the last `test_fraction` of them form the test split.
        videos_per_subject: long videos per identity.
        seconds: length of each video.
        fps: frame rate (30 like CAS(ME)^3, 200 like SAMM); the events' timing is in seconds.
        identity: "photo" (the astronaut photo, AU-driven warps) or "procedural" (synth.py's painted face).
        seed: same arguments -> identical annotation files.
        test_fraction: share of subjects held out.
        frames: write frame folders `frames/<video>/img<N>.jpg` (N from 1) instead of mp4 files.
    """
    _check(subjects, videos_per_subject, seconds, fps, identity, test_fraction)
    out, base = Path(out), 1 if frames else 0
    test = _test_subjects(subjects, test_fraction)
    jobs = [(j, v) for j in range(subjects) for v in range(videos_per_subject)]
    plans = [
        plan_video(
            np.random.default_rng([seed, j, v]), f"s{j + 1:02d}", f"s{j + 1:02d}_v{v + 1:02d}", seconds, fps
        )
        for j, v in jobs
    ]
    sheets, scene, scene_of = _Sheets(), None, -1
    with tqdm(total=sum(p.n_frames for p in plans), desc="SynthME long videos", unit="frame") as bar:
        for (j, v), plan in zip(jobs, plans, strict=True):
            if scene_of != j:  # one subject's face at a time: a scene holds its fields and canvas
                scene, scene_of = make_scene(identity, seed, j), j
            stream = render_video(scene, plan, np.random.default_rng([seed, j, v, 1]))
            rel = f"frames/{plan.video}" if frames else f"videos/{plan.video}.mp4"
            if frames:
                _write_folder(out / rel, stream, bar)
            else:
                _write_mp4(out / rel, stream, fps, bar)
            split = "test" if plan.subject in test else "train"
            sheets.events += _event_rows(plan, base)
            sheets.blinks += _blink_rows(plan, base)
            sheets.videos.append(_entry(plan, scene, identity, split, rel, base))
    atomic_write(out / "annotations.csv", _csv(sheets.events, COLUMNS))
    for part in ("train", "test"):  # the same sheet split by subject: tune on one, score on the other
        names = {v["video"] for v in sheets.videos if v["split"] == part}
        atomic_write(
            out / f"annotations_{part}.csv", _csv([e for e in sheets.events if e["video"] in names], COLUMNS)
        )
    atomic_write(out / "blinks.csv", _csv(sheets.blinks, BLINK_COLUMNS))
    atomic_write(out / "videos.json", json.dumps({"videos": sheets.videos}, indent=1) + "\n")
    return out
