"""Long videos: interval files and sheets, spotting and STRS (official quirks and strict), ME-LVQA questions
and metrics, and `mevqa score --task spot|str|lvqa`. Expected numbers are worked out by hand in comments."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from sklearn.metrics import f1_score, recall_score

from mevqa.cli import main
from mevqa.data.longvideo import (
    Interval,
    event_rows,
    lvqa_rows,
    read_intervals,
    read_sheet,
    str_gold,
    write_intervals,
)
from mevqa.data.megc import clip_key, read_jsonl, resolve_clip, write_jsonl
from mevqa.data.qa import AU
from mevqa.errors import InputError
from mevqa.evaluation.spotting import (
    iou,
    lvqa_dataset,
    lvqa_scores,
    parse_count,
    spotting_scores,
    strs_official,
    strs_strict,
)
from mevqa.prompts import LVQA_QUESTION_TYPES, QUESTION_TYPES, classify


def iv(video: str, onset: int, offset: int, emotion: str | None = None, subject: str = "1", **kw) -> Interval:
    return Interval(video, onset, offset, emotion=emotion, subject=subject, **kw)


# ---------------------------------------------------------------- IoU and the evaluator's README example
def test_iou_counts_inclusive_frames():
    assert iou(iv("v", 0, 9), iv("v", 5, 14)) == 5 / 15  # frames 5..9 shared, 0..14 in all
    assert iou(iv("v", 0, 9), iv("v", 10, 19)) == 0.0
    assert iou(iv("v", 3, 3), iv("v", 3, 3)) == 1.0


# The STRS-Metric README example (github.com/genbing99/STRS-Metric), "STRS: 0.2"
README_PRED = [
    iv("EP02_01f", 10, 70, "happiness"),  # gt 45-85: IoU 26/76 = 0.34 -> FP (and that gt an FN)
    iv("EP03_02", 100, 170, "others"),  # gt 130-160: IoU 31/71 = 0.44 -> FP, FN
    iv("EP04_02", 0, 70, "others"),  # gt 20-75: IoU 51/76 = 0.67 -> hit, others/others
    iv("EP01_11f", 20, 90, "happiness", subject="2"),  # gt 45-95: 46/76 = 0.61 -> hit, happiness/repression
    iv("EP02_04f", 70, 140, "happiness", subject="2"),  # gt 30-140: 71/111 = 0.64 -> hit, same
]
README_GOLD = [
    iv("EP02_01f", 45, 85, "happiness"),
    iv("EP03_02", 130, 160, "others"),
    iv("EP04_02", 20, 75, "others"),
    iv("EP01_11f", 45, 95, "repression", subject="2"),
    iv("EP02_04f", 30, 140, "repression", subject="2"),
]


def test_strs_readme_example_gives_0_2():
    """Spotting 3 TP / 2 FP / 2 FN: P = R = F1 = 0.6. Analysis on the 3 hits, emotions of the gold:
    others P = R = 1; happiness (predicted twice, never gold) P = R = 0; repression (gold twice, never
    predicted) P = R = 0. mean P = mean R = 1/3, F1 = 1/3, STRS = 0.6 x 1/3 = 0.2."""
    res = strs_official(README_PRED, README_GOLD)
    s, a = res["spotting"], res["analysis"]
    assert (s["tp"], s["fp"], s["fn"]) == (3, 2, 2)
    assert s["f1"] == pytest.approx(0.6)
    assert a["precision"] == a["recall"] == a["f1"] == pytest.approx(1 / 3)
    assert round(res["strs"], 4) == 0.2
    # the same files strictly: one-to-one changes nothing here, UF1 over the 3 gold emotions is 1/3 too
    strict = strs_strict(README_PRED, README_GOLD)
    assert strict["spotting"]["tp"] == 3 and round(strict["strs"], 4) == 0.2


# ---------------------------------------------------------------- the official 2025 baseline arithmetic
def baseline_case(hits: list[tuple[str, str]], fp: int, fn_emotions: list[str]):
    """One video, intervals 1000 frames apart: a hit is an exact copy of its gold interval, an FP sits
    in a gap, an FN is gold nobody predicted. hits = (gold emotion, predicted emotion)."""
    gold, pred = [], []
    for k, (g, p) in enumerate(hits):
        gold.append(iv("v", 1000 * k, 1000 * k + 50, g))
        pred.append(iv("v", 1000 * k, 1000 * k + 50, p))
    for k, e in enumerate(fn_emotions, start=len(hits)):
        gold.append(iv("v", 1000 * k, 1000 * k + 50, e))
    pred += [iv("v", 1000 * k + 500, 1000 * k + 550, "anger") for k in range(fp)]
    return pred, gold


def test_baseline_samm_numbers():
    """SAMM 6/217/202: spot F1 = 12/431 = 0.0278. The six hits (gold, pred): anger P = R = 2/3
    (2 right, one anger predicted for a contempt, one anger called contempt), contempt and happiness
    P = R = 0: mean P = mean R = 2/9, analysis F1 0.2222, STRS 0.0278 x 0.2222 = 0.0062."""
    hits = [("anger",) * 2, ("anger",) * 2, ("anger", "contempt"), ("contempt", "anger")]
    hits += [("happiness", "contempt"), ("contempt", "happiness")]
    pred, gold = baseline_case(hits, 217, ["anger", "contempt", "happiness"] * 67 + ["anger"])
    assert len(gold) == 208 and len(pred) == 223
    for res in (strs_official(pred, gold), strs_strict(pred, gold)):
        s = res["spotting"]
        assert (s["tp"], s["fp"], s["fn"]) == (6, 217, 202)
        assert round(s["f1"], 4) == 0.0278
        assert round(res["analysis"]["f1"], 4) == 0.2222
        assert round(res["strs"], 4) == 0.0062


def test_baseline_casme3_numbers():
    """CAS(ME)³ 3/115/34: spot F1 = 6/155 = 0.0387. Hits (anger, anger), (anger, disgust),
    (fear, disgust); disgust is gold only among the misses. anger P = 1, R = 1/2; disgust and fear 0:
    mean P = 1/3, mean R = 1/6, F1 = 2 (1/3)(1/6) / (1/2) = 2/9; STRS 0.0387 x 0.2222 = 0.0086.
    Strict UF1: anger F1 2/3, disgust 0, fear 0 -> 2/9 too; its UAR is mean recall 1/6 where the
    official "uar" is mean precision 1/3."""
    hits = [("anger", "anger"), ("anger", "disgust"), ("fear", "disgust")]
    pred, gold = baseline_case(hits, 115, ["disgust"] * 34)
    official, strict = strs_official(pred, gold), strs_strict(pred, gold)
    for res in (official, strict):
        s = res["spotting"]
        assert (s["tp"], s["fp"], s["fn"]) == (3, 115, 34)
        assert round(s["f1"], 4) == 0.0387
        assert round(res["analysis"]["f1"], 4) == 0.2222
        assert round(res["strs"], 4) == 0.0086
    assert official["analysis"]["uar"] == pytest.approx(1 / 3)
    assert strict["analysis"]["uar"] == pytest.approx(1 / 6)


# ---------------------------------------------------------------- one test per quirk of the official rules
def test_one_prediction_hits_two_ground_truths_only_in_official():
    pred = [iv("v", 0, 10, "anger")]
    gold = [iv("v", 0, 10, "anger"), iv("v", 1, 10, "anger")]  # IoU 1 and 10/11
    o, s = strs_official(pred, gold)["spotting"], strs_strict(pred, gold)["spotting"]
    assert (o["tp"], o["fp"], o["fn"]) == (2, 0, 0)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 0, 1)


def test_subject_without_predictions_ignored_by_official_counted_by_strict():
    pred = [iv("v", 0, 10, "anger")]
    gold = [
        iv("v", 0, 10, "anger"),
        iv("w", 0, 10, "anger", subject="2"),
        iv("w", 50, 60, "fear", subject="2"),
    ]
    o, s = strs_official(pred, gold)["spotting"], strs_strict(pred, gold)["spotting"]
    assert (o["tp"], o["fp"], o["fn"]) == (1, 0, 0)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 0, 2)


def test_predictions_for_videos_absent_from_gold():
    pred = [iv("v", 0, 10, "anger"), iv("elsewhere", 0, 10, "anger")]
    gold = [iv("v", 0, 10, "anger"), iv("v", 100, 110, "fear")]
    o, s = strs_official(pred, gold)["spotting"], strs_strict(pred, gold)["spotting"]
    assert (o["tp"], o["fp"], o["fn"]) == (1, 0, 1)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 1, 1)


def test_file_order_decides_the_official_hit():
    """Official: the first prediction (IoU 0.6, wrong emotion) takes the gold; strict: the best IoU does."""
    gold = [iv("v", 0, 9, "anger"), iv("v", 500, 509, "fear")]
    pred = [iv("v", 0, 5, "fear"), iv("v", 0, 9, "anger"), iv("v", 500, 509, "fear")]
    o, s = strs_official(pred, gold), strs_strict(pred, gold)
    assert o["spotting"]["tp"] == s["spotting"]["tp"] == 2
    assert [m.pred.onset for m in o["pairs"]] == [0, 500] and o["pairs"][0].pred.emotion == "fear"
    assert s["pairs"][0].pred.emotion == "anger" and s["analysis"]["f1"] == 1.0
    # official analysis: anger gt [1,0] pred [0,0] -> 0; fear gt [0,1] pred [1,1] -> P 1/2, R 1
    assert o["analysis"]["precision"] == pytest.approx(0.25) and o["analysis"]["recall"] == pytest.approx(0.5)


def test_official_order_can_cost_a_hit_strict_does_not():
    """Q [2,10] first hits both G1 [0,10] (9/11) and G2 [2,10]; P [0,10] then finds no gold left."""
    gold = [iv("v", 0, 10, "anger"), iv("v", 2, 10, "anger")]
    pred = [iv("v", 2, 10, "anger"), iv("v", 0, 10, "anger")]
    o, s = strs_official(pred, gold)["spotting"], strs_strict(pred, gold)["spotting"]
    assert (o["tp"], o["fp"], o["fn"]) == (2, 1, 0)
    assert (s["tp"], s["fp"], s["fn"]) == (2, 0, 0)


def test_single_cell_confusion_counts_zero_so_a_perfect_analysis_is_nan():
    """All hits anger -> anger: the 1x1 confusion matrix is caught as P = R = 0 for every emotion;
    2·0·0/(0+0) is numpy's nan. Strict scores it 1."""
    gold = [iv("v", 0, 10, "anger"), iv("v", 100, 110, "anger")]
    o, s = strs_official(gold, gold), strs_strict(gold, gold)
    assert o["spotting"]["f1"] == 1.0 and math.isnan(o["analysis"]["f1"]) and math.isnan(o["strs"])
    assert s["strs"] == 1.0


