"""Readable results: a terminal table, report.md and confusion-matrix PNGs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mevqa.config import EvalConfig
from mevqa.data.megc import row_id, write_submissions
from mevqa.evaluation.metrics import METRIC_KEYS, rouge1_each, score_rows
from mevqa.evaluation.parse import parse_label
from mevqa.facs import COARSE_LABELS, FINE_LABELS
from mevqa.io import atomic_write
from mevqa.prompts import classify

SHORT = {
    "coarse_uf1": "UF1-C",
    "coarse_uar": "UAR-C",
    "fine_uf1": "UF1-F",
    "fine_uar": "UAR-F",
    "au_f1": "AU-F1",
    "au_presence_acc": "AU-pres",
    "au_side_acc": "AU-side",
    "bleu": "BLEU",
    "rouge1": "ROUGE-1",
    "score": "score",
    "n": "n",
    "missing": "missing",
}


def _cell(v: object) -> str:
    if v is None:
        return "—"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def table_rows(metrics: dict) -> list[tuple[str, dict]]:
    return [("overall", metrics["overall"]), *metrics.get("per_dataset", {}).items()]


def format_table(metrics: dict) -> str:
    """Fixed-width table: one row overall, one per dataset."""
    head = f"{'':<10}" + "".join(f"{SHORT[k]:>9}" for k in METRIC_KEYS)
    lines = [head] + [
        f"{name:<10}" + "".join(f"{_cell(m.get(k)):>9}" for k in METRIC_KEYS)
        for name, m in table_rows(metrics)
    ]
    return "\n".join(lines)


def markdown_table(metrics: dict) -> str:
    head = "| | " + " | ".join(SHORT[k] for k in METRIC_KEYS) + " |"
    sep = "|---" * (len(METRIC_KEYS) + 1) + "|"
    rows = [
        f"| {name} | " + " | ".join(_cell(m.get(k)) for k in METRIC_KEYS) + " |"
        for name, m in table_rows(metrics)
    ]
    return "\n".join([head, sep, *rows])


TIMING_NOTE = (
    "Timing: `process_seconds` runs from the start of the process (interpreter, imports, model load, "
    "answering, scoring and plots) to the moment this record was written; `answering_seconds` is the "
    "answering alone. `runs` in metrics.json lists every run with these settings; `run` is the latest "
    "that answered questions (a rerun that found everything answered does not replace its timing)."
)


def write_json(path: str | Path, data: dict) -> Path:
    return atomic_write(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (imported on first plot: it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


CELL, PAD = 40, 8  # confusion PNG: pixels per matrix cell, and around the text


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # a scalable font (Pillow >= 10.1 with FreeType)
    except (TypeError, ImportError):
        return ImageFont.load_default()


def _blue(v: float) -> tuple[int, int, int]:
    """White -> dark blue by a cell's share of its row (matplotlib's "Blues" at both ends)."""
    lo, hi = (247, 251, 255), (8, 48, 107)
    return tuple(round(a + (b - a) * v) for a, b in zip(lo, hi))  # type: ignore[return-value]


def confusion_png(gold: list[str], pred: list[str], labels: list[str], title: str, path: str | Path) -> Path:
    """Row-normalised confusion matrix; predictions outside `labels` are collected as "other".

    Drawn with Pillow, cell by cell: matplotlib took ~0.3 s a figure plus ~0.5 s to import, longer than
    answering a small test set on a GPU."""
    from PIL import Image, ImageDraw

    cols = [*labels, "other"]
    index = {c: j for j, c in enumerate(cols)}
    cm = [[0] * len(cols) for _ in labels]
    for g, p in zip(gold, pred):
        if g in index and index[g] < len(labels):
            cm[index[g]][index.get(p, len(labels))] += 1
    font, small = _font(13), _font(11)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = max(measure.textlength(t, font=font) for t in labels) + 2 * PAD + 16
    top = max(measure.textlength(t, font=font) for t in cols) + 2 * PAD + 34
    w, h = int(left + CELL * len(cols) + PAD), int(top + CELL * len(labels) + PAD)
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    draw.text((PAD, PAD), title, fill="black", font=font)
    for j, c in enumerate(cols):  # column labels written upwards, as rotated tick labels
        tw = int(measure.textlength(c, font=font))
        label = Image.new("RGB", (tw + 2, 18), "white")
        ImageDraw.Draw(label).text((0, 0), c, fill="black", font=font)
        rotated = label.rotate(90, expand=True)
        img.paste(rotated, (int(left + CELL * j + CELL / 2 - 9), int(top - PAD - rotated.height)))
    for i, row in enumerate(cm):
        y = top + CELL * i
        draw.text((left - PAD, y + CELL / 2), labels[i], fill="black", font=font, anchor="rm")
        for j, n in enumerate(row):
            share = n / max(1, sum(row))
            x = left + CELL * j
            draw.rectangle((x, y, x + CELL, y + CELL), fill=_blue(share), outline=(220, 220, 220))
            ink = "white" if share > 0.5 else "black"
            draw.text((x + CELL / 2, y + CELL / 2), str(n), fill=ink, font=small, anchor="mm")
    draw.text((PAD, top - PAD - 12), "gold \\ predicted", fill="gray", font=small)
    img.save(path, optimize=False)
    return Path(path)


def write_report_md(
    path: str | Path,
    metrics: dict | None,
    settings: dict,
    run: dict,
    worst: list[dict],
    counts: dict,
    plots: Sequence[str] = (),
) -> Path:
    """report.md: metrics (overall, per dataset, per question type), worst examples, settings."""
    out = ["# mevqa evaluation report", ""]
    out += [f"- questions: {counts['n']}, answered: {counts['answered']}, errors: {counts['errors']}", ""]
    if metrics:
        out += [
            "## Metrics",
            "",
            markdown_table(metrics),
            "",
            "## Per question type",
            "",
            "| type | n | BLEU | ROUGE-1 |",
            "|---|---|---|---|",
        ]
        out += [
            f"| {t} | {m['n']} | {_cell(m['bleu'])} | {_cell(m['rouge1'])} |"
            for t, m in metrics["per_question_type"].items()
        ]
        out += ["", "Confusion matrices: " + ", ".join(f"`{p}`" for p in plots) + ".", ""] if plots else [""]
    else:
        out += ["No gold answers in the input: no metrics (see the submission files).", ""]
    if worst:
        out += [
            "## 10 worst examples",
            "",
            "| id | question | gold | answer | ROUGE-1 / error |",
            "|---|---|---|---|---|",
        ]
        for w in worst:
            cells = [w["id"], w["question"], w["gold"], w["answer"], w["why"]]
            out.append(
                "| " + " | ".join(str(c).replace("|", "/").replace("\n", " ")[:120] for c in cells) + " |"
            )
        out.append("")
    out += [
        "## Settings",
        "",
        "```json",
        json.dumps(settings, indent=2),
        "```",
        "",
        "## Run",
        "",
        TIMING_NOTE,
        "",
        "```json",
        json.dumps(run, indent=2),
        "```",
        "",
    ]
    return atomic_write(path, "\n".join(out))


def _worst(preds: list[dict], k: int = 10) -> list[dict]:
    """Errors first, then the lowest ROUGE-1 against gold."""
    gold = [p for p in preds if p.get("gold") is not None]
    scores = rouge1_each([str(p["gold"]) for p in gold], [p["answer"] for p in gold])
    ranked = sorted(zip(gold, scores), key=lambda x: (not x[0].get("error"), x[1]))
    return [
        {
            "id": p.get("id", p.get("video_id")),
            "question": p["question"],
            "gold": p["gold"],
            "answer": p["answer"],
            "why": p["error"] or f"{s:.2f}",
        }
        for p, s in ranked[:k]
    ]


def confusions(rows: list[dict], answers: dict[str, str | None], out: Path) -> list[Path]:
    """confusion_coarse.png / confusion_fine.png where gold holds two classes or more: a one-class matrix
    is a single row whose share is the accuracy already in the table (its file from an earlier run goes)."""
    paths = []
    for qtype, labels in (("coarse", COARSE_LABELS), ("fine", FINE_LABELS)):
        pairs = [
            (parse_label(str(r["answer"]), qtype), parse_label(answers.get(row_id(r)) or "", qtype))
            for r in rows
            if classify(r["question"])[0] == qtype and str(r.get("answer", "")).strip()
        ]
        present = [lab for lab in labels if lab in {g for g, _ in pairs}]
        path = out / f"confusion_{qtype}.png"
        if len(present) < 2:
            path.unlink(missing_ok=True)
            continue
        title = f"{qtype} (rows: gold)"
        paths.append(confusion_png([g for g, _ in pairs], [p for _, p in pairs], present, title, path))
    return paths


@dataclass
class Scored:
    """What a finished eval writes before its run record: submissions, metrics, confusion PNGs."""

    metrics: dict | None
    files: list[Path]
    counts: dict
    worst: list[dict]


def score_outputs(
    cfg: EvalConfig,
    rows: list[dict],
    preds: list[dict],
    test: bool,
    deliver: tuple[list[dict], list[dict]] | None = None,
) -> Scored:
    """Submission files (test input; from `deliver`'s rows and predictions when given, else these), metrics
    and confusion PNGs (gold input, unless `cfg.plots` is off). metrics.json and report.md come after, in
    `write_records`, so the run's time they record includes this work."""
    out = Path(cfg.out)
    answers = {row_id(p): (None if p.get("error") else p["answer"]) for p in preds}
    files = [out / "predictions.jsonl"]
    if test:
        sub_rows, sub_preds = deliver or (rows, preds)
        sub = {row_id(p): "" if p.get("error") else p["answer"] for p in sub_preds}
        files += write_submissions(sub_rows, sub, out)
    metrics = None
    if any(str(r.get("answer", "")).strip() for r in rows):
        metrics = score_rows(rows, answers, cfg.label_set)
        if cfg.plots:
            files += confusions(rows, answers, out)
    counts = {
        "n": len(rows),
        "answered": sum(v is not None for v in answers.values()),
        "errors": sum(1 for p in preds if p.get("error")),
    }
    return Scored(metrics, files, counts, _worst(preds))


def write_records(out: Path, scored: Scored, settings: dict, run: dict, runs: list[dict]) -> dict:
    """metrics.json (with `run`: the run whose timing the answers have, and every run of these settings)
    and report.md; the summary the CLI prints from."""
    files = list(scored.files)
    if scored.metrics is not None:
        metrics = {**scored.metrics, "run": run, "runs": runs, "settings": settings}
        files.insert(1, write_json(out / "metrics.json", metrics))
    plots = [f.name for f in files if f.suffix == ".png"]
    md = write_report_md(out / "report.md", scored.metrics, settings, run, scored.worst, scored.counts, plots)
    files.append(md)
    return {"metrics": scored.metrics, "files": files, "counts": scored.counts, "run": run, "runs": runs}


def plot_training(out: Path, losses: list[tuple[int, float]], evals: list[dict]) -> Path:
    """training.png: the per-step loss, its running mean and the held-out coarse UF1 by step."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    if losses:
        steps, values = [s for s, _ in losses], [v for _, v in losses]
        ax.plot(steps, values, color="tab:blue", alpha=0.25, linewidth=0.6)
        k = max(1, len(values) // 50)  # per-step loss swings with the question type: show a running mean
        smooth = [
            sum(values[max(0, i - k + 1) : i + 1]) / len(values[max(0, i - k + 1) : i + 1])
            for i in range(len(values))
        ]
        ax.plot(steps, smooth, color="tab:blue", label=f"train loss (mean of {k})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    if evals:
        ax2 = ax.twinx()
        ax2.plot(
            [e["step"] for e in evals],
            [e.get("coarse_uf1") or 0 for e in evals],
            "o-",
            color="tab:red",
            label="held-out coarse UF1",
        )
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("held-out coarse UF1")
    fig.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(out / "training.png", dpi=100)
    plt.close(fig)
    return out / "training.png"
