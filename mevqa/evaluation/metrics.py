"""MEGC ME-VQA metrics: small functions over lists, built on sacrebleu and rouge-score.

UF1 and UAR are counted here (tests/test_metrics.py checks them against scikit-learn): scikit-learn costs
about 1.5 s of imports (scipy) for sums over a few hundred labels, more than the rest of the scoring.
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache

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


def _counts(gold: Sequence[str], pred: Sequence[str]) -> tuple[Counter, Counter, Counter]:
    """Per class: true positives, gold occurrences (TP + FN) and predicted occurrences (TP + FP)."""
    return Counter(g for g, p in zip(gold, pred) if g == p), Counter(gold), Counter(pred)


def uf1(gold: Sequence[str], pred: Sequence[str], label_set: str = "gt") -> float | None:
    """Unweighted F1: mean over classes of 2TP/(2TP+FP+FN); classes = ground truth (or the union).
    A class with no TP, FP or FN scores 0 (scikit-learn's `zero_division=0`)."""
    if not gold:
        return None
    labels = _classes(gold, pred, label_set)
    tp, real, said = _counts(gold, pred)
    return sum(2 * tp[c] / (real[c] + said[c]) if real[c] + said[c] else 0.0 for c in labels) / len(labels)


def uar(gold: Sequence[str], pred: Sequence[str], label_set: str = "gt") -> float | None:
    """Unweighted average recall: mean over classes of TP/(TP+FN) (0 for a class never in gold)."""
    if not gold:
        return None
    labels = _classes(gold, pred, label_set)
    tp, real, _ = _counts(gold, pred)
    return sum(tp[c] / real[c] if real[c] else 0.0 for c in labels) / len(labels)


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


@contextmanager
def _hidden(*names: str) -> Iterator[None]:
    """`import NAME` fails inside this block for the packages not imported yet (and works again after)."""
    hidden = [n for n in names if n not in sys.modules]
    sys.modules.update(dict.fromkeys(hidden))  # a None entry makes `import n` raise ImportError
    try:
        yield
    finally:
        for n in hidden:
            if sys.modules.get(n) is None:
                del sys.modules[n]


@lru_cache(maxsize=1)
def _rouge():
    # rouge-score imports all of nltk for its Porter stemmer, and nltk's SVM parser and scikit-learn wrapper
    # pull in scipy and scikit-learn (~1.2 s, most of the scoring's time); nltk guards each of these imports
    # (`except ImportError`), and neither is used here, so they are hidden while it is imported
    with _hidden("scipy", "scipy.sparse", "scipy.stats", "sklearn"):
        from rouge_score import rouge_scorer, tokenizers

    class Cached(tokenizers.Tokenizer):
        """The default tokenizer with Porter stemming, remembered per text: the same answers are scored
        overall, per dataset, per question type and for the worst examples, and stemming is the cost."""

        def __init__(self) -> None:
            self._tokens = lru_cache(maxsize=65536)(tokenizers.DefaultTokenizer(use_stemmer=True).tokenize)

        def tokenize(self, text: str) -> list[str]:
            return self._tokens(text)

    return rouge_scorer.RougeScorer(["rouge1"], tokenizer=Cached())


@lru_cache(maxsize=65536)
def _rouge1(ref: str, hyp: str) -> float:
    return _rouge().score(ref, hyp)["rouge1"].fmeasure


def rouge1_each(refs: Sequence[str], hyps: Sequence[str]) -> list[float]:
    return [_rouge1(r, h) for r, h in zip(refs, hyps)]


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