def test_official_uar_is_mean_precision():
    """Hits (anger,anger) x2, (anger,fear), (fear,fear): anger P 1 R 2/3 F1 0.8; fear P 1/2 R 1 F1 2/3."""
    hits = [("anger", "anger"), ("anger", "anger"), ("anger", "fear"), ("fear", "fear")]
    pred, gold = baseline_case(hits, 0, [])
    o, s = strs_official(pred, gold)["analysis"], strs_strict(pred, gold)["analysis"]
    assert o["uar"] == pytest.approx(0.75) and o["uf1"] == pytest.approx((0.8 + 2 / 3) / 2)
    g, p = [h[0] for h in hits], [h[1] for h in hits]
    assert s["uar"] == pytest.approx(recall_score(g, p, average="macro")) == pytest.approx(5 / 6)
    assert s["uf1"] == pytest.approx(f1_score(g, p, average="macro"))


def test_subjectless_predictions_never_count_in_official():
    gold = [iv("v", 0, 10, "anger")]
    pred = [iv("v", 0, 10, "anger", subject=None)]
    assert strs_official(pred, gold)["spotting"]["tp"] == 0
    assert strs_strict(pred, gold)["spotting"]["tp"] == 1  # strict takes the video's one subject


def test_subjects_compare_as_numbers():
    assert (
        strs_official([iv("v", 0, 10, "a", subject="006")], [iv("v", 0, 10, "a", subject="6")])["spotting"][
            "tp"
        ]
        == 1
    )


