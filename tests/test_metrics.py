"""Metric parity with independently computed numbers (scikit-learn, sacrebleu, rouge-score) and parsing."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import sacrebleu
from helpers import cli
from rouge_score import rouge_scorer
from sklearn.metrics import f1_score, recall_score

from mevqa.data.megc import read_jsonl, row_id, write_jsonl
from mevqa.evaluation.metrics import bleu, rouge1, score_rows, uar, uf1
from mevqa.evaluation.parse import parse_aus, parse_label
from mevqa.facs import COARSE_LABELS, FINE_LABELS
from mevqa.prompts import classify


def _by_hand_uf1(gold, pred, classes):
    """2TP/(2TP+FP+FN) per class, averaged: the README's definition, computed without sklearn."""
    out = []
    for c in classes:
        tp = sum(g == c and p == c for g, p in zip(gold, pred))
        fp = sum(g != c and p == c for g, p in zip(gold, pred))
        fn = sum(g == c and p != c for g, p in zip(gold, pred))
        out.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(out) / len(out)


@pytest.mark.parametrize("seed", range(6))
def test_uf1_uar_parity_random(seed):
    rng = random.Random(seed)
    gold = [rng.choice(COARSE_LABELS) for _ in range(50)]
    pred = [rng.choice([*COARSE_LABELS, "sadness", "happy"]) for _ in range(50)]
    gt = sorted(set(gold))
    union = sorted(set(gold) | set(pred))
    assert uf1(gold, pred) == pytest.approx(
        f1_score(gold, pred, labels=gt, average="macro", zero_division=0), abs=1e-6
    )
    assert uar(gold, pred) == pytest.approx(
        recall_score(gold, pred, labels=gt, average="macro", zero_division=0), abs=1e-6
    )
    assert uf1(gold, pred, "union") == pytest.approx(_by_hand_uf1(gold, pred, union), abs=1e-6)
    assert uf1(gold, pred) == pytest.approx(_by_hand_uf1(gold, pred, gt), abs=1e-6)
    assert uar(gold, pred, "union") == pytest.approx(
        recall_score(gold, pred, labels=union, average="macro", zero_division=0), abs=1e-6
    )


def test_hand_made_case():
    gold = ["positive", "negative", "negative", "surprise"]
    pred = ["positive", "negative", "positive", "negative"]
    # positive: TP1 FP1 FN0 -> 2/3; negative: TP1 FP1 FN1 -> 1/2; surprise: TP0 FN1 -> 0
    assert uf1(gold, pred) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert uar(gold, pred) == pytest.approx((1 + 0.5 + 0) / 3)


def test_bleu_rouge_parity():
    rng = random.Random(1)
    words = "the action units present are brow lowerer lid tightener therefore class is negative".split()
    refs = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) for _ in range(30)]
    hyps = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) for _ in range(30)]
    assert bleu(refs, hyps) == pytest.approx(
        sacrebleu.corpus_bleu(hyps, [refs], lowercase=True).score / 100, abs=1e-6
    )
    sc = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    assert rouge1(refs, hyps) == pytest.approx(
        np.mean([sc.score(r, h)["rouge1"].fmeasure for r, h in zip(refs, hyps)]), abs=1e-6
    )


def test_parsing_rules():
    assert parse_label("Negative.", "coarse") == "negative"
    assert parse_label("The coarse expression class is surprise", "coarse") == "surprise"
    assert parse_label("I think they look happy", "fine") == "happiness"
    assert parse_label("Sad", "fine") == "sadness"
    assert parse_label("confused", "fine") == "confused"  # stays as written, counts as wrong
    combined = (
        "The action units present are: brow lowerer, lid tightener. Therefore, the fine-grained expression "
        "class is anger, and the coarse expression class is negative."
    )
    assert parse_label(combined, "fine") == "anger" and parse_label(combined, "coarse") == "negative"
    assert parse_aus(combined) == {"brow lowerer", "lid tightener"}
    assert parse_aus("AU01 (Outer Brow Raiser), AU2 (inner brow raiser)") == {
        "outer brow raiser",
        "inner brow raiser",
    }
    assert parse_label("Yes, it is.", "au_presence") == "yes"
    assert parse_label("On the LEFT side", "au_side") == "left"


