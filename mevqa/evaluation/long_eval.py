"""The long-video tasks end to end: spot each video, ask the VLM about each spotted event, put the
answers together.

- ME-STR (MEGC 2025, spot-then-recognise): `--data` is an annotation sheet (the gold intervals) or a
  video list; every spotted interval gets the fine emotion question; the intervals with their emotions
  are the prediction, scored by STRS two ways (the organisers' evaluator, and strict one-to-one).
- ME-LVQA (MEGC 2026): `--data` is an ME-LVQA question file; counts and types come from the spotted
  events (duration rule: <= `micro_max` s is micro), the AU inventory is the union of the VLM's answers
  to the AU question over the video's events.

Both go through the short-clip machinery: spotting is `run_spot` (one resumable pass per video, in
OUT/spot), the per-event questions are a generated MEGC-style file answered by `run_eval` in OUT/answers
(batching, resume, fingerprints). An event's clip id carries its onset and offset, so a re-spotted event
is a new question and an answer is never reused for frames it was not given.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from mevqa.config import EvalConfig, SpotJob, to_dict
from mevqa.data.longvideo import Interval, lvqa_answer, read_sheet, write_intervals
from mevqa.data.megc import read_jsonl, write_jsonl
from mevqa.errors import InputError
from mevqa.evaluation.parse import parse_aus, parse_label
from mevqa.evaluation.runner import check_out, run_eval
from mevqa.evaluation.spot_run import load_events, resolve_video, run_spot
from mevqa.evaluation.spotting import format_report, lvqa_scores, strs_official, strs_strict, to_json
from mevqa.facs import AU_NAMES
from mevqa.io import atomic_write
from mevqa.prompts import Q_AU_MANY, Q_FINE
from mevqa.spot import Event, spot_settings

log = logging.getLogger(__name__)
NAME_TO_AU = {v: k for k, v in AU_NAMES.items()}


def check_task(cfg: EvalConfig) -> None:
    """--task str takes a sheet, --task lvqa an ME-LVQA question file: say so before any work."""
    from mevqa.prompts import classify

    sheet = Path(cfg.data).suffix.lower() in (".csv", ".xlsx")
    if cfg.task == "str" and not sheet:
        raise InputError(f"`data` {cfg.data} — task str takes a long-video annotation sheet (.csv/.xlsx)")
    if cfg.task == "lvqa":
        rows = [] if sheet else read_jsonl(cfg.data)
        if not rows or not all(classify(str(r.get("question", "")))[0].startswith("lvqa") for r in rows):
            raise InputError(
                f"`data` {cfg.data} — task lvqa takes an ME-LVQA question file (six questions a video)"
            )


def _videos(cfg: EvalConfig, task: str) -> tuple[dict[str, Path], list[Interval], list[dict]]:
    """{video: path}, the ME-STR gold intervals, the ME-LVQA rows."""
    root = Path(cfg.root or Path(cfg.data).parent)
    if task == "str":
        gold = read_sheet(cfg.data)
        flat = [dataclasses.replace(e, video=v) for v, evs in gold.items() for e in evs]
        return {v: resolve_video(root, v, evs[0].subject) for v, evs in gold.items()}, flat, []
    rows = read_jsonl(cfg.data)
    names = dict.fromkeys(str(r["video"]) for r in rows)
    return {v: resolve_video(root, v) for v in names}, [], rows


def event_questions(videos: dict[str, Path], events: dict[str, list[Event]], question: str) -> list[dict]:
    """One short-clip question per spotted event: the long video between the event's onset and offset."""
    rows = []
    for v, evs in events.items():
        for n, e in enumerate(evs, start=1):
            clip = f"{v}@{e.onset}-{e.offset}"
            rows.append(
                {
                    "id": f"{clip}#{n}",
                    "dataset": "long",
                    "image_id": clip,
                    "filename": str(videos[v].resolve()),
                    "onset_frame": e.onset,
                    "apex_frame": e.apex,
                    "offset_frame": e.offset,
                    "question": question,
                }
            )
    return rows


def run_long(cfg: EvalConfig, backend: Any = None) -> dict[str, Any]:
    """Spot, ask, assemble, write, score; returns a summary for the CLI."""
    check_task(cfg)
    check_out(cfg)
    task, out = cfg.task, Path(cfg.out)
    videos, gold, lvqa = _videos(cfg, task)
    job = SpotJob(
        out=str(out / "spot"),
        spot=spot_settings(cfg.frames.face, cfg.spot_recipe),
        folder_fps=cfg.frames.folder_fps,
        overwrite=cfg.overwrite,
    )
    run_spot(job, [str(p) for p in videos.values()])
    events = {
        v: load_events(out / "spot", videos[v].stem if videos[v].is_file() else videos[v].name)
        for v in videos
    }
    question = Q_FINE if task == "str" else Q_AU_MANY
    rows = event_questions(videos, events, question)
    answers: dict[str, str] = {}
    if rows:
        data = write_jsonl(out / "event_questions.jsonl", rows)
        sub = dataclasses.replace(
            cfg, data=str(data), out=str(out / "answers"), root="/", clip_pattern="{filename}", limit=None
        )
        run_eval(sub, backend)
        answers = {r["id"]: r.get("answer") or "" for r in read_jsonl(out / "answers" / "predictions.jsonl")}
    per_event = {
        v: [answers.get(f"{v}@{e.onset}-{e.offset}#{n}", "") for n, e in enumerate(evs, start=1)]
        for v, evs in events.items()
    }
    if task == "str":
        return _finish_str(cfg, out, events, per_event, gold)
    return _finish_lvqa(cfg, out, events, per_event, lvqa)