def test_strs_needs_gold_emotions():
    with pytest.raises(InputError, match="no emotion"):
        strs_official([], [iv("v", 0, 10)])


# ---------------------------------------------------------------- spotting per class
def test_spotting_counts_fp_in_pred_class_fn_in_gold_class():
    gold = [
        iv("v", 0, 10, type="micro"),
        iv("v", 100, 200, type="macro"),
        iv("v", 400, 410, type="micro"),
    ]
    pred = [
        iv("v", 0, 10, type="micro"),
        iv("v", 100, 200, type="macro"),
        iv("v", 300, 310, type="micro"),  # nothing there: FP micro
        iv("v", 400, 410, type="macro"),  # right place, wrong type: overall TP, macro FP, micro FN
    ]
    res = spotting_scores(pred, gold)
    pick = lambda m: (m["tp"], m["fp"], m["fn"])  # noqa: E731
    assert pick(res["overall"]) == (3, 1, 0)
    assert pick(res["micro"]) == (1, 1, 1)
    assert pick(res["macro"]) == (1, 1, 0)
    assert res["micro"]["f1"] == pytest.approx(0.5) and res["overall"]["precision"] == 0.75
    assert len(res["pairs"]) == 3 and res["untyped"] == {"pred": 0, "gold": 0}


def test_spotting_is_one_to_one_by_best_iou():
    gold = [iv("v", 0, 10), iv("v", 2, 10)]
    for pred in ([iv("v", 2, 10), iv("v", 0, 10)], [iv("v", 0, 10), iv("v", 2, 10)]):
        res = spotting_scores(pred, gold)
        assert res["overall"]["tp"] == 2 and all(m.iou == 1.0 for m in res["pairs"])
    assert spotting_scores([iv("v", 0, 9)], [iv("v", 5, 14)], iou_min=0.3)["overall"]["tp"] == 1
    assert spotting_scores([iv("v", 0, 9)], [iv("v", 5, 14)])["overall"]["tp"] == 0  # 1/3 < 0.5


