"""Long videos end to end on small SynthME long videos (the real photographed face, uncropped, 640x480):
`mevqa spot` (files, scores, resume, tune, bad input), `ask --event`, `eval --task str|lvqa` (resumable
after SIGKILL), the agent's spot tool and the app's spot + event picker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import cli

from mevqa.data.megc import read_jsonl
from mevqa.io import write_mp4


def jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def long_videos(tmp_path_factory) -> Path:
    from mevqa.data.synth_long import synthesize_long

    return synthesize_long(
        tmp_path_factory.mktemp("long") / "synth",
        subjects=2,
        videos_per_subject=1,
        seconds=12,
        fps=30,
        seed=5,
        test_fraction=0.5,
    )


@pytest.fixture(scope="module")
def spotted(long_videos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("spot") / "run"
    r = cli("spot", "--data", long_videos / "annotations.csv", "--root", long_videos / "videos", "--out", out)
    assert r.returncode == 0, r.stderr
    return out


def test_spot_writes_intervals_signal_timeline_and_scores(spotted, long_videos):
    rows = jsonl(spotted / "intervals.jsonl")
    assert rows and {"video", "onset", "apex", "offset", "type", "score"} <= set(rows[0])
    assert all(r["onset"] <= r["apex"] <= r["offset"] for r in rows)
    assert (spotted / "intervals.csv").read_text().startswith("subject,video,onset,offset")
    for v in ("s01_v01", "s02_v01"):
        folder = spotted / "videos" / v
        assert (folder / "timeline.png").stat().st_size > 10_000
        lines = (folder / "signal.csv").read_text().splitlines()
        assert lines[0].startswith("frame,motion,smoothed,faceless") and len(lines) == 12 * 30 + 1
    m = json.loads((spotted / "metrics.json").read_text())
    # the real face is found and most events are spotted at IoU >= 0.5 (README: held-out F1 on more videos)
    assert m["overall"]["f1"] >= 0.6, m["overall"]
    settings = json.loads((spotted / "spot.json").read_text())["settings"]
    assert settings["spot"]["face"]["mode"] == "crop" and settings["spot"]["interval"] == 0.2


def test_spot_rerun_skips_finished_videos_and_new_settings_recompute(spotted, long_videos, tmp_path):
    done = spotted / "videos" / "s01_v01" / "done.json"
    before = done.stat().st_mtime_ns
    args = [
        "spot",
        "--data",
        long_videos / "annotations.csv",
        "--root",
        long_videos / "videos",
        "--out",
        spotted,
    ]
    assert cli(*args).returncode == 0 and done.stat().st_mtime_ns == before
    assert cli(*args, "--threshold", "7").returncode == 0 and done.stat().st_mtime_ns != before
    assert cli(*args).returncode == 0  # back to the defaults for the other tests


def test_tune_writes_a_recipe_that_config_takes(long_videos, tmp_path):
    out = tmp_path / "tune"
    sheet = long_videos / "annotations_train.csv"
    r = cli(
        "spot", "--tune", "--data", sheet, "--root", long_videos / "videos", "--out", out, "--interval", "0.2"
    )
    assert r.returncode == 0 and "best:" in r.stdout, r.stderr
    grid = json.loads((out / "tune.json").read_text())["grid"]
    assert len(grid) == 3 * 8 * 4 * 4  # intervals x thresholds x holds x blink ratios
    r = cli(
        "spot",
        "--config",
        out / "spot_recipe.yaml",
        long_videos / "videos" / "s01_v01.mp4",
        "--out",
        tmp_path / "o",
    )
    assert r.returncode == 0, r.stderr
    best = json.loads((out / "tune.json").read_text())["best"]
    assert (
        json.loads((tmp_path / "o" / "spot.json").read_text())["settings"]["spot"]["threshold"]
        == best["threshold"]
    )
    used = json.loads((tmp_path / "o" / "spot.json").read_text())["settings"]["spot"]
    assert (used["hold"], used["blink"]) == (best["hold"], best["blink"])


def _write(path: Path, frames: list[np.ndarray], fps: float = 30.0) -> Path:
    return write_mp4(path, frames, fps)


def test_bad_long_videos_are_one_line_or_reported_faceless(tmp_path, long_videos):
    rng = np.random.default_rng(0)
    one = _write(tmp_path / "one.mp4", [rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)])
    r = cli("spot", one, "--out", tmp_path / "o1")
    assert r.returncode == 2 and r.stderr.startswith("error:") and "1 frame" in r.stderr
    noise = _write(
        tmp_path / "noface.mp4", [rng.integers(0, 255, (120, 160, 3), dtype=np.uint8) for _ in range(40)]
    )
    r = cli("spot", noise, "--out", tmp_path / "o2")
    assert r.returncode == 0 and "40 faceless frames" in r.stdout, r.stdout + r.stderr
    # a video cut short: the header promises more frames than the file holds
    src = (long_videos / "videos" / "s01_v01.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(src[: len(src) * 2 // 3])
    r = cli("spot", cut, "--out", tmp_path / "o3")
    assert "Traceback" not in r.stderr and r.returncode in (0, 2), r.stderr
    # a frame folder with gaps in its numbering: file numbers come back, not positions
    folder = tmp_path / "gaps"
    folder.mkdir()
    for n in (*range(1, 20), *range(40, 60)):
        cv2.imwrite(str(folder / f"img{n}.jpg"), np.full((60, 60, 3), 128, np.uint8))
    r = cli("spot", folder, "--out", tmp_path / "o4", "--face", "none", "--folder-fps", "30")
    assert r.returncode == 0, r.stderr
    frames = [
        int(x.split(",")[0]) for x in (tmp_path / "o4/videos/gaps/signal.csv").read_text().splitlines()[1:]
    ]
    assert frames[:2] == [1, 2] and 40 in frames and 25 not in frames
    r = cli("spot", tmp_path / "missing.mp4", "--out", tmp_path / "o5")
    assert r.returncode == 2 and "missing.mp4" in r.stderr


def test_ask_about_the_nth_spotted_event(spotted, long_videos, tiny_qwen):
    video = long_videos / "videos" / "s01_v01.mp4"
    events = [r for r in jsonl(spotted / "intervals.jsonl") if r["video"] == "s01_v01"]
    r = cli(
        "ask",
        video,
        "What is the coarse expression class?",
        "--model",
        tiny_qwen,
        "--event",
        "1",
        "--face",
        "crop",
        "--frames",
        "3",
        "--max-new-tokens",
        "4",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["event"]["onset"], out["event"]["offset"]) == (events[0]["onset"], events[0]["offset"])
    assert all(events[0]["onset"] <= f <= events[0]["offset"] for f in out["frames"])
    r = cli("ask", video, "q", "--model", tiny_qwen, "--event", "99", "--face", "crop")
    assert r.returncode == 2 and "event 99 asked for" in r.stderr


def test_face_crop_gives_the_model_the_aligned_face(long_videos):
    from mevqa.config import FaceConfig, FrameConfig
    from mevqa.inputs import load_clip

    video = str(long_videos / "videos" / "s01_v01.mp4")
    raw = load_clip(video, FrameConfig(frames=3))
    crop = load_clip(video, FrameConfig(frames=3, face=FaceConfig(mode="crop", size=160)))
    assert raw.frames[0].shape == (480, 640, 3) and all(f.shape == (160, 160, 3) for f in crop.frames)


def test_eval_str_and_lvqa_end_to_end(spotted, long_videos, tiny_qwen, tmp_path):
    sheet = long_videos / "annotations.csv"
    common = [
        "--root",
        long_videos / "videos",
        "--model",
        tiny_qwen,
        "--face",
        "crop",
        "--frames",
        "2",
        "--max-new-tokens",
        "6",
    ]
    r = cli("eval", "--task", "str", "--data", sheet, *common, "--out", tmp_path / "str")
    assert r.returncode == 0 and "STRS official" in r.stdout, r.stderr
    m = json.loads((tmp_path / "str" / "metrics.json").read_text())
    assert {"official", "strict"} <= set(m) and m["official"]["spotting"]["tp"] >= 1
    assert "Two definitions" in (tmp_path / "str" / "report.md").read_text()
    # ME-LVQA: questions from the sheet (named like the test files), answered from the spotted events
    assert (
        cli(
            "data",
            "convert",
            "--long",
            "--dataset",
            "synthme",
            "--annotations",
            sheet,
            "--out",
            tmp_path / "conv",
        ).returncode
        == 0
    )
    data = tmp_path / "me_lvqa_synthme_test_to_answer.jsonl"
    data.write_text((tmp_path / "conv" / "lvqa.jsonl").read_text())
    r = cli("eval", "--task", "lvqa", "--data", data, *common, "--out", tmp_path / "lvqa")
    assert r.returncode == 0, r.stderr
    sub = read_jsonl(tmp_path / "lvqa" / "me_lvqa_synthme_test_pred.jsonl")
    assert len(sub) == len(read_jsonl(data)) and list(sub[0]) == ["video_id", "video", "question", "answer"]
    m = json.loads((tmp_path / "lvqa" / "metrics.json").read_text())
    assert m["overall"]["count_all_mae"] is not None and "au_f1" in m["overall"]
    r = cli("eval", "--task", "lvqa", "--data", sheet, *common, "--out", tmp_path / "bad")
    assert r.returncode == 2 and "ME-LVQA question file" in r.stderr


def test_long_eval_resumes_after_sigkill(long_videos, tiny_qwen, tmp_path):
    """SIGKILL mid-run, rerun: every event answered exactly once, a finished video's spotting not redone."""
    out = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "mevqa",
        "eval",
        "--task",
        "str",
        "--data",
        str(long_videos / "annotations.csv"),
        "--root",
        str(long_videos / "videos"),
        "--model",
        str(tiny_qwen),
        "--face",
        "crop",
        "--frames",
        "2",
        "--max-new-tokens",
        "6",
        "--batch-size",
        "1",
        "--out",
        str(out),
    ]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    preds = out / "answers" / "predictions.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (preds.exists() and preds.read_text().count("\n") >= 2):
        time.sleep(0.1)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    done = {v: (out / "spot" / "videos" / v / "done.json").stat().st_mtime_ns for v in ("s01_v01", "s02_v01")}
    assert subprocess.run(args, capture_output=True, timeout=300).returncode == 0
    ids = [r["id"] for r in jsonl(preds)]
    questions = [r["id"] for r in jsonl(out / "event_questions.jsonl")]
    assert sorted(ids) == sorted(questions) and len(set(ids)) == len(ids)
    assert {v: (out / "spot" / "videos" / v / "done.json").stat().st_mtime_ns for v in done} == done


