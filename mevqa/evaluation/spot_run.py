"""`mevqa spot` as a job: several long videos, one pass each, resumable and shardable, with files a
person can read (intervals as JSONL and CSV, the per-frame signal, a timeline PNG) and, given an
annotation sheet, spotting scores; `--tune` picks the threshold and interval on training videos.

Layout of OUT: `videos/<video>/{signal.csv, events.jsonl, timeline.png, done.json}` per video (a
video is finished when its done.json holds this run's fingerprint, so a killed run continues with the
next unfinished video and a changed setting recomputes), then `intervals.jsonl`, `intervals.csv`,
`spot.json` (settings, timings) and `metrics.json` with a sheet, rebuilt from the per-video files.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import logging
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mevqa.config import SpotConfig, SpotJob, to_dict
from mevqa.data.longvideo import Interval, read_sheet, write_intervals
from mevqa.errors import InputError
from mevqa.evaluation.spotting import spotting_scores
from mevqa.io import FolderLock, atomic_write, disk_errors
from mevqa.spot import (
    Event,
    Signal,
    faceless_spans,
    intervals,
    motion_signal,
    smoothed,
    spot_video,
    threshold,
)
from mevqa.video import FRAME_EXTS, VIDEO_EXTS, open_clip

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- which videos
def resolve_video(root: Path, video: str, subject: str | None = None) -> Path:
    """A sheet's video name under --root: VIDEO.mp4 (any video extension), a VIDEO/ frame folder, or the
    same under SUBJECT/."""
    for base in (root, root / subject) if subject else (root,):
        if (base / video).exists():
            return base / video
        for ext in sorted(VIDEO_EXTS):
            if (base / f"{video}{ext}").is_file():
                return base / f"{video}{ext}"
    raise InputError(f"--root {root} — no video or frame folder named {video!r} (for the annotation sheet)")


def job_videos(job: SpotJob, paths: list[str]) -> tuple[dict[str, Path], dict[str, list[Interval]]]:
    """{name: path} of the videos to spot, and the gold events by video when a sheet is given."""
    gold: dict[str, list[Interval]] = {}
    videos: dict[str, Path] = {}
    if job.data:
        gold = read_sheet(job.data)
        root = Path(job.root or Path(job.data).parent)
        for name, events in gold.items():
            videos[name] = resolve_video(root, name, events[0].subject if events else None)
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise InputError(f"{p} — no such video file or frame folder")
        name = path.stem if path.is_file() else path.name
        if name in videos and videos[name] != path:
            raise InputError(f"{p} — two videos named {name!r}; spot them into different --out folders")
        videos[name] = path
    if not videos:
        raise InputError("mevqa spot — no videos: give VIDEO|FRAME_FOLDER paths or --data SHEET --root DIR")
    return videos, gold


def fingerprint(cfg: SpotConfig, path: Path, fps: float | None) -> str:
    """The settings and the video's identity (size and mtime of the file, or of the folder's frames)."""
    st = path.stat()
    files = [f for f in path.iterdir() if f.suffix.lower() in FRAME_EXTS] if path.is_dir() else [path]
    ident = (len(files), sum(f.stat().st_size for f in files), st.st_mtime_ns)
    text = json.dumps([to_dict(cfg), fps, ident, "spot-1"], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- one video
def video_fps(job: SpotJob, path: Path) -> float | None:
    return job.fps or (job.folder_fps if path.is_dir() else None)


def spot_one(name: str, path: Path, job: SpotJob, gold: list[Interval] | None, folder: Path) -> dict:
    """Spot one video and write its files; returns its done.json record."""
    t0 = time.perf_counter()
    events, sig = spot_video(str(path), job.spot, video_fps(job, path), job.folder_fps, progress=True)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "signal.csv", signal_csv(sig, job.spot))
    atomic_write(folder / "events.jsonl", "".join(json.dumps(asdict(e)) + "\n" for e in events))
    try:
        timeline_png(folder / "timeline.png", name, sig, events, gold or [], job.spot)
    except ImportError:  # matplotlib is a dependency; a broken install still gets the numbers
        log.warning("no timeline picture: matplotlib could not be imported")
    seconds = time.perf_counter() - t0
    return {
        "video": name,
        "path": str(path),
        "fps": sig.video_fps,
        "frames": int(sig.frames[-1] - sig.frames[0] + 1) if len(sig.frames) else 0,
        "analysed_fps": sig.fps,
        "faceless": [list(s) for s in faceless_spans(sig)],
        "seconds": round(seconds, 3),
        "realtime": round(len(sig.frames) * sig.step / sig.video_fps / max(seconds, 1e-9), 2),
        "timings": {k: round(v, 3) for k, v in sig.timings.items()},
    }


def event_label(n: int, e: Event, fps: float) -> str:
    """How a person sees an event in a list: `3: micro 12.30-12.63 s (frames 369-379, apex 374)`."""
    span = f"{e.onset / fps:.2f}–{e.offset / fps:.2f} s"
    return f"{n}: {e.type} {span} (frames {e.onset}–{e.offset}, apex {e.apex})"


def signal_csv(sig: Signal, cfg: SpotConfig) -> str:
    from mevqa.spot import MEASURED

    x = smoothed(sig, cfg)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["frame", "motion", "smoothed", "faceless", *MEASURED])
    for i, f in enumerate(sig.frames):
        w.writerow(
            [int(f), _num(sig.motion[i]), _num(x[i]), int(sig.faceless[i]), *map(_num, sig.regions[i])]
        )
    return buf.getvalue()


def _num(v: float) -> str:
    return "" if v != v else f"{v:.4f}"


def timeline_png(
    path: Path, name: str, sig: Signal, events: list[Event], gold: list[Interval], cfg: SpotConfig
) -> None:
    """Signal, threshold, spotted intervals (micro / macro) and, when known, the ground truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = smoothed(sig, cfg)
    _, _, level = threshold(x, cfg.threshold)
    t = sig.frames / sig.video_fps
    fig, ax = plt.subplots(figsize=(12, 3.2), dpi=100)
    ax.plot(t, sig.motion, lw=0.5, color="0.7", label="motion")
    ax.plot(t, x, lw=1, color="C0", label="smoothed")
    ax.axhline(level, color="C3", ls="--", lw=1, label=f"threshold ({cfg.threshold:g}σ)")
    top = np.nanmax(x) if np.isfinite(x).any() else 1.0
    for e in events:
        ax.axvspan(
            e.onset / sig.video_fps,
            e.offset / sig.video_fps,
            color="C1" if e.type == "micro" else "C2",
            alpha=0.35,
        )
    for g in gold:
        ax.plot([g.onset / sig.video_fps, g.offset / sig.video_fps], [top * 1.05] * 2, color="k", lw=3)
    for a, b in faceless_spans(sig):
        ax.axvspan(a / sig.video_fps, b / sig.video_fps, color="0.3", alpha=0.2)
    ax.set_xlabel("seconds")
    ax.set_ylabel("residual flow (px)")
    ax.set_title(
        f"{name}: {sum(e.type == 'micro' for e in events)} micro, "
        f"{sum(e.type == 'macro' for e in events)} macro (orange micro, green macro, black truth)"
    )
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write(path, buf.getvalue())


