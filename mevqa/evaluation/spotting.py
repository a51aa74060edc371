"""Long-video metrics: interval spotting (MEGC), STRS for ME-STR (the organisers' evaluator, and a strict
one-to-one variant) and the ME-LVQA question metrics. Rules: shared/megc/2026/README.md.

Intervals are `mevqa.data.longvideo.Interval`s (or dicts with the same keys), frames inclusive. Two
matching rules exist and both are here, because they give different numbers on the same files:
- strict (`spotting_scores`, `strs_strict`): one-to-one, greedy by descending IoU within each video,
  every prediction and every ground truth counted;
- official (`strs_official`): the public STRS evaluator (github.com/genbing99/STRS-Metric) re-implemented
  without pandas, quirks included (see its docstring), so that a score here is the leaderboard's.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, is_dataclass, replace

from sklearn.metrics import f1_score, recall_score

from mevqa.data.longvideo import TYPE_ANSWERS, TYPES, Interval, as_intervals
from mevqa.data.megc import row_dataset, row_id
from mevqa.errors import InputError
from mevqa.evaluation.metrics import uar, uf1
from mevqa.evaluation.parse import parse_aus
from mevqa.facs import AU_NAMES, normalise, normalise_label
from mevqa.prompts import LVQA_QUESTION_TYPES, classify

IOU_MIN = 0.5
NAN = float("nan")


@dataclass(frozen=True)
class Match:
    """A spotting hit: a prediction paired with a ground-truth interval."""

    pred: Interval
    gold: Interval
    iou: float


def iou(a: Interval, b: Interval) -> float:
    """IoU of the inclusive frame sets onset..offset (0 when they do not overlap)."""
    inter = max(0, min(a.offset, b.offset) - max(a.onset, b.onset) + 1)
    union = a.length + b.length - inter
    return inter / union if union > 0 else 0.0


def _prf(tp: int, fp: int, fn: int) -> dict:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "precision": p, "recall": r, "f1": f1}


def _subject_key(subject: str | None) -> str | None:
    """Subjects compare as numbers when they are digits (006 = 6), as pandas reads a CSV column."""
    if subject is None:
        return None
    s = str(subject).strip()
    return str(int(s)) if s.isdigit() else s


def _fill_subjects(pred: list[Interval], gold: list[Interval]) -> list[Interval]:
    """A prediction without a subject takes its video's subject when gold has that video under one."""
    owners: dict[str, set] = defaultdict(set)
    for g in gold:
        owners[g.video].add(g.subject)
    return [
        replace(p, subject=next(iter(owners[p.video])))
        if p.subject is None and len(owners.get(p.video, ())) == 1
        else p
        for p in pred
    ]


