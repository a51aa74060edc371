"""SynthME-long: sheets that follow the MEGC long-video rules, real mp4 files and frame folders, and a face
that moves where annotations.csv says and blinks where blinks.csv says."""

from __future__ import annotations

import csv
import json

import decord
import numpy as np
import pytest

from mevqa.cli import main
from mevqa.data.qa import parse_au_codes
from mevqa.data.synth_long import (
    BLINK_COLUMNS,
    COLUMNS,
    MACRO_EXTRA,
    face_landmarks,
    make_scene,
    plan_video,
    synthesize_long,
)
from mevqa.errors import InputError
from mevqa.facs import EMOTION_RULES

SHEETS = ("annotations.csv", "blinks.csv", "videos.json")


def table(path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        return list(r.fieldnames or []), list(r)


def videos(root) -> list[dict]:
    return json.loads((root / "videos.json").read_text())["videos"]


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """Two photo subjects (s02 held out), one 12 s video each at 30 fps."""
    out = tmp_path_factory.mktemp("long") / "photo"
    return synthesize_long(out, subjects=2, videos_per_subject=1, seconds=12, fps=30, identity="photo")


@pytest.fixture(scope="module")
def painted(tmp_path_factory):
    out = tmp_path_factory.mktemp("long") / "painted"
    return synthesize_long(out, subjects=1, videos_per_subject=2, seconds=6, identity="procedural", seed=1)


def test_sheets_columns_types_and_split(photo):
    cols, rows = table(photo / "annotations.csv")
    assert tuple(cols) == COLUMNS and rows
    assert {r["type"] for r in rows} == {"micro", "macro"}
    for r in rows:
        assert r["subject"] in ("s01", "s02") and r["video"].startswith(r["subject"] + "_")
        int(r["onset"]), int(r["apex"]), int(r["offset"])
        assert r["aus"] == "+".join(a.code() for a in parse_au_codes(r["aus"]))
    cols, blinks = table(photo / "blinks.csv")
    assert tuple(cols) == BLINK_COLUMNS and blinks
    meta = videos(photo)
    assert [(v["subject"], v["split"]) for v in meta] == [("s01", "train"), ("s02", "test")]
    for v in meta:
        assert v["fps"] == 30 and v["frames"] == 360 and v["identity"] == "photo" and v["first_frame"] == 0
        n = sum(r["video"] == v["video"] for r in rows)
        assert v["micro"] + v["macro"] == n


def test_aus_follow_the_emotion_rules(photo):
    for r in table(photo / "annotations.csv")[1]:
        nums = {a.number for a in parse_au_codes(r["aus"])}
        recipes = [{int(c.lstrip("S")) for c in rec} for rec in EMOTION_RULES[r["emotion"]]]
        if r["type"] == "micro":  # synth.py's plan: exactly one recipe
            assert nums in recipes, r
        else:  # a macro: at least one recipe, at most two and the prototype's extras
            extra = {int(c) for c in MACRO_EXTRA.get(r["emotion"], ())}
            assert any(rec <= nums for rec in recipes), r
            assert nums <= set().union(*recipes) | extra, r


@pytest.mark.parametrize("fps", [30.0, 200.0])
def test_plans_follow_the_megc_rules(fps):
    """Micro up to 0.5 s even counting onset..offset inclusive, macro longer; events apart; blinks clear."""
    events, seconds = [], 60.0
    for seed in range(20):
        plan = plan_video(np.random.default_rng([seed, 0, 0]), "s01", "s01_v01", seconds, fps)
        prev_offset = -fps
        for e in plan.events:
            assert 0 <= e.onset < e.apex < e.offset < plan.n_frames
            assert e.onset - prev_offset >= fps  # >= 1 s of neutral face between events
            prev_offset = e.offset
            if e.kind == "micro":
                assert 0.2 * fps - 1 <= e.offset - e.onset and e.offset - e.onset + 1 <= 0.5 * fps
            else:
                assert 0.5 * fps < e.offset - e.onset <= 4 * fps
                assert e.peak >= 1.8  # 2-3x a micro-expression's 0.7-1.0
        for on, off in plan.blinks:
            assert 0.1 * fps - 1 <= off - on <= 0.3 * fps + 1
            assert all(off < e.onset or on > e.offset for e in plan.events)
        if plan.lighting:
            light = plan.lighting
            assert all(light.offset < e.onset or light.onset > e.offset for e in plan.events)
        events += plan.events
    per_event = 20 * seconds / len(events)
    assert 5 <= per_event <= 8, per_event  # about one event per 5-8 s
    kinds = [e.kind for e in events]
    assert 0.3 < kinds.count("micro") / len(kinds) < 0.7


def test_decord_reads_each_mp4(photo):
    for v in videos(photo):
        vr = decord.VideoReader(str(photo / v["path"]))
        assert len(vr) == v["frames"] and vr.get_avg_fps() == pytest.approx(30)
        assert vr[0].shape == (480, 640, 3)


@pytest.mark.slow  # writes a long video
def test_200_fps_video(tmp_path):
    out = synthesize_long(tmp_path, 1, 1, seconds=1.5, fps=200, identity="procedural")
    vr = decord.VideoReader(str(out / "videos" / "s01_v01.mp4"))
    assert len(vr) == 300 and vr.get_avg_fps() == pytest.approx(200)


def test_frame_folders_number_from_one(painted, tmp_path):
    """Same arguments as `painted` but frame folders: the same plan, every frame number one higher."""
    out = synthesize_long(tmp_path, 1, 2, seconds=6, identity="procedural", seed=1, frames=True)
    for v in videos(out):
        names = {p.name for p in (out / v["path"]).iterdir()}
        assert names == {f"img{i}.jpg" for i in range(1, v["frames"] + 1)} and v["first_frame"] == 1
    for sheet in ("annotations.csv", "blinks.csv"):
        cols, files = table(out / sheet)
        _, mp4 = table(painted / sheet)
        frame_cols = [c for c in cols if c in ("onset", "apex", "offset")]
        assert len(files) == len(mp4) > 0
        for a, b in zip(files, mp4, strict=True):
            assert all(int(a[c]) == int(b[c]) + 1 for c in frame_cols)


def test_same_arguments_same_sheets(painted, tmp_path):
    again = synthesize_long(tmp_path, 1, 2, seconds=6, identity="procedural", seed=1)
    for name in SHEETS:
        assert (again / name).read_bytes() == (painted / name).read_bytes(), name
    a = plan_video(np.random.default_rng([1, 0, 0]), "s01", "s01_v01", 60, 30)
    b = plan_video(np.random.default_rng([2, 0, 0]), "s01", "s01_v01", 60, 30)
    assert a.events != b.events


def _mean_diff(vr, i: int, j: int, box: tuple[int, int, int, int]) -> float:
    x0, y0, x1, y1 = box
    a, b = vr.get_batch([i, j]).asnumpy().astype(np.float32)[:, y0:y1, x0:x1]
    return float(np.abs(a - b).mean())


def _box(points: np.ndarray, pad: int) -> tuple[int, int, int, int]:
    (x0, y0), (x1, y1) = points.min(0) - pad, points.max(0) + pad
    return int(x0), int(y0), int(x1), int(y1)


def _busy(v: dict, events: list[dict], blinks: list[tuple[int, int]]) -> np.ndarray:
    """Frames near an event or a blink (3 frames' margin) or after the lighting ramp starts."""
    busy = np.zeros(v["frames"] + 8, bool)
    for on, off in [(int(r["onset"]), int(r["offset"])) for r in events] + blinks:
        busy[max(0, on - 3) : off + 4] = True
    if v["lighting"]:
        busy[v["lighting"]["onset"] :] = True
    return busy


def _neutral(vr, busy: np.ndarray, gap: int, box: tuple[int, int, int, int]) -> float:
    """The largest change between two neutral frames `gap` apart: drift, noise and the codec."""
    pairs = [i for i in range(0, len(vr) - gap, 9) if not busy[i : i + gap + 1].any()]
    assert pairs, "no neutral stretch to compare with"
    return max(_mean_diff(vr, i, i + gap, box) for i in pairs)


def test_photo_face_moves_in_events_and_lids_at_blinks(photo):
    """onset -> apex changes the face (and onset -> shut the eyes) more than any neutral pair as far apart:
    the movement is where the sheets say, and head drift, noise and the codec are smaller."""
    _, events = table(photo / "annotations.csv")
    _, blink_rows = table(photo / "blinks.csv")
    for v in videos(photo):
        vr = decord.VideoReader(str(photo / v["path"]))
        lm = face_landmarks(np.ascontiguousarray(vr[0].asnumpy()[..., ::-1]))
        face, eyes = _box(lm, 5), _box(lm[36:48], 6)
        mine = [r for r in events if r["video"] == v["video"]]
        blinks = [(int(b["onset"]), int(b["offset"])) for b in blink_rows if b["video"] == v["video"]]
        busy = _busy(v, mine, blinks)
        for r in mine:
            on, ap = int(r["onset"]), int(r["apex"])
            moved, rest = _mean_diff(vr, on, ap, face), _neutral(vr, busy, ap - on, face)
            assert moved > 1.3 * rest, (r, moved, rest)
        for on, off in blinks:
            shut = on + max(1, round(0.4 * (off - on)))
            moved, rest = _mean_diff(vr, on, shut, eyes), _neutral(vr, busy, shut - on, eyes)
            assert moved > 2 * rest, (on, off, moved, rest)


def test_micro_moves_a_few_pixels_macro_two_to_three_times_more(photo):
    scene = make_scene("photo", 0, 0)
    plan = plan_video(np.random.default_rng([0, 0, 0]), "s01", "s01_v01", 60, 30)
    apex = {"micro": [], "macro": []}
    for e in plan.events:
        disp, _ = scene.field(e.aus)
        apex[e.kind].append(e.peak * float(np.hypot(disp[0], disp[1]).max()))
    assert apex["micro"] and apex["macro"]
    assert 1.0 <= min(apex["micro"]) and max(apex["micro"]) <= 6
    assert np.median(apex["macro"]) >= 2 * np.median(apex["micro"])


@pytest.mark.slow  # dlib's detector and landmark model
@pytest.mark.parametrize("identity", ["procedural", "photo"])
def test_dlib_finds_the_face_where_it_was_drawn(identity):
    """The painted face is a face to dlib too, so both identities ship uncropped 640x480 frames."""
    for subject in range(2):
        scene = make_scene(identity, 0, subject)
        assert scene.canvas.shape == (480, 640, 3)
        lm = face_landmarks(scene.canvas)
        x0, y0, x1, y1 = scene.face_box
        inside = (lm[:, 0] >= x0 - 8) & (lm[:, 0] <= x1 + 8) & (lm[:, 1] >= y0 - 8) & (lm[:, 1] <= y1 + 8)
        assert inside.mean() > 0.9, (identity, subject, scene.face_box)


@pytest.mark.slow  # writes a long video
def test_cli_writes_long_videos(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["data", "synth", "--long", "--out", str(out), "--subjects", "1", "--videos-per-subject", "1"]
    assert main([*args, "--seconds", "4", "--identity", "procedural", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert (
        str(out) in printed and "1 video (120 frames at 30 fps" in printed and "unannotated blinks" in printed
    )
    assert all((out / name).is_file() for name in SHEETS)
    (v,) = videos(out)
    assert v["fps"] == 30 and v["frames"] == 120 and (out / "videos" / "s01_v01.mp4").is_file()


@pytest.mark.parametrize(
    "kwargs",
    [{"seconds": 0}, {"seconds": -5}, {"subjects": 0}, {"videos_per_subject": 0}, {"identity": "cartoon"}],
)
def test_bad_arguments_are_input_errors(tmp_path, kwargs):
    with pytest.raises(InputError, match="data synth"):
        synthesize_long(tmp_path, **{"subjects": 1, "videos_per_subject": 1, "seconds": 2, **kwargs})
    assert not any(tmp_path.iterdir())  # nothing written


def test_cli_bad_arguments_are_one_line(tmp_path, capsys):
    for flags in (["--seconds", "0"], ["--subjects", "0"]):
        assert main(["data", "synth", "--long", "--out", str(tmp_path / "x"), *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: data synth --long") and err.count("\n") == 1