# ---------------------------------------------------------------- the job
def run_spot(job: SpotJob, paths: list[str]) -> dict[str, Any] | None:
    """Spot every video (this process's share), then merge and score; None in non-main processes."""
    videos, gold = job_videos(job, paths)
    out = Path(job.out)
    rank, world, barrier = _processes()
    lock = FolderLock(out, "mevqa spot") if rank == 0 else None
    try:
        names = sorted(videos)
        for name in names[rank::world]:
            _spot_if_needed(name, videos[name], job, gold.get(name), out)
        barrier()
        return merge_outputs(job, videos, gold, out) if rank == 0 else None
    finally:
        if lock:
            lock.release()


def _processes() -> tuple[int, int, Any]:
    """(rank, world, barrier) under `accelerate launch`; alone, no torch is imported at all (a spot run
    stays a few hundred MB: eval's runner, with torch and transformers, is about 1 GB of memory)."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return 0, 1, lambda: None
    from mevqa.dist import Shard

    shard = Shard.current("cpu")
    return shard.rank, shard.world, shard.barrier


def _spot_if_needed(name: str, path: Path, job: SpotJob, gold: list[Interval] | None, out: Path) -> None:
    folder = out / "videos" / name
    fp = fingerprint(job.spot, path, video_fps(job, path))
    done = folder / "done.json"
    if not job.overwrite and done.is_file():
        try:
            if json.loads(done.read_text()).get("fingerprint") == fp:
                log.info("%s: already spotted with these settings", name)
                return
        except (OSError, ValueError):
            pass  # a torn done.json: spot again
    with disk_errors(out):
        record = spot_one(name, path, job, gold, folder)
        atomic_write(done, json.dumps({**record, "fingerprint": fp}, indent=1))


def load_events(out: Path, name: str) -> list[Event]:
    path = out / "videos" / name / "events.jsonl"
    return [Event(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def merge_outputs(job: SpotJob, videos: dict[str, Path], gold: dict[str, list[Interval]], out: Path) -> dict:
    """intervals.jsonl/csv, spot.json and (with a sheet) metrics.json from every video's files."""
    preds, records = [], []
    for name in sorted(videos):
        subject = gold[name][0].subject if gold.get(name) else None
        preds += [
            Interval(name, e.onset, e.offset, e.apex, e.type, None, subject, e.score)
            for e in load_events(out, name)
        ]
        records.append(json.loads((out / "videos" / name / "done.json").read_text()))
    write_intervals(out / "intervals.jsonl", preds)
    write_intervals(out / "intervals.csv", preds)
    summary: dict[str, Any] = {"settings": to_dict(job), "videos": records, "intervals": len(preds)}
    if gold:
        summary["metrics"] = spotting_scores(preds, [g for v in gold.values() for g in v])
        summary["metrics"].pop("pairs", None)
        atomic_write(out / "metrics.json", json.dumps(summary["metrics"], indent=1))
    atomic_write(out / "spot.json", json.dumps(summary, indent=1))
    return summary


