"""SynthME: procedural face clips that behave like micro-expressions.

The licensed datasets never reach us, so tests, the demo and benchmarks use these. Each subject has an
identity (face shape, feature positions, skin tone, head-pose jitter, sensor noise); each clip is
neutral, then an AU-driven movement onset -> apex -> offset lasting 0.2-0.5 s at low intensity (a few
pixels, as real micro-expressions), then neutral again. Emotions come from AU combinations by
FACS/EMFACS-style rules. Side convention: L/R is the *subject's* side, which is the image's right/left.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from mevqa.data.megc import write_jsonl
from mevqa.data.qa import AU, ClipLabel, build_rows
from mevqa.errors import InputError
from mevqa.facs import EMOTION_RULES, FINE_TO_COARSE
from mevqa.io import atomic_write, write_mp4

# Full AU displacement at apex as a fraction of the frame: ~3 px at 112 px, ~7 px at 224 px. Real
# micro-expressions move a few pixels; smaller than this and JPEG noise and head jitter drown them.
AMPLITUDE = 0.03
MODELLED_AUS = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 24, 25, 26)


@dataclass(frozen=True)
class Identity:
    cx: float
    cy: float
    face_w: float
    face_h: float
    skin: tuple[int, int, int]
    eye_dx: float
    eye_y: float
    brow_gap: float
    mouth_w: float
    mouth_y: float
    lip: float
    jitter: float
    noise: float


def make_identity(rng: np.random.Generator) -> Identity:
    tone = rng.uniform(0.35, 0.95)
    skin = (int(150 * tone + 40), int(170 * tone + 40), int(200 * tone + 45))  # BGR
    return Identity(
        cx=rng.uniform(0.48, 0.52),
        cy=rng.uniform(0.53, 0.57),
        face_w=rng.uniform(0.30, 0.36),
        face_h=rng.uniform(0.40, 0.45),
        skin=skin,
        eye_dx=rng.uniform(0.13, 0.17),
        eye_y=rng.uniform(0.43, 0.46),
        brow_gap=rng.uniform(0.06, 0.08),
        mouth_w=rng.uniform(0.09, 0.12),
        mouth_y=rng.uniform(0.71, 0.74),
        lip=rng.uniform(0.010, 0.016),
        jitter=rng.uniform(0.1, 0.3),
        noise=rng.uniform(1.0, 3.0),
    )


def _act(aus: list[AU], num: int, side: int) -> float:
    """Activation of AU `num` on image side `side` (-1 image left = subject's right, +1 = subject's left)."""
    for a in aus:
        if a.number == num:
            if a.side is None or (a.side == "L") == (side > 0):
                return 1.0
    return 0.0


def _centre(aus: list[AU], num: int) -> float:
    return max(_act(aus, num, -1), _act(aus, num, 1)) * (
        1.0 if all(a.side is None for a in aus if a.number == num) else 0.5
    )


class FacePainter:
    """Draws one identity's face with AU displacements at intensity `k` (0 neutral .. 1 apex)."""

    SHIFT = 4  # cv2 fixed-point bits: sub-pixel geometry, so low-intensity motion is still visible

    def __init__(self, ident: Identity, size: int):
        self.i, self.s = ident, size

    def _pt(self, x: float, y: float) -> tuple[int, int]:
        f = self.s * (1 << self.SHIFT)
        return int(round(x * f)), int(round(y * f))

    def _poly(self, img, pts, color, thick, closed=False, fill=False):
        arr = np.array([self._pt(*p) for p in pts], np.int32)
        if fill:
            cv2.fillPoly(img, [arr], color, cv2.LINE_AA, self.SHIFT)
        else:
            cv2.polylines(img, [arr], closed, color, max(1, int(thick * self.s)), cv2.LINE_AA, self.SHIFT)

    def draw(self, aus: list[AU], k: float, blink: float = 0.0) -> np.ndarray:
        """`k` may exceed 1 (macro-expressions); `blink` closes both upper lids (0 open .. 1 shut)."""
        i, s, A = self.i, self.s, AMPLITUDE * k
        img = np.full((s, s, 3), 60, np.uint8)
        cv2.ellipse(
            img,
            self._pt(i.cx, i.cy),
            (int(i.face_w * s * 16), int(i.face_h * s * 16)),
            0,
            0,
            360,
            i.skin,
            -1,
            cv2.LINE_AA,
            self.SHIFT,
        )
        dark = tuple(int(c * 0.35) for c in i.skin)
        for side in (-1, 1):
            self._brow(img, aus, side, A, dark)
            self._eye(img, aus, side, A, dark, blink)
        self._nose(img, aus, A, dark)
        self._mouth(img, aus, A)
        chin_y = i.cy + i.face_h * 0.78 - A * 0.5 * _centre(aus, 17) + A * 0.8 * _centre(aus, 26)
        self._poly(img, [(i.cx - 0.05, chin_y), (i.cx, chin_y + 0.012), (i.cx + 0.05, chin_y)], dark, 0.006)
        return img

    def _brow(self, img, aus, side, A, color):
        i = self.i
        y = i.eye_y - 0.075
        inner_dy = -A * _act(aus, 1, side) + 0.8 * A * _act(aus, 4, side)
        outer_dy = -A * _act(aus, 2, side)
        inner_dx = -0.3 * A * _act(aus, 4, side)
        pts = [
            (i.cx + side * (i.brow_gap + inner_dx), y + inner_dy),
            (i.cx + side * (i.eye_dx + 0.01), y - 0.015 + 0.5 * (inner_dy + outer_dy)),
            (i.cx + side * (i.eye_dx + 0.07), y + 0.005 + outer_dy),
        ]
        self._poly(img, pts, color, 0.014)

    def _eye(self, img, aus, side, A, color, blink=0.0):
        i = self.i
        ex, ey = i.cx + side * i.eye_dx, i.eye_y
        up = 0.022 + 0.5 * A * _act(aus, 5, side) - 0.3 * A * _act(aus, 7, side)
        low = 0.016 - 0.3 * A * _act(aus, 6, side) - 0.5 * A * _act(aus, 7, side)
        xs = np.linspace(-0.045, 0.045, 9)
        upper = [(ex + x, ey - up * math.sqrt(max(0.0, 1 - (x / 0.045) ** 2))) for x in xs]
        lower = [(ex + x, ey + low * math.sqrt(max(0.0, 1 - (x / 0.045) ** 2))) for x in xs[::-1]]
        self._poly(img, upper + lower, (245, 245, 245), 0, fill=True)
        cv2.circle(img, self._pt(ex, ey), int(0.012 * self.s * 16), (40, 30, 20), -1, cv2.LINE_AA, self.SHIFT)
        if blink > 0:  # the upper lid slides down over the eye: skin from the open lid line to its new edge
            lid = [(x, y + blink * (ly - y)) for (x, y), (_, ly) in zip(upper, lower[::-1], strict=True)]
            self._poly(img, upper + lid[::-1], i.skin, 0, fill=True)
            upper = lid
        self._poly(img, upper, color, 0.006)
        cheek_y = ey + 0.09 - 0.6 * A * _act(aus, 6, side)
        self._poly(
            img,
            [(ex - 0.04, cheek_y), (ex, cheek_y - 0.012), (ex + 0.04, cheek_y)],
            tuple(int(c * 0.8) for c in i.skin),
            0.006,
        )

    def _nose(self, img, aus, A, color):
        i = self.i
        lift = 0.4 * A * _centre(aus, 9) + 0.4 * A * _centre(aus, 10)
        tip = i.eye_y + 0.16 - lift
        self._poly(
            img, [(i.cx, i.eye_y + 0.02), (i.cx - 0.01, tip), (i.cx + 0.025, tip + 0.01)], color, 0.006
        )
        for side in (-1, 1):
            cv2.circle(
                img,
                self._pt(i.cx + side * 0.025, tip + 0.012),
                max(16, int(0.008 * self.s * 16)),
                color,
                -1,
                cv2.LINE_AA,
                self.SHIFT,
            )
        w9 = _centre(aus, 9)
        if w9:  # wrinkles across the bridge fade in with intensity
            shade = tuple(int(c * max(0.0, 1 - 0.3 * A / AMPLITUDE * w9)) for c in i.skin)
            for dy in (0.05, 0.07):
                self._poly(img, [(i.cx - 0.03, i.eye_y + dy), (i.cx + 0.03, i.eye_y + dy)], shade, 0.005)

    def _mouth(self, img, aus, A):
        i = self.i
        # max(0, ...): a macro-expression (k > 1) presses the lips to a line, never inside out
        press = max(_centre(aus, 23), _centre(aus, 24))
        my, lip = i.mouth_y, i.lip * max(0.0, 1 - 0.5 * A / AMPLITUDE * press)
        corners = []
        for side in (-1, 1):
            dx = (0.5 * _act(aus, 12, side) - 0.7 * _act(aus, 14, side) + 0.8 * _act(aus, 20, side)) * A
            dy = (-1.0 * _act(aus, 12, side) + 0.8 * _act(aus, 15, side)) * A
            corners.append((i.cx + side * (i.mouth_w + dx), my + dy))
            if _act(aus, 14, side):  # the dimple deepens (darkens) with intensity
                shade = tuple(int(c * max(0.0, 1 - 0.45 * A / AMPLITUDE)) for c in i.skin)
                cv2.circle(
                    img,
                    self._pt(corners[-1][0] + side * 0.018, corners[-1][1]),
                    max(16, int(0.012 * self.s * 16)),
                    shade,
                    -1,
                    cv2.LINE_AA,
                    self.SHIFT,
                )
        upper_y = my - 1.0 * A * _centre(aus, 10) + 0.6 * A * _centre(aus, 24)
        lower_y = (
            my
            + 0.5 * A * _centre(aus, 25)
            + 0.9 * A * _centre(aus, 26)
            - 0.4 * A * _centre(aus, 17)
            - 0.6 * A * _centre(aus, 24)
        )
        (lx, ly), (rx, ry) = corners
        upper = [(lx, ly), (i.cx, upper_y - lip), (rx, ry)]
        lower = [(rx, ry), (i.cx, lower_y + lip * 1.3), (lx, ly)]
        self._poly(img, [(lx, ly), (i.cx, upper_y), (rx, ry), (i.cx, lower_y)], (40, 30, 60), 0, fill=True)
        self._poly(img, upper + [(i.cx, upper_y)], (90, 80, 170), 0, fill=True)
        self._poly(img, lower + [(i.cx, lower_y)], (100, 90, 185), 0, fill=True)


