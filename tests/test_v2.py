"""MEGC 2026 ME-VQA-v2: the analysis question classifies, is trained on (mevqa's own answer wording),
scored by BLEU / ROUGE-1, validated, and answered into `_v2` submission files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sacrebleu
from helpers import cli, eval_cli
from rouge_score import rouge_scorer

from mevqa.data.megc import (
    is_v2_rows,
    label_stats,
    read_jsonl,
    row_id,
    validate,
    write_jsonl,
    write_submissions,
)
from mevqa.data.qa import AU, ClipLabel, build_rows
from mevqa.data.synth import synthesize
from mevqa.evaluation.metrics import score_rows
from mevqa.evaluation.parse import parse_aus, parse_label
from mevqa.prompts import Q_ANALYSIS, QUESTION_TYPES, analysis_answer, classify

V2_FILES = {"samm": 35, "casme3": 85}


def test_three_phrasings_classify_as_analysis():
    assert "analysis" in QUESTION_TYPES and len(Q_ANALYSIS) == 3
    for q in Q_ANALYSIS:
        assert classify(q) == ("analysis", None)
        assert classify(f"  {q.upper()} ") == ("analysis", None)
    assert classify("What is the coarse expression class?") == ("coarse", None)
    assert classify(
        "What are the action units present, and based on them, what is the fine-grained expression and the "
        "coarse expression class?"
    ) == ("combined", None)
    assert classify("Please analyse this.") == ("free", None)


@pytest.mark.parametrize("ds", V2_FILES)
def test_public_v2_files_classify_and_validate(megc_dir, ds):
    path = megc_dir / "2026" / f"me_vqa_{ds}_v2_test_to_answer.jsonl"
    rows = read_jsonl(path)
    assert len(rows) == V2_FILES[ds]
    types = [classify(r["question"])[0] for r in rows]
    assert all(t in QUESTION_TYPES for t in types)
    assert types.count("analysis") == len(rows) // 5 and {r["question"] for r in rows} & set(Q_ANALYSIS)
    assert validate(rows).ok and is_v2_rows(rows)
    # row for row the 2025 test file, except question 5: combined there, analysis here
    old = read_jsonl(megc_dir / f"test_{ds}_to_answer.jsonl")
    assert [row_id(r) for r in old] == [row_id(r) for r in rows]
    for a, b in zip(old, rows):
        if classify(b["question"])[0] == "analysis":
            assert classify(a["question"])[0] == "combined"
        else:
            assert a == b
    r = cli("data", "validate", str(path))
    assert r.returncode == 0, r.stderr
    assert "analysis" in r.stdout and "valid" in r.stdout


def test_all_120_public_rows_24_analysis(megc_dir):
    rows = [
        r for ds in V2_FILES for r in read_jsonl(megc_dir / "2026" / f"me_vqa_{ds}_v2_test_to_answer.jsonl")
    ]
    kinds = [classify(r["question"])[0] for r in rows]
    assert len(rows) == 120 and "free" not in kinds and kinds.count("analysis") == 24


def test_validation_of_analysis_answers():
    row = {"video_id": "samm_test_SAMM-1_5", "video": "SAMM-1", "question": Q_ANALYSIS[1]}
    assert validate([{**row, "answer": ""}]).ok  # test files leave it blank
    assert validate([{**row, "answer": "Any free text about the face."}]).ok
    assert validate([{**row, "answer": "   "}]).bad_answers


def _label(image_id: str, aus: tuple[AU, ...] = (AU(4), AU(7, "L"))) -> ClipLabel:
    return ClipLabel("samm", "6", image_id, image_id, "anger", aus, 10, 20, 30)


def test_build_rows_v2_replaces_only_the_combined_question():
    lab = _label("006_1_2")
    v1, v2 = build_rows(lab, seed=3), build_rows(lab, seed=3, v2=True)
    assert build_rows(lab, seed=3, v2=True) == v2  # deterministic per clip and seed
    assert [r["id"] for r in v1] == [r["id"] for r in v2] and v1[:-1] == v2[:-1]
    assert classify(v1[-1]["question"])[0] == "combined" and v2[-1]["question"] in Q_ANALYSIS
    answer = v2[-1]["answer"]
    assert answer == analysis_answer(["brow lowerer", "lid tightener"], "anger", "negative")
    # the paragraph names the AUs, the fine and the coarse class, and the label parser reads them back
    assert parse_aus(answer) == {"brow lowerer", "lid tightener"}
    assert parse_label(answer, "fine") == "anger" and parse_label(answer, "coarse") == "negative"
    assert "action unit present is: brow lowerer." in analysis_answer(["brow lowerer"], "anger", "negative")
    # the phrasing is chosen per clip: over many clips all three occur
    phrasings = {build_rows(_label(f"c{i}"), v2=True)[-1]["question"] for i in range(30)}
    assert phrasings == set(Q_ANALYSIS)
    smic = ClipLabel("smic", "s01", "s01_ne_01", "s01_ne_01", "negative", coarse_only=True)
    assert build_rows(smic, v2=True) == build_rows(smic)  # coarse only: no question 5 either way
    assert validate(v2).ok and label_stats(v2)["analysis"]["samm"]["anger"] == 1


@pytest.mark.slow  # writes SynthME
def test_synthme_v2(tmp_path):
    a = synthesize(tmp_path / "v1", subjects=2, clips_per_subject=2, size=48, seed=3)
    b = synthesize(tmp_path / "v2", subjects=2, clips_per_subject=2, size=48, seed=3, v2=True)
    assert (a / "annotations.csv").read_bytes() == (b / "annotations.csv").read_bytes()
    for split in ("train", "test"):
        old, new = read_jsonl(a / f"{split}.jsonl"), read_jsonl(b / f"{split}.jsonl")
        assert [row_id(r) for r in old] == [row_id(r) for r in new]
        assert not is_v2_rows(old) and validate(new).ok
        for x, y in zip(old, new):
            if classify(x["question"])[0] == "combined":
                assert y["question"] in Q_ANALYSIS
                fine, coarse = parse_label(x["answer"], "fine"), parse_label(x["answer"], "coarse")
                assert y["answer"] == analysis_answer(
                    sorted(parse_aus(x["answer"]), key=x["answer"].find), fine, coarse
                )
            else:
                assert x == y
    assert is_v2_rows(read_jsonl(b / "train.jsonl"))


@pytest.mark.slow  # writes SynthME
def test_cli_synth_and_convert_v2(tmp_path):
    r = cli(
        "data",
        "synth",
        "--out",
        tmp_path / "s",
        "--subjects",
        "2",
        "--clips-per-subject",
        "2",
        "--size",
        "48",
        "--v2",
    )
    assert r.returncode == 0, r.stderr
    sheet = tmp_path / "s" / "annotations.csv"
    for flags, name in (((), "v1.jsonl"), (("--v2",), "v2.jsonl")):
        r = cli(
            "data",
            "convert",
            "--dataset",
            "synthme",
            "--annotations",
            sheet,
            "--out",
            tmp_path / name,
            *flags,
        )
        assert r.returncode == 0, r.stderr
    v1, v2 = read_jsonl(tmp_path / "v1.jsonl"), read_jsonl(tmp_path / "v2.jsonl")
    assert not is_v2_rows(v1) and is_v2_rows(v2) and len(v1) == len(v2)
    assert sum(classify(r["question"])[0] == "analysis" for r in v2) == 4  # one per clip
    assert cli("data", "validate", tmp_path / "v2.jsonl").returncode == 0
    bad = cli("data", "synth", "--out", tmp_path / "l", "--long", "--v2")
    assert bad.returncode == 2 and "--v2" in bad.stderr


def test_analysis_answers_get_bleu_and_rouge():
    analysis = [
        (
            "The action units present are brow lowerer and lid tightener, so the class is negative.",
            "The action units present are brow lowerer, so the expression class is negative.",
        ),
        (
            "A brief lip corner puller shows happiness, a positive micro-expression.",
            "The lip corner puller shows a positive happiness expression.",
        ),
    ]
    coarse = [("negative", "negative"), ("positive", "surprise")]
    gold, preds = [], {}
    for k, (g, p) in enumerate(analysis):
        gold.append({"id": f"a{k}", "dataset": "samm", "question": Q_ANALYSIS[k], "answer": g})
        preds[f"a{k}"] = p
    for k, (g, p) in enumerate(coarse):
        gold.append(
            {
                "id": f"c{k}",
                "dataset": "samm",
                "question": "What is the coarse expression class?",
                "answer": g,
            }
        )
        preds[f"c{k}"] = p
    m = score_rows(gold, preds)
    sc = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    refs, hyps = [g for g, _ in analysis], [p for _, p in analysis]
    got = m["per_question_type"]["analysis"]
    assert got["n"] == 2
    assert got["bleu"] == pytest.approx(
        sacrebleu.corpus_bleu(hyps, [refs], lowercase=True).score / 100, abs=1e-6
    )
    assert got["rouge1"] == pytest.approx(
        np.mean([sc.score(r, h)["rouge1"].fmeasure for r, h in zip(refs, hyps)]), abs=1e-6
    )
    # overall BLEU / ROUGE-1 pool every question, as with the 2025 combined answers
    all_refs = [g["answer"] for g in gold]
    all_hyps = [preds[g["id"]] for g in gold]
    assert m["overall"]["bleu"] == pytest.approx(
        sacrebleu.corpus_bleu(all_hyps, [all_refs], lowercase=True).score / 100, abs=1e-6
    )
    assert m["overall"]["rouge1"] == pytest.approx(
        np.mean([sc.score(r, h)["rouge1"].fmeasure for r, h in zip(all_refs, all_hyps)]), abs=1e-6
    )
    # classification unchanged by the analysis rows
    only = score_rows(gold[2:], preds)
    assert (
        m["overall"]["coarse_uf1"] == only["overall"]["coarse_uf1"] == pytest.approx(0.5)
    )  # negative 1, positive 0
    assert m["overall"]["fine_uf1"] is None


def test_submission_names(megc_dir, tmp_path):
    v2 = read_jsonl(megc_dir / "2026" / "me_vqa_samm_v2_test_to_answer.jsonl")
    old = read_jsonl(megc_dir / "test_casme3_to_answer.jsonl")
    paths = write_submissions(v2 + old, {row_id(r): "x" for r in v2}, tmp_path)
    assert sorted(p.name for p in paths) == [
        "me_vqa_casme3_test_pred.jsonl",
        "me_vqa_samm_v2_test_pred.jsonl",
    ]
    sub = read_jsonl(tmp_path / "me_vqa_samm_v2_test_pred.jsonl")
    assert [r["video_id"] for r in sub] == [r["video_id"] for r in v2] and all(
        r["answer"] == "x" for r in sub
    )


def test_eval_of_a_v2_test_file_writes_the_v2_submission(synthme, tiny_qwen, tmp_path):
    rows = read_jsonl(synthme / "test.jsonl")
    test_rows = []
    for r in rows:
        q = r["question"]
        if classify(q)[0] == "combined":  # v2: question 5 is an analysis request
            q = Q_ANALYSIS[len(test_rows) % 3]
        k = r["id"].rsplit("_", 1)[1]
        test_rows.append(
            {
                "video_id": f"synthme_test_{r['filename']}_{k}",
                "video": r["filename"],
                "question": q,
                "answer": "",
            }
        )
    assert is_v2_rows(test_rows)
    data = write_jsonl(tmp_path / "me_vqa_synthme_v2_test_to_answer.jsonl", test_rows)
    out = tmp_path / "run"
    r = eval_cli(data, synthme / "frames", tiny_qwen, out, "--max-new-tokens", "8")
    assert r.returncode == 0, r.stderr
    assert not (out / "me_vqa_synthme_test_pred.jsonl").exists()
    sub = read_jsonl(out / "me_vqa_synthme_v2_test_pred.jsonl")
    assert [x["video_id"] for x in sub] == [x["video_id"] for x in test_rows]
    assert [x["question"] for x in sub] == [x["question"] for x in test_rows]
    assert all(x["answer"] for x in sub)
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == len(test_rows)
