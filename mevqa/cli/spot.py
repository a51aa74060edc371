"""`mevqa spot`: find the expression moments in long videos (training-free), or tune the spotter."""

from __future__ import annotations

import argparse

from mevqa.cli._args import add_settings, load_settings
from mevqa.config import SpotJob


def cmd_spot(a: argparse.Namespace) -> int:
    from mevqa.evaluation.spot_run import run_spot, tune

    job = load_settings(a, SpotJob, "spot")
    if job.tune:
        r = tune(job, a.videos)
        b = r["best"]
        print(
            f"best: interval {b['interval']} s, threshold {b['threshold']}, hold {b['hold']} s, "
            f"blink {b['blink']} "
            f"-> spotting F1 {b['f1']}"
        )
        print(f"  wrote {r['recipe']} (use it: mevqa spot ... --config {r['recipe']})")
        return 0
    summary = run_spot(job, a.videos)
    if summary is None:  # another process of a multi-process run
        return 0
    for v in summary["videos"]:
        faceless = sum(b - a + 1 for a, b in v["faceless"])
        print(
            f"{v['video']}: {v['frames']} frames at {v['fps']:g} fps, {v['realtime']}x real time"
            + (f", {faceless} faceless frames" if faceless else "")
        )
    print(f"{summary['intervals']} intervals -> {job.out}/intervals.jsonl, intervals.csv")
    m = summary.get("metrics")
    if m:
        for k in ("overall", "micro", "macro"):
            s = m[k]
            print(
                f"  {k:7s} TP {s['tp']:4d} FP {s['fp']:4d} FN {s['fn']:4d}  P {s['precision']:.3f} "
                f"R {s['recall']:.3f} F1 {s['f1']:.3f}"
            )
    return 0


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "spot",
        usage="mevqa spot VIDEO|FOLDER... --out DIR [options]",
        parents=[common],
        help="find expression intervals (onset, apex, offset; micro/macro) in long videos",
        description="Track and align the face, measure optical flow in the landmark regions between frames "
        "i-k and i with the head's motion removed, and turn the peaks into intervals. Writes OUT/intervals."
        "jsonl and .csv (frame numbers are a video's indices, a folder's file numbers), and per video its "
        "signal.csv and timeline.png. Resumable: a rerun skips the videos already spotted with the same "
        "settings. With --data SHEET it also scores against the sheet (IoU >= 0.5); with --tune it picks "
        "the interval, threshold, hold and blink ratio on those videos and writes a recipe for --config.",
    )
    p.add_argument("videos", nargs="*", metavar="VIDEO|FRAME_FOLDER", help="long videos to spot")
    p.add_argument("--config", help="YAML settings, e.g. the spot_recipe.yaml that --tune writes")
    add_settings(p, SpotJob)
    p.set_defaults(func=cmd_spot)
