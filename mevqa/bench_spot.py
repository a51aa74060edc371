"""`mevqa bench spot`: how fast `mevqa spot` runs against real time, where the time goes, and whether
its memory stays flat as the video grows.

Rows: speed as a multiple of real time for a 30 fps 640x480 SynthME long video (the real face of
`skimage.data.astronaut()`, uncropped, so the face stage works) and a 200 fps one (analysed at 50 fps),
split into decode / face / flow / peaks; then peak memory (max RSS of a fresh `mevqa spot` process)
and wall time at 1, 2, 4, 8 and 10 minutes of the 30 fps video (the longer ones are the 1-minute video
repeated, re-encoded as one file). Lightweight on purpose: no torch, no model.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mevqa.config import SpotConfig
from mevqa.io import atomic_write, write_mp4
from mevqa.spot import intervals, motion_signal
from mevqa.video import open_clip


def synth_video(work: Path, fps: float, seconds: float) -> Path:
    from mevqa.data.synth_long import synthesize_long

    out = synthesize_long(
        work / f"synth-{fps:g}",
        subjects=1,
        videos_per_subject=1,
        seconds=seconds,
        fps=fps,
        identity="photo",
        seed=3,
        test_fraction=0.0,
    )
    return next((out / "videos").glob("*.mp4"))


def speed_row(path: Path, cfg: SpotConfig) -> dict[str, Any]:
    """One spot of `path` with the time split by stage."""
    clip = open_clip(path)
    t0 = time.perf_counter()
    sig = motion_signal(clip, cfg)
    t1 = time.perf_counter()
    events = intervals(sig, cfg)
    t2 = time.perf_counter()
    seconds_of_video = clip.num_frames / clip.fps
    split = {k: round(v, 3) for k, v in sig.timings.items()} | {"peaks": round(t2 - t1, 4)}
    return {
        "video": f"{clip.size[0]}x{clip.size[1]} at {clip.fps:g} fps, {seconds_of_video:g} s",
        "analysed_fps": sig.fps,
        "wall_s": round(t2 - t0, 3),
        "x_real_time": round(seconds_of_video / (t2 - t0), 2),
        "split_s": split,
        "events": len(events),
    }


def repeat_video(src: Path, times: int, dst: Path) -> Path:
    """`src` played `times` times in one file, streamed (never all frames in memory)."""
    cap = cv2.VideoCapture(str(src))
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()

    def frames() -> Iterator[np.ndarray]:
        for _ in range(times):
            cap = cv2.VideoCapture(str(src))
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                yield frame
            cap.release()

    return write_mp4(dst, frames(), fps)


def memory_row(path: Path, minutes: int, work: Path) -> dict[str, Any]:
    """Peak memory (VmHWM, polled) and wall time of a fresh `mevqa spot` process on `path`. Not the
    rusage of wait4: a forked child's max RSS counts the parent's pages from before its exec."""
    cmd = [sys.executable, "-m", "mevqa", "spot", str(path), "--out", str(work / f"spot-{minutes}m")]
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _hwm_kb(proc.pid))
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"mevqa spot failed on {path} (exit {proc.returncode})")
    return {
        "minutes": minutes,
        "peak_rss_mb": round(peak / 1024, 1),
        "wall_s": round(wall, 2),
        "x_real_time": round(minutes * 60 / wall, 2),
    }


def _hwm_kb(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # it just ended
        return 0
    line = next((ln for ln in text.splitlines() if ln.startswith("VmHWM:")), "VmHWM: 0 kB")
    return int(line.split()[1])


def run(out: Path | None = None, minutes: tuple[int, ...] = (1, 2, 4, 8, 10)) -> dict[str, Any]:
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        v30 = synth_video(work, 30.0, 60.0)
        v200 = synth_video(work, 200.0, 20.0)
        cfg = SpotConfig()
        speed = [speed_row(v30, cfg), speed_row(v200, cfg)]
        memory = []
        for m in minutes:
            path = v30 if m == 1 else repeat_video(v30, m, work / f"long-{m}m.mp4")
            memory.append(memory_row(path, m, work))
            if path != v30:
                path.unlink()
    results = {
        "bench": "spot",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "threads": 1,
        "speed": speed,
        "memory": memory,
    }
    if out:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "spot.json", json.dumps(results, indent=1))
    return results


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "| video | analysed fps | × real time | decode s | face s | flow s | peaks s | events |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in r["speed"]:
        sp = s["split_s"]
        lines.append(
            f"| {s['video']} | {s['analysed_fps']:g} | {s['x_real_time']} | {sp['decode']} | "
            f"{sp['face']} | {sp['flow']} | {sp['peaks']} | {s['events']} |"
        )
    lines += ["", "| minutes of 30 fps 640×480 | peak RSS (MB) | wall s | × real time |", "|---|---|---|---|"]
    lines += [
        f"| {m['minutes']} | {m['peak_rss_mb']} | {m['wall_s']} | {m['x_real_time']} |" for m in r["memory"]
    ]
    return "\n".join(lines)


def blink_false_positives(pred: Path, gold: Path, blinks: Path) -> dict[str, int]:
    """Of a spot run's false positives (predictions matching no truth at IoU >= 0.5), how many overlap a
    SynthME blink (its `blinks.csv`: blinks are not annotated, as in the datasets)."""
    import csv

    from mevqa.data.longvideo import read_intervals, read_sheet
    from mevqa.evaluation.spotting import match

    preds = read_intervals(pred)
    truth = [g for v, evs in read_sheet(gold).items() for g in evs]
    matched = {pi for pi, _, _ in match(preds, truth, 0.5)}
    with blinks.open() as f:
        spans = [(r["video"], int(r["onset"]), int(r["offset"])) for r in csv.DictReader(f)]
    fps = [p for i, p in enumerate(preds) if i not in matched]
    on_blink = sum(any(v == p.video and a <= p.offset and p.onset <= b for v, a, b in spans) for p in fps)
    return {"false_positives": len(fps), "on_blinks": on_blink, "blinks": len(spans)}