def test_agent_spot_tool_and_app_event_picker(spotted, long_videos, qwen, tmp_path):
    pytest.importorskip("langchain_core")
    from mevqa.agent import ClipContext
    from mevqa.agent.lc import tools
    from mevqa.app import Demo
    from mevqa.config import AskConfig, FaceConfig, FrameConfig, GenConfig, UploadLimits, from_dict

    video = str(long_videos / "videos" / "s01_v01.mp4")
    ctx = ClipContext(video, FrameConfig(frames=2, face=FaceConfig(mode="crop")))
    spot = {t.name: t for t in tools(ctx, qwen, GenConfig(max_new_tokens=4))}["spot"]
    found = json.loads(spot.invoke({}))
    expected = [r for r in jsonl(spotted / "intervals.jsonl") if r["video"] == "s01_v01"]
    assert found["events"] == len(expected) and found["list"][0]["onset"] == expected[0]["onset"]
    demo = Demo(qwen, from_dict(AskConfig, {"model": "tiny"}), UploadLimits(), tmp_path)
    png, events, status = demo.spot(ctx, str(tmp_path))
    assert (
        Path(png).stat().st_size > 10_000 and len(events["choices"]) == len(expected) and "Spotted" in status
    )
    first = events["choices"][0]
    first = first[0] if isinstance(first, (list, tuple)) else first
    narrowed, images, flow, status = demo.pick(first, ctx)
    assert (narrowed.onset, narrowed.offset) == (expected[0]["onset"], expected[0]["offset"]) and len(
        images
    ) == 2
    assert status.startswith("Event 1:")