def test_intervals_may_be_dicts():
    res = spotting_scores(
        [{"video": "v", "onset": 0, "offset": 10}], [{"video": "v", "onset": "0", "offset": 10}]
    )
    assert res["overall"]["f1"] == 1.0


# ---------------------------------------------------------------- interval files
def test_interval_files_round_trip(tmp_path):
    rows = [
        Interval("dzw_a1", 10, 40, 22, "macro", "happiness", "dzw", 0.9, (AU(12), AU(6, "L"))),
        Interval("dzw_a1", 5, 9, subject="dzw"),
    ]
    for name in ("iv.csv", "iv.jsonl"):
        back = read_intervals(write_intervals(tmp_path / name, rows))
        assert back == rows  # file order kept: the official STRS depends on it


def test_interval_csv_minimal_and_bad_rows(tmp_path):
    p = tmp_path / "pred.csv"
    p.write_text("subject,video,onset,offset,emotion\n1,EP02_01f,10,70,happiness\n1,EP03_02,100,x,others\n")
    with pytest.raises(InputError, match=r"pred\.csv:3 — offset 'x' is not a frame number"):
        read_intervals(p)
    p.write_text("subject,video,onset,offset\n1,v,80,70\n")
    with pytest.raises(InputError, match=r"pred\.csv:2 — onset 80, offset 70"):
        read_intervals(p)
    p.write_text("subject,onset,offset\n")
    with pytest.raises(InputError, match="missing column"):
        read_intervals(p)
    q = tmp_path / "pred.jsonl"
    q.write_text('{"video": "v", "onset": 1, "offset": 3, "type": "ME"}\nnot json\n')
    with pytest.raises(InputError, match=r"pred\.jsonl:2 — malformed JSON"):
        read_intervals(q)
    q.write_text('{"video": "v", "onset": 1, "offset": 3, "type": "sideways"}\n')
    with pytest.raises(InputError, match=r"pred\.jsonl:1 — type 'sideways'"):
        read_intervals(q)