def intensity(t: int, onset: int, apex: int, offset: int) -> float:
    """Smooth rise onset->apex (sin^2) and fall apex->offset; zero outside."""
    if t <= onset or t >= offset:
        return 0.0
    if t <= apex:
        return math.sin(0.5 * math.pi * (t - onset) / max(1, apex - onset)) ** 2
    return math.cos(0.5 * math.pi * (t - apex) / max(1, offset - apex)) ** 2


@dataclass(frozen=True)
class SynthClip:
    label: ClipLabel
    n_frames: int
    peak: float


def choose_expression(rng: np.random.Generator) -> tuple[str, list[AU]]:
    """An emotion and the AUs (with sides) of one of its recipes."""
    # Coarse classes are drawn evenly (then the fine emotion within it), so that a held-out split of a few
    # dozen clips has every coarse class; real sets are skewed to negative, which UF1/UAR then average out.
    coarse = str(rng.choice(["positive", "negative", "surprise"]))
    emotion = str(rng.choice([e for e in EMOTION_RULES if FINE_TO_COARSE[e] == coarse]))
    recipes = EMOTION_RULES[emotion]
    recipe = recipes[int(rng.integers(len(recipes)))]
    aus = []
    for code in recipe:
        side = None
        if code.startswith("S"):  # contempt is unilateral by definition
            code, side = code[1:], str(rng.choice(["L", "R"]))
        elif rng.random() < 0.15:
            side = str(rng.choice(["L", "R"]))
        aus.append(AU(int(code), side))
    return emotion, aus


