"""`mevqa cv`: subject-independent cross-validation (train + answer per fold, pooled scores)."""

from __future__ import annotations

import argparse

from mevqa.cli._args import add_settings, load_settings
from mevqa.config import CV_PER_FOLD, CVConfig


def cmd_cv(a: argparse.Namespace) -> int:
    from mevqa.evaluation.report import format_table
    from mevqa.train.cv import FOLD_KEYS, cross_validate

    summary = cross_validate(load_settings(a, CVConfig, "cv", nest=CVConfig.nest))
    if summary is None:  # another process of a multi-process run
        return 0
    m = summary["metrics"]
    print(format_table(m))
    for k in FOLD_KEYS:
        ms = m["fold_mean_std"][k]
        mean = "—" if ms["mean"] is None else f"{ms['mean']:.3f}"
        print(f"  per-fold {k}: {mean} ± {ms['std']:.3f}")
    for f in summary["files"]:
        print(f"  wrote {f}")
    return 0


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "cv",
        usage="mevqa cv --data FILE --out DIR --model MODEL [--folds loso|N] [options]",
        parents=[common],
        help="subject-independent cross-validation: train and answer per fold, score pooled",
        description="Folds by subject (loso, or N groups balanced by question count; folds.json). Per fold: "
        "`train` on the other subjects, `eval` on the held-out ones; then every fold's predictions scored "
        "together (the composite protocol) and per fold. Resumable; works under `accelerate launch`.",
    )
    p.add_argument(
        "--config", help="training recipe YAML (adapters/recipes/*.yaml); may also set folds, fold_seed"
    )
    add_settings(p, CVConfig, skip=tuple(f"train.{k}" for k in CV_PER_FOLD))
    p.set_defaults(func=cmd_cv)