# ---------------------------------------------------------------- annotation sheets
def test_synthme_long_csv(tmp_path):
    p = tmp_path / "long.csv"
    p.write_text(
        "subject,video,onset,apex,offset,aus,emotion,type\n"
        "s1,s1_long,300,0,340,1+2,surprise,micro\n"
        "s1,s1_long,10,20,80,AU6+AU12,happiness,macro\n"
        "s2,s2_long,0,5,9,R12,contempt,micro\n"
    )
    sheet = read_sheet(p)
    assert list(sheet) == ["s1_long", "s2_long"]
    first, second = sheet["s1_long"]
    assert (first.onset, first.apex, first.offset, first.type) == (10, 20, 80, "macro")
    assert [a.number for a in first.aus] == [6, 12] and second.apex is None  # apex 0: not annotated
    assert sheet["s2_long"][0].aus == (AU(12, "R"),) and sheet["s2_long"][0].onset == 0


def _xlsx(path: Path, rows: list[list]) -> Path:
    from openpyxl import Workbook

    wb = Workbook()
    for r in rows:
        wb.active.append(r)
    wb.save(path)
    return path


def test_casme3_style_sheet_types_from_duration_and_subject_ids(tmp_path):
    p = _xlsx(
        tmp_path / "cas3.xlsx",
        [
            ["Subject", "Filename", "Onset", "Apex", "Offset", "AU", "Objective class", "Estimated Emotion"],
            ["dzw", "a1", 100, 105, 114, "4+7", 2, "Anger"],  # 15 frames at 30 fps = 0.5 s: micro
            ["dzw", "a1", 10, 20, 40, "12", 1, "happy"],  # 31 frames: macro
            ["gcf", "a1", 5, 0, 30, "AU1+AU2", 3, "surprise"],
        ],
    )
    sheet = read_sheet(p, fps=30)
    assert list(sheet) == ["dzw_a1", "gcf_a1"]  # `a1` repeats under two subjects: ids become subject_video
    assert [(e.onset, e.type, e.emotion) for e in sheet["dzw_a1"]] == [
        (10, "macro", "happiness"),
        (100, "micro", "anger"),
    ]
    assert read_sheet(p)["dzw_a1"][0].type is None  # no type column, no fps: unknown


def test_samm_long_video_sheet_with_preamble(tmp_path):
    head = [
        "Subject",
        "Filename",
        "Inducement Code",
        "Onset",
        "Apex",
        "Offset",
        "Duration",
        "Type",
        "Action Units",
    ]
    p = _xlsx(
        tmp_path / "samm.xlsx",
        [["SAMM Long Videos"], ["release notes"], [], head]
        + [
            [6, "006_1_2", 1, 900, 950, 1000, 101, "Macro", "R12+R14"],
            [6, "006_1_1", 1, 100, 0, 160, 61, "Micro - 1/2", "4"],
        ],
    )
    sheet = read_sheet(p)
    assert list(sheet) == ["006_1"] and [e.type for e in sheet["006_1"]] == ["micro", "macro"]
    assert sheet["006_1"][0].apex is None and sheet["006_1"][1].subject == "6"


def test_casme2_headerless_layout_and_bad_rows(tmp_path):
    p = tmp_path / "code_final.csv"
    p.write_text(
        "1,anger1_1,557,572,608,4+10,negative,macro-expression,anger\n1,anger1_2,700,705,0,12,positive,micro-expression,happy\n"
    )
    (ev1, ev2) = read_sheet(p)["anger1"]
    assert (ev1.type, ev2.offset, ev2.type) == ("macro", 705, "micro")  # offset 0: only the apex is known
    p.write_text("1,anger1_1,557,572,608,4+10,negative,sideways,anger\n")
    with pytest.raises(InputError, match=r"code_final\.csv:1 — type 'sideways'"):
        read_sheet(p)
    (tmp_path / "x.xls").write_text("")
    with pytest.raises(InputError, match="save the .xls as .xlsx"):
        read_sheet(tmp_path / "x.xls")