def _by_video(items: list[Interval]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, x in enumerate(items):
        groups[(_subject_key(x.subject), x.video)].append(i)
    return groups


def match(
    pred: list[Interval], gold: list[Interval], iou_min: float = IOU_MIN
) -> list[tuple[int, int, float]]:
    """One-to-one hits (pred index, gold index, IoU): within each (subject, video), the pair of highest
    IoU first, ties broken by file order, each interval used at most once."""
    if not 0 < iou_min <= 1:
        raise InputError(f"iou_min {iou_min} — must be in (0, 1]")
    gold_groups = _by_video(gold)
    hits = []
    for key, pis in _by_video(pred).items():
        cands = sorted(
            (-v, pi, gi)
            for pi in pis
            for gi in gold_groups.get(key, ())
            if (v := iou(pred[pi], gold[gi])) >= iou_min
        )
        used_p, used_g = set(), set()
        for neg, pi, gi in cands:
            if pi not in used_p and gi not in used_g:
                used_p.add(pi)
                used_g.add(gi)
                hits.append((pi, gi, -neg))
    return sorted(hits)


def _spot(pred: list[Interval], gold: list[Interval], iou_min: float) -> tuple[dict, list[Match]]:
    hits = match(pred, gold, iou_min)
    counts = _prf(len(hits), len(pred) - len(hits), len(gold) - len(hits))
    counts.update(n_pred=len(pred), n_gold=len(gold))
    return counts, [Match(pred[p], gold[g], v) for p, g, v in hits]


def spotting_scores(pred: Sequence, gold: Sequence, iou_min: float = IOU_MIN) -> dict:
    """MEGC spotting: TP/FP/FN, precision, recall, F1 pooled over all videos, one-to-one matching.

    `overall` ignores types. `micro` / `macro` match each class on its own: predictions of that type
    (their own `type` field) against ground truths of that type, so an unmatched prediction is an FP of
    its own class and a missed ground truth an FN of its class; untyped intervals are left out of the
    classes and counted under `untyped`. `pairs` holds the overall hits (`Match`).
    """
    gold = as_intervals(list(gold))
    pred = _fill_subjects(as_intervals(list(pred)), gold)
    out: dict = {"iou_min": iou_min}
    out["overall"], out["pairs"] = _spot(pred, gold, iou_min)
    for t in TYPES:
        out[t], _ = _spot([p for p in pred if p.type == t], [g for g in gold if g.type == t], iou_min)
    out["untyped"] = {"pred": sum(p.type is None for p in pred), "gold": sum(g.type is None for g in gold)}
    return out


# ---------------------------------------------------------------- STRS, as the organisers compute it
def _official_video(preds: list[Interval], golds: list[Interval]) -> tuple[list[Match], int, int]:
    """Predictions in order, each against every still-unmatched ground truth, no stop at the first hit."""
    hits, fp, matched = [], 0, set()
    for p in preds:
        hit = False
        for gi, g in enumerate(golds):
            v = iou(p, g)
            if v >= IOU_MIN and gi not in matched:
                hits.append(Match(p, g, v))
                matched.add(gi)
                hit = True
        fp += not hit
    return hits, fp, len(golds) - len(matched)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else NAN  # numpy's mean of nothing


def _official_analysis(hits: list[Match], emotions: set[str]) -> dict:
    """Per emotion one-vs-rest on the hits; sklearn's confusion matrix of a single label value is one
    cell, which the evaluator's `except` turns into TP = FP = FN = 0 (P = R = 0, even when all right)."""
    ps, rs, fs = [], [], []
    tp_a = fp_a = 0
    for e in emotions:
        g = [m.gold.emotion == e for m in hits]
        p = [m.pred.emotion == e for m in hits]
        tp_a += sum(a and b for a, b in zip(g, p))
        fp_a += sum(b and not a for a, b in zip(g, p))
        if len(set(g) | set(p)) < 2:
            tp = fp = fn = 0
        else:
            tp = sum(a and b for a, b in zip(g, p))
            fp, fn = sum(b and not a for a, b in zip(g, p)), sum(a and not b for a, b in zip(g, p))
        prf = _prf(tp, fp, fn)
        ps.append(prf["precision"])
        rs.append(prf["recall"])
        fs.append(prf["f1"])
    pm, rm = _mean(ps), _mean(rs)
    f1 = 2 * pm * rm / (pm + rm) if pm + rm else NAN  # numpy's 0/0: a STRS of nan, not 0
    # its FN count takes the rows whose *prediction* is the emotion, so FN analysis == FP analysis
    return {
        "tp": tp_a,
        "fp": fp_a,
        "fn": fp_a,
        "precision": pm,
        "recall": rm,
        "f1": f1,
        "uf1": _mean(fs),
        "uar": pm,
    }


def _gold_emotions(gold: list[Interval], what: str) -> set[str]:
    missing = [g for g in gold if not g.emotion]
    if missing:
        g = missing[0]
        raise InputError(
            f"{what} — ground truth {g.video} {g.onset}-{g.offset} has no emotion (STRS needs one)"
        )
    return {g.emotion for g in gold}  # type: ignore[misc]


def strs_official(pred: Sequence, gold: Sequence) -> dict:
    """STRS exactly as the organisers' public evaluator (STRS-Metric `Evaluator.evaluate_STRS`) gives it.

    Its quirks, kept: predictions are taken in file order and each is compared with every ground truth
    not yet matched, with no stop after a hit (one prediction can be two TPs); only subjects that have
    predictions are evaluated (their other ground truth is not FN), and within them only the videos of
    the ground truth (predictions for other videos are not FP); a prediction without a subject is never
    counted (pandas' NaN equals nothing); emotions compare exactly as written. Analysis uses the spotting
    hits and the emotions of the whole ground truth: per emotion one-vs-rest P and R, F1 = 2·mean(P)·
    mean(R)/(mean(P)+mean(R)), nan when both means are 0; an emotion whose confusion matrix is one cell
    counts P = R = 0; "uar" is the mean of the precisions, "uf1" the mean per-emotion F1.
    """
    pred, gold = as_intervals(list(pred)), as_intervals(list(gold))
    emotions = _gold_emotions(gold, "strs_official")
    hits, fp, fn = [], 0, 0
    subjects = dict.fromkeys(_subject_key(p.subject) for p in pred if p.subject is not None)
    for s in subjects:
        gold_s = [g for g in gold if _subject_key(g.subject) == s]
        for video in dict.fromkeys(g.video for g in gold_s):
            preds = [p for p in pred if p.video == video and _subject_key(p.subject) == s]
            h, f, n = _official_video(preds, [g for g in gold_s if g.video == video])
            hits, fp, fn = hits + h, fp + f, fn + n
    spotting = _prf(len(hits), fp, fn)
    analysis = _official_analysis(hits, emotions)
    return {
        "spotting": spotting,
        "analysis": analysis,
        "strs": spotting["f1"] * analysis["f1"],
        "pairs": hits,
    }


def strs_strict(pred: Sequence, gold: Sequence, iou_min: float = IOU_MIN) -> dict:
    """STRS with one-to-one matching and every interval counted (the defects of the official rules fixed).

    Spotting: `spotting_scores`' overall counts (gold of subjects without predictions are FN,
    predictions for videos absent from gold are FP). Analysis over the matched pairs, classes = every
    emotion of the ground truth (lowercased, synonyms mapped): UF1 (mean per-class F1) and UAR (mean
    per-class recall); a class no pair carries scores 0. analysis F1 := UF1; STRS = spot F1 x UF1.
    """
    gold = as_intervals(list(gold))
    emotions = sorted({normalise_label(e) for e in _gold_emotions(gold, "strs_strict")})
    spot = spotting_scores(pred, gold, iou_min)
    pairs = spot["pairs"]
    g = [normalise_label(m.gold.emotion or "") for m in pairs]
    p = [normalise_label(m.pred.emotion or "") for m in pairs]
    f1 = float(f1_score(g, p, labels=emotions, average="macro", zero_division=0)) if pairs else 0.0
    ar = float(recall_score(g, p, labels=emotions, average="macro", zero_division=0)) if pairs else 0.0
    spotting = {k: spot["overall"][k] for k in ("tp", "fp", "fn", "precision", "recall", "f1")}
    analysis = {"n": len(pairs), "f1": f1, "uf1": f1, "uar": ar}
    return {"spotting": spotting, "analysis": analysis, "strs": spotting["f1"] * f1, "pairs": pairs}


# ---------------------------------------------------------------- ME-LVQA
_NUMBER_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}
_AU_CODE = re.compile(r"\bau ?(\d+)\b")
COUNT_KINDS = {
    "lvqa_count_all": "count_all",
    "lvqa_count_micro": "count_micro",
    "lvqa_count_macro": "count_macro",
}
LVQA_KEYS = (
    *(f"{k}_{m}" for k in COUNT_KINDS.values() for m in ("mae", "rmse")),
    "au_f1",
    "au_jaccard",
    "type_uf1",
    "type_uar",
    "n",
    "missing",
    "unparsed",
)