def _finish_str(cfg: EvalConfig, out: Path, events: dict, per_event: dict, gold: list[Interval]) -> dict:
    subject = {g.video: g.subject for g in gold}
    pred = [
        Interval(v, e.onset, e.offset, e.apex, e.type, parse_label(a, "fine"), subject.get(v), e.score)
        for v, evs in events.items()
        for e, a in zip(evs, per_event[v])
    ]
    files = [write_intervals(out / "str_pred.csv", pred), write_intervals(out / "str_pred.jsonl", pred)]
    metrics = {
        "task": "str",
        "official": to_json(strs_official(pred, gold)),
        "strict": to_json(strs_strict(pred, gold)),
        "settings": to_dict(cfg),
    }
    for k in ("official", "strict"):
        metrics[k].pop("pairs", None)
    files.append(atomic_write(out / "metrics.json", json.dumps(metrics, indent=1)))
    files.append(atomic_write(out / "report.md", str_report(metrics)))
    return {"task": "str", "metrics": metrics, "files": files, "intervals": len(pred)}


STR_NOTE = (
    "Two definitions. *official* reproduces the organisers' public STRS evaluator: predictions in file order,"
    " "
    "each hits every not-yet-matched ground truth with IoU >= 0.5 (one prediction can hit several), subjects "
    "without predictions are not counted, analysis F1 = 2·mean(P)·mean(R)/(mean(P)+mean(R)) over the ground "
    'truth\'s emotions and its "UAR" is the mean precision. *strict* matches one-to-one (best IoU first), '
    "counts every subject, and its analysis is UF1 with UAR from recall. STRS = spotting F1 × analysis F1."
)


def str_report(m: dict) -> str:
    return "\n".join(
        ["# ME-STR (spot, then recognise)", "", STR_NOTE, "", format_report("str", m, markdown=True), ""]
    )


def _finish_lvqa(cfg: EvalConfig, out: Path, events: dict, per_event: dict, rows: list[dict]) -> dict:
    """Answers in the files' format, a submission file named like the test file, scores when gold exists."""
    answered = []
    for r in rows:
        v = str(r["video"])
        aus = {a for text in per_event[v] for a in parse_aus(text)}
        evs = [Interval(v, e.onset, e.offset, e.apex, e.type, aus=_aus(aus)) for e in events[v]]
        answered.append({**r, "answer": lvqa_answer(r["question"], evs)})
    name = Path(cfg.data).name.replace("_to_answer", "_pred")
    if name == Path(cfg.data).name:
        name = Path(cfg.data).stem + "_pred.jsonl"
    files = [
        write_jsonl(
            out / name,
            [{k: r[k] for k in ("video_id", "video", "question", "answer") if k in r} for r in answered],
        )
    ]
    metrics = None
    if any(str(r.get("answer", "")).strip() for r in rows):
        metrics = {"task": "lvqa", **to_json(lvqa_scores(answered, rows)), "settings": to_dict(cfg)}
        files.append(atomic_write(out / "metrics.json", json.dumps(metrics, indent=1)))
        files.append(
            atomic_write(out / "report.md", "# ME-LVQA\n\n" + format_report("lvqa", metrics, markdown=True))
        )
    return {"task": "lvqa", "metrics": metrics, "files": files, "questions": len(rows)}


def _aus(names: set[str]) -> tuple:
    from mevqa.data.qa import AU

    return tuple(AU(NAME_TO_AU[n]) for n in sorted(names) if n in NAME_TO_AU)


def summary_lines(s: dict) -> list[str]:
    """What the CLI prints."""
    if s["task"] == "str":
        m = s["metrics"]
        return [
            f"{s['intervals']} intervals; STRS official {_f(m['official']['strs'])} (spot F1 "
            f"{_f(m['official']['spotting']['f1'])}, analysis F1 {_f(m['official']['analysis']['f1'])}); "
            f"strict {_f(m['strict']['strs'])}"
        ] + [f"  wrote {f}" for f in s["files"]]
    lines = [f"{s['questions']} ME-LVQA questions answered"]
    if s["metrics"]:
        lines.append(format_report("lvqa", s["metrics"]))
    return lines + [f"  wrote {f}" for f in s["files"]]


def _f(x: Any) -> str:
    return "nan" if x is None or x != x else f"{x:.4f}"