def plan_clip(rng: np.random.Generator, subject: str, name: str, fps: float) -> SynthClip:
    """Choose emotion, AUs (with sides), timing and peak intensity for one clip."""
    emotion, aus = choose_expression(rng)
    dur = rng.uniform(0.2, 0.5)  # seconds, onset -> offset
    lead, tail = int(rng.uniform(0.08, 0.2) * fps), int(rng.uniform(0.08, 0.2) * fps)
    span = max(4, int(round(dur * fps)))
    # frame numbers as annotation sheets write them: the file number (img1.jpg is frame 1)
    onset, offset = lead + 1, lead + 1 + span
    apex = onset + max(1, int(span * rng.uniform(0.35, 0.6)))
    label = ClipLabel("synthme", subject, name, name, emotion, tuple(aus), onset, apex, offset)
    return SynthClip(label, offset + tail, float(rng.uniform(0.7, 1.0)))


def render_clip(ident: Identity, clip: SynthClip, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """BGR frames: painted face + slow head-pose drift + sensor noise."""
    painter = FacePainter(ident, size)
    lab, frames = clip.label, []
    pos = np.zeros(2)
    for t in range(clip.n_frames):
        k = clip.peak * intensity(t + 1, lab.onset, lab.apex, lab.offset)
        img = painter.draw(list(lab.aus), k)
        pos = 0.95 * pos + rng.normal(0, ident.jitter * 0.1, 2)  # small, slow drift (sub-pixel)
        m = np.float32([[1, 0, pos[0]], [0, 1, pos[1]]])
        img = cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        noisy = img.astype(np.float32) + rng.normal(0, ident.noise, img.shape)
        frames.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return frames


def _test_subjects(subjects: int, test_fraction: float) -> set[str]:
    """The last `test_fraction` of the subjects are held out (none when there is only one)."""
    n_test = max(1, round(subjects * test_fraction)) if subjects > 1 else 0
    return {f"s{j + 1:02d}" for j in range(subjects - n_test, subjects)}


def _annotation(lab: ClipLabel, name: str) -> dict:
    aus = "+".join(a.code() for a in lab.aus)
    return {
        "subject": lab.subject,
        "clip": name,
        "onset": lab.onset,
        "apex": lab.apex,
        "offset": lab.offset,
        "aus": aus,
        "emotion": lab.emotion,
    }


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def synthesize(
    out: str | Path,
    subjects: int = 4,
    clips_per_subject: int = 5,
    fps: float = 200.0,
    size: int = 224,
    seed: int = 0,
    video: bool = False,
    test_fraction: float = 0.25,
    v2: bool = False,
) -> Path:
    """Write a SynthME dataset to `out`; returns `out`. Same arguments -> identical files.

    `v2`: ME-VQA-v2 QA, an analysis question (mevqa's own answer wording, see `qa.build_rows`) in place
    of the combined one; the frames and annotations.csv are the same either way.
    """
    if subjects < 1 or clips_per_subject < 1 or size < 32 or fps <= 0 or not 0 <= test_fraction < 1:
        raise InputError(
            f"data synth — subjects={subjects}, clips_per_subject={clips_per_subject}, size={size}, "
            f"fps={fps}, test_fraction={test_fraction}: need at least 1 subject and 1 clip, size >= 32, "
            "fps > 0 and 0 <= test_fraction < 1"
        )
    out = Path(out)
    (out / "frames").mkdir(parents=True, exist_ok=True)
    test_subjects = _test_subjects(subjects, test_fraction)
    ann, train, test = [], [], []
    jobs = [(j, c) for j in range(subjects) for c in range(clips_per_subject)]
    idents = [make_identity(np.random.default_rng([seed, j])) for j in range(subjects)]
    for j, c in tqdm(jobs, desc="SynthME clips", unit="clip"):
        subject, name = f"s{j + 1:02d}", f"s{j + 1:02d}_c{c + 1:02d}"
        rng = np.random.default_rng([seed, j, c])
        clip = plan_clip(rng, subject, name, fps)
        frames = render_clip(idents[j], clip, size, rng)
        _write_frames(out / "frames" / name, frames)
        if video:
            _write_video(out / "videos" / f"{name}.mp4", frames, fps)
        ann.append(_annotation(clip.label, name))
        (test if subject in test_subjects else train).extend(build_rows(clip.label, seed, v2))
    atomic_write(out / "annotations.csv", _csv(ann))
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "test.jsonl", test)
    return out


def _write_frames(folder: Path, frames: list[np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for t, f in enumerate(frames, start=1):
        cv2.imwrite(str(folder / f"img{t}.jpg"), f, [cv2.IMWRITE_JPEG_QUALITY, 95])


def _write_video(path: Path, frames: list[np.ndarray], fps: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(path, frames, fps)