# ---------------------------------------------------------------- ME-LVQA questions
def events() -> list[Interval]:
    return [
        Interval("dzw_a1", 300, 310, type="micro", emotion="surprise", subject="dzw", aus=(AU(1), AU(2))),
        Interval("dzw_a1", 10, 80, 40, type="macro", emotion="happiness", subject="dzw", aus=(AU(12), AU(6))),
        Interval("dzw_a1", 500, 505, type="micro", emotion="others", subject="dzw", aus=(AU(4),)),
    ]


def test_lvqa_rows_follow_the_test_files():
    rows = lvqa_rows("dzw_a1", events(), "casme3_test", rng=random.Random(0))
    test = read_jsonl(
        Path(__file__).resolve().parents[1] / "eval/megc/2026/me_lvqa_casme3_test_to_answer.jsonl"
    )
    assert [r["question"] for r in rows[:4]] == [r["question"] for r in test[:4]]
    assert list(rows[0]) == list(test[0]) and rows[0]["video_id"] == "casme3_test_dzw_a1_1"
    assert [r["answer"] for r in rows[:4]] == [
        "3",
        "2",
        "1",
        "inner brow raiser, outer brow raiser, brow lowerer, cheek raiser, lip corner puller",
    ]
    kinds = [classify(r["question"]) for r in rows[4:]]
    assert len(kinds) == 2 and kinds[0][1] != kinds[1][1] and all(k == "lvqa_type" for k, _ in kinds)
    order = ["macro-expression", "micro-expression", "micro-expression"]  # time order: 10, 300, 500
    assert all(r["answer"] == order[int(n) - 1] for r, (_, n) in zip(rows[4:], kinds))
    assert len(lvqa_rows("v", events()[:1], "x")) == 5  # one event: one type question
    with pytest.raises(InputError, match="no micro/macro type"):
        lvqa_rows("v", [Interval("v", 0, 5)], "x")


def test_every_public_lvqa_question_classifies(megc_dir):
    files = sorted((megc_dir / "2026").glob("me_lvqa_*_test_to_answer.jsonl"))
    rows = [r for f in files for r in read_jsonl(f)]
    assert len(rows) == 180
    kinds = [classify(r["question"]) for r in rows]
    assert all(k in LVQA_QUESTION_TYPES for k, _ in kinds)
    assert [k for k, _ in kinds[:6]] == [
        "lvqa_count_all",
        "lvqa_count_micro",
        "lvqa_count_macro",
        "lvqa_aus",
    ] + ["lvqa_type"] * 2
    assert ("lvqa_type", "33") in kinds and not set(LVQA_QUESTION_TYPES) & set(QUESTION_TYPES)
    assert {lvqa_dataset(r) for r in rows} == {"casme3", "samm"}
    assert classify("What is the expression type of the 2nd expression event in this video?") == (
        "lvqa_type",
        "2",
    )
    assert classify("What is the coarse expression class?") == ("coarse", None)  # short-clip types unchanged


def test_event_rows_are_training_rows_inside_the_long_video(tmp_path, megc_dir):
    rows = event_rows("dzw_a1", events(), "casme3", video_path="dzw/dzw_a1.mp4")
    train = read_jsonl(megc_dir / "train_casme2.jsonl")[0]
    assert set(train) <= set(rows[0]) and {r["image_id"] for r in rows} == {
        "dzw_a1_ev1",
        "dzw_a1_ev2",
    }  # no "others"
    first = [r for r in rows if r["image_id"] == "dzw_a1_ev1"]
    assert {(r["onset_frame"], r["apex_frame"], r["offset_frame"]) for r in first} == {(10, 40, 80)}
    assert "apex_frame" not in [r for r in rows if r["image_id"] == "dzw_a1_ev2"][0]
    assert len({clip_key(r) for r in rows}) == 2  # each event its own clip for the frame cache
    (tmp_path / "dzw").mkdir()
    (tmp_path / "dzw" / "dzw_a1.mp4").write_bytes(b"")
    assert resolve_clip(rows[0], tmp_path) == tmp_path / "dzw" / "dzw_a1.mp4"