def test_two_processes_share_the_videos_and_merge(spotted, long_videos, tmp_path):
    """Under `accelerate launch` each process spots its share of the videos (each once); the main one
    merges: the same intervals as one process."""
    from test_distributed import ACCELERATE, launch

    if not ACCELERATE.exists():
        pytest.skip("accelerate's launcher is not installed")
    out = tmp_path / "two"
    r = launch(
        "spot", "--data", long_videos / "annotations.csv", "--root", long_videos / "videos", "--out", out
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert jsonl(out / "intervals.jsonl") == jsonl(spotted / "intervals.jsonl")
    assert r.stdout.count("intervals ->") == 1  # one report, from the main process


def test_chat_answers_event_questions_through_the_spotter(spotted, long_videos, qwen):
    """ "How many micro-expressions?" is counted from the spotted events; "what happened in the second
    one?" runs the chain on the 2nd event; both show the spot step. Other questions go to the VLM."""
    from mevqa.agent import ChatSession, ClipContext
    from mevqa.config import FaceConfig, FrameConfig, GenConfig

    spots = jsonl(spotted / "intervals.jsonl")
    name = max(("s01_v01", "s02_v01"), key=lambda v: sum(r["video"] == v for r in spots))
    expected = [r for r in spots if r["video"] == name]
    assert len(expected) >= 2
    ctx = ClipContext(
        str(long_videos / "videos" / f"{name}.mp4"), FrameConfig(frames=2, face=FaceConfig(mode="crop"))
    )
    chat = ChatSession(qwen, ctx, GenConfig(max_new_tokens=4))
    micro = sum(r["type"] == "micro" for r in expected)
    out = chat.command("How many micro-expressions are there?")
    assert f"{len(expected)} expression events: {micro} micro-expressions" in out and "**spot**" in out
    out = chat.command("What happened in the second one?")
    e = expected[1]
    assert f"event 2 is frames {e['onset']}–{e['offset']}" in out and "coarse" in out
    assert chat.history == []  # neither went to the plain chat


def test_public_lvqa_file_over_stand_in_videos_writes_a_submission_that_validates(
    long_videos, tiny_qwen, tmp_path, megc_dir
):
    """The public SAMM ME-LVQA test file, its 10 videos stood in for by a SynthME long video under their
    names: the submission file is named like the test file, has every row, and `data validate` passes."""
    public = megc_dir / "2026" / "me_lvqa_samm_test_to_answer.jsonl"
    root = tmp_path / "standins"
    root.mkdir()
    for v in sorted({r["video"] for r in read_jsonl(public)}):
        (root / f"{v}.mp4").symlink_to(long_videos / "videos" / "s01_v01.mp4")
    out = tmp_path / "run"
    args = ["--task", "lvqa", "--data", public, "--root", root, "--model", tiny_qwen, "--face", "none"]
    r = cli("eval", *args, "--frames", "2", "--max-new-tokens", "6", "--out", out)
    assert r.returncode == 0, r.stderr
    sub = out / "me_lvqa_samm_test_pred.jsonl"
    assert [x["video_id"] for x in read_jsonl(sub)] == [x["video_id"] for x in read_jsonl(public)]
    r = cli("data", "validate", sub)
    assert r.returncode == 0 and "valid" in r.stdout, r.stdout + r.stderr
    bad = tmp_path / "bad_pred.jsonl"
    bad.write_text(json.dumps({**read_jsonl(sub)[0], "answer": "three"}) + "\n")
    r = cli("data", "validate", bad)
    assert r.returncode == 2 and "'three'" in r.stdout, r.stdout