def parse_count(text: str) -> int | None:
    """The first number in the answer (digits, or a number word up to twenty; "no"/"none" = 0)."""
    t = normalise(text)
    if m := re.search(r"\b\d+\b", t):
        return int(m.group())
    for w in t.split():
        if w in _NUMBER_WORDS:
            return _NUMBER_WORDS[w]
        if w in ("no", "none"):
            return 0
    return None


def parse_type(text: str) -> str:
    """`micro-expression` / `macro-expression` from the first of micro/macro named, else the text itself."""
    t = normalise(text)
    m = re.search(r"\b(micro|macro)", t)
    return TYPE_ANSWERS[m.group(1)] if m else t


def parse_au_set(text: str) -> set[str]:
    """AU names (as the files spell them) named in the text, by name or by code (`AU12`)."""
    codes = {AU_NAMES[int(n)] for n in _AU_CODE.findall(normalise(text)) if int(n) in AU_NAMES}
    return parse_aus(text) | codes


def _jaccard(gold: set[str], pred: set[str]) -> float:
    return len(gold & pred) / len(gold | pred) if gold | pred else 1.0


def _set_f1(gold: set[str], pred: set[str]) -> float:
    return 2 * len(gold & pred) / (len(gold) + len(pred)) if gold or pred else 1.0


