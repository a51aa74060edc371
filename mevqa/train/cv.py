"""`mevqa cv`: subject-independent cross-validation, as micro-expression papers report it.

Folds split by subject (leave-one-subject-out, or k subject groups balanced by question count): no
subject is ever in a fold's training and test data both. Per fold the same code as `mevqa train` trains
an adapter and the same code as `mevqa eval` answers the held-out subjects; then every fold's predictions
are pooled and scored once (the MEGC composite protocol), beside per-fold scores with mean ± std.
Resumable: a finished fold is never redone, a killed one continues from its checkpoint and predictions.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mevqa.config import CV_PER_FOLD, CVConfig, TrainConfig, to_dict
from mevqa.data.megc import read_jsonl, row_id, write_jsonl
from mevqa.dist import Shard
from mevqa.errors import InputError
from mevqa.evaluation.metrics import score_rows
from mevqa.evaluation.report import confusions, markdown_table, write_json
from mevqa.evaluation.runner import run_eval
from mevqa.io import atomic_write
from mevqa.models.loading import hash_file
from mevqa.train.loop import train

log = logging.getLogger(__name__)
FOLD_KEYS = ("coarse_uf1", "coarse_uar", "fine_uf1", "fine_uar")


def subject_of(row: dict) -> str:
    """Subjects are per dataset: CASME II's subject 1 is not SAMM's."""
    return f"{row.get('dataset', '')}/{row.get('subject', '')}"


def split_subjects(rows: list[dict], folds: str, seed: int) -> list[list[str]]:
    """LOSO: one subject per fold. k-fold: subjects in a seeded order, biggest first, each into the fold
    with the fewest questions so far (folds balanced by question count)."""
    counts = Counter(subject_of(r) for r in rows)
    subjects = sorted(counts)
    if len(subjects) < 2:
        raise InputError(f"--folds {folds} — the data has {len(subjects)} subject; cross-validation needs 2+")
    if folds == "loso":
        return [[s] for s in subjects]
    k = int(folds)
    if k > len(subjects):
        raise InputError(f"--folds {k} — more folds than the data's {len(subjects)} subjects")
    random.Random(seed).shuffle(subjects)
    groups: list[list[str]] = [[] for _ in range(k)]
    load = [0] * k
    for s in sorted(subjects, key=lambda s: -counts[s]):  # stable: ties keep the seeded order
        i = load.index(min(load))
        groups[i].append(s)
        load[i] += counts[s]
    return [sorted(g) for g in groups]


def plan_folds(cfg: CVConfig, rows: list[dict], out: Path, shard: Shard) -> list[list[str]]:
    """folds.json: written once (with its seed and the data's hash), then reused on every rerun."""
    path = out / "folds.json"
    data_hash = hash_file(Path(cfg.train.data))
    if path.exists():
        saved = json.loads(path.read_text())
        if (saved["folds_arg"], saved["seed"], saved["data_hash"]) != (cfg.folds, cfg.fold_seed, data_hash):
            raise InputError(
                f"--out {out} — holds the folds of --folds {saved['folds_arg']} (seed {saved['seed']}) on "
                "another data file or split; use another --out (or delete it) to split anew"
            )
        return saved["folds"]
    folds = split_subjects(rows, cfg.folds, cfg.fold_seed)
    record = {
        "folds_arg": cfg.folds,
        "seed": cfg.fold_seed,
        "data": cfg.train.data,
        "data_hash": data_hash,
        "folds": folds,
    }
    if shard.main:
        atomic_write(path, json.dumps(record, indent=1) + "\n")
    return folds


def _fold_data(rows: list[dict], held: list[str], folder: Path) -> tuple[Path, Path]:
    test = set(held)
    write_jsonl(folder / "train.jsonl", [r for r in rows if subject_of(r) not in test])
    write_jsonl(folder / "test.jsonl", [r for r in rows if subject_of(r) in test])
    return folder / "train.jsonl", folder / "test.jsonl"


def run_fold(cfg: CVConfig, rows: list[dict], held: list[str], folder: Path, shard: Shard) -> None:
    """Train (or resume) this fold's adapter on the other subjects, then answer its held-out subjects."""
    if shard.main and not (folder / "test.jsonl").exists():
        _fold_data(rows, held, folder)
    shard.barrier()
    adapter = folder / "adapter"
    if not (adapter / "mevqa.yaml").exists():  # written last: a fold killed while saving trains again
        resume = (adapter / "checkpoints").exists()
        train_cfg = dataclasses.replace(
            cfg.train,
            data=str(folder / "train.jsonl"),
            out=str(adapter),
            eval_data=None,
            resume=resume,
            overwrite=False,
        )
        train(train_cfg)
        shard.barrier()
    held_out = cfg.train.eval_config(str(folder / "test.jsonl"), str(folder / "eval"), adapter=str(adapter))
    run_eval(dataclasses.replace(held_out, batch_size=cfg.eval_batch_size))
    shard.barrier()


def _done(folder: Path) -> bool:
    return (folder / "eval" / "metrics.json").exists() and (folder / "eval" / "report.md").exists()


def _say_what_folds_decide(train: TrainConfig) -> None:
    """A recipe's held-out and resume settings (tiny_synthme.yaml scores held-out data while it trains) are
    not what a fold uses: say so rather than drop them quietly."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    given = [f"{k}={getattr(train, k)}" for k in CV_PER_FOLD if getattr(train, k) != defaults[k]]
    if given:
        log.warning(
            "cv decides %s per fold: the recipe's %s are not used", ", ".join(CV_PER_FOLD), ", ".join(given)
        )


def cross_validate(cfg: CVConfig) -> dict[str, Any] | None:
    """Every fold, then the pooled score; returns the summary (None in the non-main processes)."""
    _say_what_folds_decide(cfg.train)
    out = Path(cfg.train.out)
    rows = [r for r in read_jsonl(cfg.train.data) if str(r.get("answer", "")).strip()]
    if not rows:
        raise InputError(f"train.data {cfg.train.data} — no rows with answers")
    shard = Shard.current(cfg.train.model.device)  # once: the launcher's process group for every fold
    folds = plan_folds(cfg, rows, out, shard)
    main = shard.main
    for k, held in enumerate(tqdm(folds, desc="folds", unit="fold", disable=not main), start=1):
        folder = out / f"fold-{k}"
        if _done(folder):
            log.info("fold %d of %d: done already", k, len(folds))
            continue
        run_fold(cfg, rows, held, folder, shard)
    return pool(cfg, out, folds) if main else None


def pool(cfg: CVConfig, out: Path, folds: list[list[str]]) -> dict[str, Any]:
    """The composite protocol: every fold's predictions scored together; plus each fold alone."""
    gold, answers, per_fold = [], {}, []
    for k in range(1, len(folds) + 1):
        test = read_jsonl(out / f"fold-{k}" / "test.jsonl")
        preds = read_jsonl(out / f"fold-{k}" / "eval" / "predictions.jsonl")
        fold_answers = {row_id(p): None if p.get("error") else p["answer"] for p in preds}
        gold += test
        answers |= fold_answers
        per_fold.append({"fold": k, "subjects": folds[k - 1], **score_rows(test, fold_answers)["overall"]})
    write_jsonl(
        out / "predictions.jsonl",
        [
            p
            for k in range(1, len(folds) + 1)
            for p in read_jsonl(out / f"fold-{k}" / "eval" / "predictions.jsonl")
        ],
    )
    metrics = score_rows(gold, answers, "gt")
    metrics["per_fold"] = per_fold
    metrics["fold_mean_std"] = {k: _mean_std([f[k] for f in per_fold]) for k in FOLD_KEYS}
    metrics["settings"] = {**to_dict(cfg), "folds": folds}
    files = [write_json(out / "metrics.json", metrics), *confusions(gold, answers, out)]
    files.append(atomic_write(out / "report.md", report_md(metrics)))
    return {"metrics": metrics, "files": files}


def _mean_std(values: list[float | None]) -> dict[str, float | None]:
    v = [x for x in values if x is not None]
    return {"mean": statistics.fmean(v) if v else None, "std": statistics.pstdev(v) if len(v) > 1 else 0.0}


def _cell(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def report_md(m: dict[str, Any]) -> str:
    head = "| fold | subjects | n | " + " | ".join(FOLD_KEYS) + " |"
    lines = [
        "# mevqa cross-validation report",
        "",
        "## Pooled over every fold (composite protocol)",
        "",
        markdown_table(m),
        "",
        "## Per fold",
        "",
        head,
        "|---" * (3 + len(FOLD_KEYS)) + "|",
    ]
    for f in m["per_fold"]:
        subjects = ", ".join(f["subjects"])[:60]
        lines.append(
            f"| {f['fold']} | {subjects} | {f['n']} | " + " | ".join(_cell(f[k]) for k in FOLD_KEYS) + " |"
        )
    ms = m["fold_mean_std"]
    lines.append(
        "| mean ± std | | | "
        + " | ".join(f"{_cell(ms[k]['mean'])} ± {_cell(ms[k]['std'])}" for k in FOLD_KEYS)
        + " |"
    )
    lines += ["", "Confusion matrices (pooled): `confusion_coarse.png`, `confusion_fine.png`.", ""]
    return "\n".join(lines)
