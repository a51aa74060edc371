"""Readable results: a terminal table, report.md and confusion-matrix PNGs."""

from __future__ import annotations

import json
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


def write_json(path: str | Path, data: dict) -> Path:
    return atomic_write(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (imported on first plot: it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_png(gold: list[str], pred: list[str], labels: list[str], title: str, path: str | Path) -> Path:
    """Row-normalised confusion matrix; predictions outside `labels` are collected as "other"."""
    from sklearn.metrics import confusion_matrix

    plt = _pyplot()

    cols = [*labels, "other"]
    pred = [p if p in labels else "other" for p in pred]
    cm = confusion_matrix(gold, pred, labels=cols)[: len(labels)]
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(cols), 1.0 + 0.6 * len(labels)))
    norm = cm / cm.sum(axis=1, keepdims=True).clip(min=1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(cols)):
            ax.text(
                j, i, str(cm[i, j]), ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black"
            )
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def write_report_md(
    path: str | Path, metrics: dict | None, settings: dict, run: dict, worst: list[dict], counts: dict
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
        out += ["", "Confusion matrices: `confusion_coarse.png`, `confusion_fine.png`.", ""]
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
    paths = []
    for qtype, labels in (("coarse", COARSE_LABELS), ("fine", FINE_LABELS)):
        pairs = [
            (parse_label(str(r["answer"]), qtype), parse_label(answers.get(row_id(r)) or "", qtype))
            for r in rows
            if classify(r["question"])[0] == qtype and str(r.get("answer", "")).strip()
        ]
        if pairs:
            present = [lab for lab in labels if lab in {g for g, _ in pairs}]
            paths.append(
                confusion_png(
                    [g for g, _ in pairs],
                    [p for _, p in pairs],
                    present,
                    f"{qtype} (rows: gold)",
                    out / f"confusion_{qtype}.png",
                )
            )
    return paths


def write_outputs(
    cfg: EvalConfig,
    rows: list[dict],
    preds: list[dict],
    settings: dict,
    run: dict,
    test: bool,
    deliver: tuple[list[dict], list[dict]] | None = None,
) -> dict:
    """Submission files (test input; from `deliver`'s rows and predictions when given, else these),
    metrics.json + confusion PNGs (gold input) and report.md."""
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
        metrics["run"] = run
        metrics["settings"] = settings
        files.append(write_json(out / "metrics.json", metrics))
        files += confusions(rows, answers, out)
    counts = {
        "n": len(rows),
        "answered": sum(v is not None for v in answers.values()),
        "errors": sum(1 for p in preds if p.get("error")),
    }
    files.append(write_report_md(out / "report.md", metrics, settings, run, _worst(preds), counts))
    return {"metrics": metrics, "files": files, "counts": counts, "run": run}


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