def lvqa_dataset(row: Mapping) -> str:
    """`dataset` field, else the video_id prefix (`casme3_test_...`), else the video's naming:
    CAS(ME)³ `dzw_a1` (subject letters, task letter + number), SAMM `1_001_2`."""
    ds = row_dataset(dict(row))
    if ds != "unknown":
        return ds
    video = str(row.get("video", ""))
    if re.fullmatch(r"[a-z]+_[a-z]\d+", video):
        return "casme3"
    return "samm" if re.fullmatch(r"\d+_\d+_\d+", video) else "unknown"


def _count_errors(pairs: list[tuple[dict, str]]) -> tuple[list[int], int]:
    """|pred - gold| per question. An answer with no number is wrong but must not crash the run: it is
    scored as answering 0, and at least 1 off, so it is never right even when the gold count is 0."""
    errors, unparsed = [], 0
    for g, p in pairs:
        gold = parse_count(str(g["answer"]))
        if gold is None:
            raise InputError(f"gold row {row_id(g)} — count answer {g['answer']!r} is not a number")
        pred = parse_count(p)
        unparsed += pred is None
        errors.append(abs(pred - gold) if pred is not None else max(gold, 1))
    return errors, unparsed


def _lvqa_group(items: list[tuple[dict, str | None, str]]) -> dict:
    by_kind: dict[str, list[tuple[dict, str]]] = defaultdict(list)
    for g, p, kind in items:
        by_kind[kind].append((g, p or ""))
    out: dict = {}
    unparsed = 0
    for kind, name in COUNT_KINDS.items():
        errors, bad = _count_errors(by_kind.get(kind, []))
        unparsed += bad
        out[f"{name}_mae"] = sum(errors) / len(errors) if errors else None
        out[f"{name}_rmse"] = math.sqrt(sum(e * e for e in errors) / len(errors)) if errors else None
    aus = [(parse_au_set(str(g["answer"])), parse_au_set(p)) for g, p in by_kind.get("lvqa_aus", [])]
    out["au_f1"] = sum(_set_f1(g, p) for g, p in aus) / len(aus) if aus else None
    out["au_jaccard"] = sum(_jaccard(g, p) for g, p in aus) / len(aus) if aus else None
    types = by_kind.get("lvqa_type", [])
    gold_t, pred_t = [parse_type(str(g["answer"])) for g, _ in types], [parse_type(p) for _, p in types]
    out["type_uf1"], out["type_uar"] = uf1(gold_t, pred_t), uar(gold_t, pred_t)
    out["n"], out["missing"], out["unparsed"] = len(items), sum(p is None for _, p, _ in items), unparsed
    return out