def test_str_gold_flattens_in_order():
    gold = str_gold({"b": [Interval("x", 5, 9, subject="2")], "a": events()})
    assert [(g.subject, g.video, g.onset) for g in gold] == [("2", "b", 5)] + [
        ("dzw", "a", n) for n in (10, 300, 500)
    ]


# ---------------------------------------------------------------- ME-LVQA metrics
def lvqa_gold() -> list[dict]:
    cas = lvqa_rows("dzw_a1", events(), "casme3_test", rng=random.Random(1))
    samm_events = [
        Interval("1_001_2", 0, 50, type="micro", aus=(AU(4),)),
        Interval("1_001_2", 900, 1500, type="macro"),
    ]
    return cas + lvqa_rows("1_001_2", samm_events, "samm_test", rng=random.Random(1))


def test_lvqa_scores_by_hand():
    gold = lvqa_gold()
    ans = {r["video_id"]: r["answer"] for r in gold}
    ans["casme3_test_dzw_a1_1"] = "There are 5 expression events."  # gold 3: off by 2
    ans["casme3_test_dzw_a1_2"] = "I cannot tell."  # gold 2, unparseable: scored as 0 -> off by 2
    ans["samm_test_1_001_2_1"] = "two"  # gold 2: right
    ans["casme3_test_dzw_a1_4"] = (
        "AU1, outer brow raiser, lip corner puller, jaw drop"  # 3 of 5 gold, 1 extra
    )
    del ans["samm_test_1_001_2_3"]  # missing: gold 1, scored as unparsed -> off by 1
    types = [r for r in gold if classify(r["question"])[0] == "lvqa_type"]
    flip = {"micro-expression": "It is a macro-expression.", "macro-expression": "micro"}
    ans[types[0]["video_id"]] = flip[types[0]["answer"]]
    pred = [{"video_id": k, "answer": v} for k, v in ans.items()]
    res = lvqa_scores(pred, gold)
    o = res["overall"]
    assert o["count_all_mae"] == pytest.approx(1.0) and o["count_all_rmse"] == pytest.approx(math.sqrt(2))
    assert o["count_micro_mae"] == pytest.approx(1.0) and o["count_macro_mae"] == pytest.approx(0.5)
    assert o["au_f1"] == pytest.approx((2 * 3 / 9 + 1) / 2) and o["au_jaccard"] == pytest.approx(
        (3 / 6 + 1) / 2
    )
    g = [r["answer"] for r in types]
    p = [({"micro-expression": "macro-expression"}.get(g[0], "micro-expression")), *g[1:]]  # the flipped one
    assert o["type_uf1"] == pytest.approx(f1_score(g, p, labels=sorted(set(g)), average="macro"))
    assert o["type_uar"] == pytest.approx(recall_score(g, p, labels=sorted(set(g)), average="macro"))
    assert (o["n"], o["missing"], o["unparsed"]) == (len(gold), 1, 2)
    assert set(res["per_dataset"]) == {"casme3", "samm"}
    assert res["per_dataset"]["samm"]["count_all_mae"] == 0.0


def test_lvqa_parsing_and_dataset_naming():
    assert [parse_count(t) for t in ("12", "About 3 events", "none", "seven", "many")] == [12, 3, 0, 7, None]
    assert lvqa_dataset({"video_id": "x", "video": "wy_f4"}) == "casme3"
    assert lvqa_dataset({"video_id": "x", "video": "3_003_7"}) == "samm"
    with pytest.raises(InputError, match="not an ME-LVQA question"):
        lvqa_scores(
            [], [{"video_id": "a", "question": "What is the coarse expression class?", "answer": "x"}]
        )