def test_every_team_answer_parses(megc_dir, capsys):
    """Print what each team's free text became; nearly all label answers land on a label."""
    for f in sorted((megc_dir / "predictions").glob("*.jsonl")):
        labels, shown = [], {}
        for r in read_jsonl(f):
            qtype, _ = classify(r["question"])
            if qtype in ("coarse", "fine"):
                labels.append(parse_label(r["answer"], qtype))
                shown[r["answer"][:50]] = labels[-1]
            elif qtype in ("au_list", "combined"):
                shown[r["answer"][:50]] = ", ".join(sorted(parse_aus(r["answer"]))) or "(no AU)"
        with capsys.disabled():
            print(f"\n{f.name}:")
            for k, v in shown.items():
                print(f"  {k!r} -> {v}")
        on_label = sum(v in (*COARSE_LABELS, *FINE_LABELS) for v in labels)
        assert on_label >= 0.75 * len(labels), (f.name, on_label, len(labels))


@pytest.mark.parametrize("name", ["train_casme2.jsonl", "train_samm_smic.jsonl"])
def test_gold_against_itself_is_perfect(megc_dir, name):
    rows = read_jsonl(megc_dir / name)
    m = score_rows(rows, {row_id(r): r["answer"] for r in rows})
    for scope in [m["overall"], *m["per_dataset"].values()]:
        for k, v in scope.items():
            if k == "n":
                continue
            assert v == (0 if k == "missing" else pytest.approx(1.0)) or v is None, (k, v)
    assert m["overall"]["bleu"] == pytest.approx(1.0)
    if "smic" in m["per_dataset"]:  # one-word answers only: BLEU-4 has no 4-grams there
        assert m["per_dataset"]["smic"]["bleu"] is None


def test_missing_predictions_count_as_empty(megc_dir):
    rows = read_jsonl(megc_dir / "train_casme2.jsonl")
    preds = {row_id(r): r["answer"] for r in rows[100:]}
    m = score_rows(rows, preds)
    assert m["overall"]["missing"] == 100 and m["overall"]["n"] == 911
    assert m["overall"]["rouge1"] == pytest.approx(811 / 911)


def test_score_cli_matches_independent_numbers(megc_dir, tmp_path):
    gold = read_jsonl(megc_dir / "train_casme2.jsonl")
    rng = random.Random(0)
    pred = [
        {**r, "answer": rng.choice(COARSE_LABELS) if classify(r["question"])[0] == "coarse" else r["answer"]}
        for r in gold
    ]
    write_jsonl(tmp_path / "pred.jsonl", pred)
    r = cli(
        "score",
        "--pred",
        str(tmp_path / "pred.jsonl"),
        "--gold",
        str(megc_dir / "train_casme2.jsonl"),
        "--out",
        str(tmp_path / "m"),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert json.loads(r.stdout)["overall"] == m["overall"]
    g = [x["answer"] for x in gold if classify(x["question"])[0] == "coarse"]
    p = [x["answer"] for x in pred if classify(x["question"])[0] == "coarse"]
    assert m["overall"]["coarse_uf1"] == pytest.approx(
        f1_score(g, p, labels=sorted(set(g)), average="macro"), abs=1e-6
    )
    assert m["overall"]["fine_uf1"] == pytest.approx(1.0)
    assert set(m) == {"overall", "per_dataset", "per_question_type"}
    assert set(m["overall"]) == {
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
    }
    table = cli(
        "score", "--pred", str(tmp_path / "pred.jsonl"), "--gold", str(megc_dir / "train_casme2.jsonl")
    )
    assert "UF1-C" in table.stdout and "casme2" in table.stdout


def test_dataset_from_video_id_prefix(megc_dir):
    rows = read_jsonl(megc_dir / "test_casme3_to_answer.jsonl")
    m = score_rows([{**r, "answer": "negative"} for r in rows], {})
    assert list(m["per_dataset"]) == ["casme3"] and m["overall"]["missing"] == 85