# ---------------------------------------------------------------- tuning
def tune(
    job: SpotJob,
    paths: list[str],
    thresholds: tuple[float, ...] = (),
    intervals_s: tuple[float, ...] = (),
    holds: tuple[float, ...] = (),
    blinks: tuple[float, ...] = (),
) -> dict:
    """Grid over interval (each a signal pass per video) x threshold x hold x blink (cheap: peaks, pairing
    and the blink test only) for the best spotting F1 on --data; writes OUT/spot_recipe.yaml. `hold` is in
    the grid because a slow macro-expression (3.5 s on SynthME's painted training videos) holds its apex
    longer than 1 s, and its return then came out as an event apart from its onset. `blink` because how
    much the brow boxes move with a blink depends on the face: on the photographed face the skin above
    the lid drags the brow boxes along (eyes 1.00-1.31x the rest in a blink, expressions at most 1.01x),
    on the painted one blinks reach 1.46-1.7x and its expressions 1.18x."""
    if not job.data:
        raise InputError(
            "mevqa spot --tune — needs --data SHEET (and --root VIDEOS): the annotated training videos"
        )
    videos, gold = job_videos(job, paths)
    thresholds = thresholds or (2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0)
    intervals_s = intervals_s or (0.1, 0.2, 0.3)
    holds = holds or (0.5, 1.0, 2.0, 3.0)
    blinks = blinks or (1.02, 1.1, 1.2, 1.5)
    flat = [g for v in gold.values() for g in v]
    grid = []
    for k in intervals_s:
        cfg = replace(job.spot, interval=k)
        sigs = {
            n: motion_signal(open_clip(p, job.folder_fps), cfg, video_fps(job, p), progress=True)
            for n, p in videos.items()
        }
        for t, h, b in itertools.product(thresholds, holds, blinks):
            c = replace(cfg, threshold=t, hold=h, blink=b)
            preds = [
                Interval(n, e.onset, e.offset, e.apex, e.type)
                for n, s in sigs.items()
                for e in intervals(s, c)
            ]
            f1 = spotting_scores(preds, flat)["overall"]["f1"]
            grid.append({"interval": k, "threshold": t, "hold": h, "blink": b, "f1": round(f1, 4)})
    # a tie goes to the stricter threshold, then to the shorter hold, then to the blink test that drops less
    best = max(grid, key=lambda g: (g["f1"], g["threshold"], -g["hold"], g["blink"]))
    chosen = {k: best[k] for k in ("interval", "threshold", "hold", "blink")}
    recipe = {"spot": {**to_dict(job.spot), **chosen}}
    out = Path(job.out)
    out.mkdir(parents=True, exist_ok=True)
    header = f"# mevqa spot --tune on {job.data}: spotting F1 {best['f1']} (IoU >= 0.5)\n"
    atomic_write(out / "spot_recipe.yaml", header + yaml.safe_dump(recipe, sort_keys=False))
    atomic_write(out / "tune.json", json.dumps({"best": best, "grid": grid}, indent=1))
    return {"best": best, "grid": grid, "recipe": str(out / "spot_recipe.yaml")}