# ---------------------------------------------------------------- mevqa score --task ...
def _run(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["score", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_spot_and_str(tmp_path, capsys):
    pred = write_intervals(tmp_path / "pred.csv", README_PRED)
    gold = write_intervals(tmp_path / "gold.jsonl", README_GOLD)
    rc, out, _ = _run(
        capsys, "--task", "spot", "--pred", str(pred), "--gold", str(gold), "--out", str(tmp_path / "s")
    )
    assert rc == 0 and "overall" in out and "0.6000" in out and "micro" not in out  # untyped: no class rows
    m = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert m["overall"]["tp"] == 3 and "pairs" not in m and (tmp_path / "s" / "report.md").is_file()
    rc, out, _ = _run(capsys, "--task", "str", "--pred", str(pred), "--gold", str(gold), "--json")
    m = json.loads(out)
    assert rc == 0 and round(m["official"]["strs"], 4) == 0.2 and round(m["strict"]["strs"], 4) == 0.2
    rc, out, _ = _run(
        capsys, "--task", "str", "--pred", str(pred), "--gold", str(gold), "--out", str(tmp_path / "t")
    )
    assert rc == 0 and "official" in out and "strict" in out and "STRS" in out
    assert "| official |" in (tmp_path / "t" / "report.md").read_text()


def test_cli_str_nan_is_null(tmp_path, capsys):
    gold = write_intervals(tmp_path / "gold.csv", [iv("v", 0, 10, "anger")])
    rc, out, _ = _run(capsys, "--task", "str", "--pred", str(gold), "--gold", str(gold), "--json")
    assert (
        rc == 0 and json.loads(out)["official"]["strs"] is None and json.loads(out)["strict"]["strs"] == 1.0
    )


def test_cli_lvqa(tmp_path, capsys):
    gold = write_jsonl(tmp_path / "gold.jsonl", lvqa_gold())
    rc, out, _ = _run(
        capsys, "--task", "lvqa", "--pred", str(gold), "--gold", str(gold), "--out", str(tmp_path / "o")
    )
    assert rc == 0 and "casme3" in out and "samm" in out
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert (
        m["overall"]["count_all_mae"] == 0.0
        and m["overall"]["au_f1"] == 1.0
        and m["overall"]["type_uf1"] == 1.0
    )


def test_cli_bad_files_are_one_error_line(tmp_path, capsys, megc_dir):
    bad = tmp_path / "bad.csv"
    bad.write_text("video,onset,offset\nv,1,zz\n")
    rc, _, err = _run(capsys, "--task", "spot", "--pred", str(bad), "--gold", str(bad))
    assert rc == 2 and err.startswith("error:") and "bad.csv:2" in err and len(err.strip().splitlines()) == 1
    rc, _, err = _run(capsys, "--task", "str", "--pred", str(bad), "--gold", str(tmp_path / "none.csv"))
    assert rc == 2 and "no such file" in err
    test = str(megc_dir / "2026" / "me_lvqa_samm_test_to_answer.jsonl")
    rc, _, err = _run(capsys, "--task", "lvqa", "--pred", test, "--gold", test)
    assert rc == 2 and "has no answers" in err
    good = write_intervals(tmp_path / "g.csv", [iv("v", 0, 10, "anger")])
    rc, _, err = _run(capsys, "--task", "spot", "--pred", str(good), "--gold", str(good), "--iou", "0")
    assert rc == 2 and "--iou 0.0" in err


def test_cli_default_task_is_vqa(tmp_path, capsys, megc_dir):
    rows = read_jsonl(megc_dir / "train_casme2.jsonl")[:20]
    gold = write_jsonl(tmp_path / "gold.jsonl", rows)
    rc, out, _ = _run(capsys, "--pred", str(gold), "--gold", str(gold), "--json")
    assert rc == 0 and json.loads(out)["overall"]["coarse_uf1"] == 1.0
