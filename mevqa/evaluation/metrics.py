"""MEGC ME-VQA metrics: small functions over lists, built on scikit-learn, sacrebleu and rouge-score."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from functools import lru_cache

from sklearn.metrics import f1_score, recall_score

from mevqa.data.megc import row_dataset, row_id
from mevqa.evaluation.parse import parse_aus, parse_label
from mevqa.prompts import classify

LABEL_SETS = ("gt", "union")
METRIC_KEYS = (
    "coarse_uf1",
    "coarse_uar",
    "fine_uf1",
    "fine_uar",
    "au_f1",
    "au_presence_acc",
    "au_side_acc",
    "bleu",
    "rouge1",
    "score",
    "n",
    "missing",
)
SCORE_PARTS = ("coarse_uf1", "coarse_uar", "fine_uf1", "fine_uar", "bleu", "rouge1")


def _classes(gold: Sequence[str], pred: Sequence[str], label_set: str) -> list[str]:
    return sorted(set(gold) | set(pred)) if label_set == "union" else sorted(set(gold))


def uf1(gold: Sequence[str], pred: Sequence[str], label_set: str = "gt") -> float | None:
    """Unweighted F1: mean over classes of 2TP/(2TP+FP+FN); classes = ground truth (or the union)."""
    if not gold:
        return None
    labels = _classes(gold, pred, label_set)
    return float(f1_score(gold, pred, labels=labels, average="macro", zero_division=0))


def uar(gold: Sequence[str], pred: Sequence[str], label_set: str = "gt") -> float | None:
    """Unweighted average recall: mean over classes of TP/(TP+FN)."""
    if not gold:
        return None
    labels = _classes(gold, pred, label_set)
    return float(recall_score(gold, pred, labels=labels, average="macro", zero_division=0))


def set_f1(gold: set[str], pred: set[str]) -> float:
    if not gold and not pred:
        return 1.0
    return 2 * len(gold & pred) / (len(gold) + len(pred))


def accuracy(gold: Sequence[str], pred: Sequence[str]) -> float | None:
    return sum(g == p for g, p in zip(gold, pred)) / len(gold) if gold else None


def bleu(refs: Sequence[str], hyps: Sequence[str]) -> float | None:
    """Corpus BLEU-4 (sacrebleu defaults, lowercased) on 0-1.

    None when no reference has four tokens (e.g. SMIC's one-word coarse answers): BLEU-4 has no
    4-grams to count there, and sacrebleu's 0.0 would read as "all wrong" even for perfect answers.
    """
    import sacrebleu

    if not refs or max(len(r.split()) for r in refs) < 4:
        return None
    return float(sacrebleu.corpus_bleu(list(hyps), [list(refs)], lowercase=True).score / 100)


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)


def rouge1_each(refs: Sequence[str], hyps: Sequence[str]) -> list[float]:
    return [_rouge().score(r, h)["rouge1"].fmeasure for r, h in zip(refs, hyps)]


def rouge1(refs: Sequence[str], hyps: Sequence[str]) -> float | None:
    """Mean ROUGE-1 F-measure (rouge-score, stemming on)."""
    return sum(rouge1_each(refs, hyps)) / len(refs) if refs else None


def compute(items: list[tuple[dict, str | None]], label_set: str = "gt") -> dict:
    """All metrics for (gold row, predicted text or None if missing) pairs; None = no questions for it."""
    by_type: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for gold, pred in items:
        by_type[classify(gold["question"])[0]].append((str(gold["answer"]), pred or ""))

    def labels(qtype: str) -> tuple[list[str], list[str]]:
        pairs = by_type.get(qtype, [])
        return [parse_label(g, qtype) for g, _ in pairs], [parse_label(p, qtype) for _, p in pairs]

    out: dict = {}
    for qtype in ("coarse", "fine"):
        g, p = labels(qtype)
        out[f"{qtype}_uf1"], out[f"{qtype}_uar"] = uf1(g, p, label_set), uar(g, p, label_set)
    au = by_type.get("au_list", [])
    out["au_f1"] = sum(set_f1(parse_aus(g), parse_aus(p)) for g, p in au) / len(au) if au else None
    out["au_presence_acc"] = accuracy(*labels("au_presence"))
    out["au_side_acc"] = accuracy(*labels("au_side"))
    # BLEU / ROUGE-1 pool every question, the free-text ones (combined, v2 analysis) with the one-word ones;
    # which answers the official v2 BLEU/ROUGE cover is not known (per_question_type gives them apart)
    refs, hyps = [str(g["answer"]) for g, _ in items], [p or "" for _, p in items]
    out["bleu"], out["rouge1"] = bleu(refs, hyps), rouge1(refs, hyps)
    parts = [out[k] for k in SCORE_PARTS if out[k] is not None]
    out["score"] = sum(parts) / len(parts) if parts else None
    out["n"], out["missing"] = len(items), sum(p is None for _, p in items)
    return out


def score_rows(gold_rows: list[dict], predictions: dict[str, str | None], label_set: str = "gt") -> dict:
    """metrics.json content: overall, per dataset, per question type (n, bleu, rouge1).

    `predictions` maps row id -> answer text; ids absent (or None) are missing and count as "".
    """
    if label_set not in LABEL_SETS:
        raise ValueError(f"label_set must be one of {LABEL_SETS}")
    items = [(g, predictions.get(row_id(g))) for g in gold_rows]
    by_ds: dict[str, list] = defaultdict(list)
    by_type: dict[str, list] = defaultdict(list)
    for g, p in items:
        by_ds[row_dataset(g)].append((g, p))
        by_type[classify(g["question"])[0]].append((g, p))
    per_type = {}
    for t, its in sorted(by_type.items()):
        refs, hyps = [str(g["answer"]) for g, _ in its], [p or "" for _, p in its]
        per_type[t] = {"n": len(its), "bleu": bleu(refs, hyps), "rouge1": rouge1(refs, hyps)}
    return {
        "overall": compute(items, label_set),
        "per_dataset": {ds: compute(its, label_set) for ds, its in sorted(by_ds.items())},
        "per_question_type": per_type,
    }
