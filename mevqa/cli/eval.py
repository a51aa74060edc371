"""`mevqa eval` (answer a MEGC file, resumably, and score it) and `mevqa score` (score predictions)."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from mevqa import process_seconds
from mevqa.cli._args import add_settings, load_settings
from mevqa.config import EvalConfig
from mevqa.errors import InputError


def cmd_eval(a: argparse.Namespace) -> int:
    from mevqa.backends.base import adapter_defaults
    from mevqa.evaluation.report import format_table
    from mevqa.evaluation.runner import run_eval

    # the adapter's recorded frame settings and prompt, unless the YAML or a flag sets them
    cfg = load_settings(a, EvalConfig, "eval", adapter_defaults)
    if cfg.task != "vqa":
        from mevqa.evaluation.long_eval import run_long, summary_lines

        print("\n".join(summary_lines(run_long(cfg))))
        return 0
    summary = run_eval(cfg)
    if summary is None:  # another process of a multi-process run: the main one reports
        return 0
    c, run = summary["counts"], summary["this_run"]
    if summary["metrics"]:
        print(format_table(summary["metrics"]))
    for f in summary["files"]:
        print(f"  wrote {f}")
    # read now, after every file is written: the time a stopwatch around the command reads, near enough
    print(
        f"{c['n']} questions, {c['answered']} answered, {c['errors']} errors; "
        f"{run['answered_this_run']} answered this run in {run['answering_seconds']:.2f} s of answering, "
        f"{process_seconds():.2f} s since the process started (imports, model load and outputs included)"
    )
    if c["answered"] < c["n"]:
        missing = c["n"] - c["answered"]
        print(f"error: {missing} of {c['n']} questions have no answer (see report.md); rerun to retry them")
        return 1
    return 0


def _unique(rows: list[dict], path: str) -> None:
    from mevqa.data.megc import row_id

    dup = [i for i, n in Counter(row_id(r) for r in rows).items() if n > 1]
    if dup:
        raise InputError(f"{path} — {len(dup)} duplicate id(s) (first: {dup[0]}); each question once")


def _gold_answered(rows: list[dict], path: str) -> None:
    if not any(str(r.get("answer", "")).strip() for r in rows):
        raise InputError(f"--gold {path} — has no answers (a test file to answer?); score needs gold answers")


def _score_long(a: argparse.Namespace) -> dict:
    """Metrics of the long-video tasks: spot and str read interval files, lvqa question JSONL."""
    from mevqa.data.longvideo import read_intervals
    from mevqa.data.megc import read_jsonl
    from mevqa.evaluation import spotting

    if not 0 < a.iou <= 1:
        raise InputError(f"--iou {a.iou} — must be in (0, 1]")
    if a.task == "lvqa":
        gold, pred = read_jsonl(a.gold), read_jsonl(a.pred, required=("answer",))
        _unique(gold, a.gold)
        _unique(pred, a.pred)
        _gold_answered(gold, a.gold)
        return spotting.lvqa_scores(pred, gold)
    gold, pred = read_intervals(a.gold), read_intervals(a.pred)
    if not gold:
        raise InputError(f"--gold {a.gold} — has no intervals; score needs the ground truth")
    if a.task == "spot":
        return spotting.spotting_scores(pred, gold, a.iou)
    return {"official": spotting.strs_official(pred, gold), "strict": spotting.strs_strict(pred, gold, a.iou)}


def _write_long(a: argparse.Namespace, metrics: dict) -> None:
    from mevqa.evaluation.report import write_json
    from mevqa.evaluation.spotting import format_report
    from mevqa.io import atomic_write

    out = Path(a.out)
    write_json(out / "metrics.json", metrics)
    title = {"spot": "spotting", "str": "ME-STR (STRS)", "lvqa": "ME-LVQA"}[a.task]
    md = [f"# mevqa {title} scores", "", f"- predictions: `{a.pred}`", f"- gold: `{a.gold}`", ""]
    md += [format_report(a.task, metrics, markdown=True), ""]
    if a.task == "str":
        md += ["official: the organisers' evaluator and its quirks; strict: one-to-one, every interval.", ""]
    atomic_write(out / "report.md", "\n".join(md))


def cmd_score(a: argparse.Namespace) -> int:
    if a.task != "vqa":
        from mevqa.evaluation.spotting import format_report, to_json

        metrics = to_json(_score_long(a))
        if a.out:
            _write_long(a, metrics)
        print(json.dumps(metrics, indent=2) if a.json else format_report(a.task, metrics))
        return 0
    from mevqa.data.megc import read_jsonl, row_id
    from mevqa.evaluation.metrics import score_rows
    from mevqa.evaluation.report import format_table, write_json

    gold, pred = read_jsonl(a.gold), read_jsonl(a.pred, required=("answer",))
    _unique(gold, a.gold)
    _unique(pred, a.pred)
    _gold_answered(gold, a.gold)
    answers = {row_id(r): str(r.get("answer", "")) for r in pred}
    unknown = set(answers) - {row_id(r) for r in gold}
    if unknown:
        print(f"warning: {len(unknown)} predicted ids are not in --gold (first: {sorted(unknown)[0]})")
    metrics = score_rows(gold, answers, a.label_set)
    if a.out:
        write_json(Path(a.out) / "metrics.json", metrics)
    print(json.dumps(metrics, indent=2) if a.json else format_table(metrics))
    return 0


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "eval",
        usage="mevqa eval --data FILE --out DIR --model MODEL [options]",
        parents=[common],
        help="answer a MEGC file with a model; predictions, metrics, report",
        description="Batch evaluation, resumable: rerunning skips questions already answered with the same "
        "settings. Exit status: 0 every question answered, 1 some failed (rerun to retry), 2 bad input.",
    )
    p.add_argument(
        "--config", help="YAML with the same keys, nested like the settings below (flags override it)"
    )
    add_settings(p, EvalConfig)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "score",
        parents=[common],
        help="score predictions against gold answers (MEGC metrics)",
        description="Match rows by id / video_id, read labels from free text, compute UF1/UAR/... "
        "(--task vqa); or score long-video tasks: interval spotting P/R/F1 (spot), STRS official and strict "
        "(str), ME-LVQA counts/AUs/types (lvqa).",
    )
    p.add_argument(
        "--task",
        choices=("vqa", "spot", "str", "lvqa"),
        default="vqa",
        help="vqa: ME-VQA JSONL (default); spot, str: interval CSV/JSONL files; lvqa: ME-LVQA JSONL",
    )
    p.add_argument(
        "--pred", required=True, help="predictions: JSONL rows with id (or video_id) and answer, or intervals"
    )
    p.add_argument("--gold", required=True, help="gold: JSONL with answers, or intervals (spot, str)")
    p.add_argument("--out", help="folder for metrics.json (and report.md for spot, str, lvqa)")
    p.add_argument(
        "--iou",
        type=float,
        default=0.5,
        help="spot, str strict: IoU a hit needs (the official STRS uses 0.5)",
    )
    p.add_argument("--json", action="store_true", help="print metrics.json instead of the table")
    p.add_argument(
        "--label-set",
        choices=("gt", "union"),
        default="gt",
        help="UF1/UAR classes: ground truth (default) or union with predictions",
    )
    p.set_defaults(func=cmd_score)