def lvqa_scores(pred_rows: Sequence[dict], gold_rows: Sequence[dict]) -> dict:
    """ME-LVQA metrics, overall and per dataset: MAE and RMSE of each count, mean set F1 and Jaccard of
    the AU inventory, UF1 and UAR of the event type. Rows match by id / video_id; a question with no
    prediction is answered "" (reported as missing; for a count, an unparsed answer)."""
    answers = {row_id(r): str(r.get("answer", "")) for r in pred_rows}
    items, by_ds = [], defaultdict(list)
    for g in gold_rows:
        kind = classify(g["question"])[0]
        if kind not in LVQA_QUESTION_TYPES:
            raise InputError(f"gold row {row_id(g)} — not an ME-LVQA question: {g['question']!r}")
        item = (g, answers.get(row_id(g)), kind)
        items.append(item)
        by_ds[lvqa_dataset(g)].append(item)
    return {
        "overall": _lvqa_group(items),
        "per_dataset": {ds: _lvqa_group(its) for ds, its in sorted(by_ds.items())},
    }


# ---------------------------------------------------------------- report tables
def to_json(metrics: dict) -> dict:
    """metrics.json content: without the matched pairs, nan (the official 0/0) as null."""

    def clean(x: object) -> object:
        if isinstance(x, float) and math.isnan(x):
            return None
        if is_dataclass(x) and not isinstance(x, type):
            return {k: v for k, v in asdict(x).items() if v not in (None, [], ())}
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items() if k != "pairs"}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    return clean(metrics)  # type: ignore[return-value]


def _cell(v: object) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "nan" if isinstance(v, float) else "—"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _spot_rows(m: dict) -> tuple[list[str], list[list]]:
    head = ["", "TP", "FP", "FN", "P", "R", "F1"]
    keys = ("tp", "fp", "fn", "precision", "recall", "f1")
    names = [
        "overall",
        *(t for t in TYPES if m[t]["n_pred"] + m[t]["n_gold"]),
    ]  # untyped files: no class rows
    return head, [[name, *(m[name][k] for k in keys)] for name in names]


def _str_rows(m: dict) -> tuple[list[str], list[list]]:
    head = ["", "TP", "FP", "FN", "spot F1", "analysis F1", "UF1", "UAR", "STRS"]
    rows = []
    for name in ("official", "strict"):
        s, a = m[name]["spotting"], m[name]["analysis"]
        rows.append([name, s["tp"], s["fp"], s["fn"], s["f1"], a["f1"], a["uf1"], a["uar"], m[name]["strs"]])
    return head, rows


def _lvqa_rows(m: dict) -> tuple[list[str], list[list]]:
    groups = [("overall", m["overall"]), *m["per_dataset"].items()]
    return ["", *LVQA_KEYS], [[name, *(g[k] for k in LVQA_KEYS)] for name, g in groups]


def format_report(task: str, metrics: dict, markdown: bool = False) -> str:
    """The metrics of `task` (spot, str, lvqa) as a fixed-width table, or a markdown one."""
    head, rows = {"spot": _spot_rows, "str": _str_rows, "lvqa": _lvqa_rows}[task](metrics)
    cells = [head, *([_cell(c) for c in r] for r in rows)]
    if markdown:
        lines = ["| " + " | ".join(r) + " |" for r in cells]
        return "\n".join([lines[0], "|---" * len(head) + "|", *lines[1:]])
    widths = [max(len(r[j]) for r in cells) + 2 for j in range(len(head))]
    return "\n".join(f"{r[0]:<10}" + "".join(f"{c:>{w}}" for c, w in zip(r[1:], widths[1:])) for r in cells)
