"""MEGC files: every shipped file loads and classifies; submissions round-trip; bad files are named."""

from __future__ import annotations

import json
import re

import pytest
from helpers import cli

from mevqa.data.megc import (
    clip_key,
    read_jsonl,
    resolve_clip,
    row_dataset,
    validate,
    write_jsonl,
    write_submissions,
)
from mevqa.errors import InputError
from mevqa.prompts import QUESTION_TYPES, classify


def test_every_shared_file_loads_and_classifies(megc_dir):
    files = sorted(megc_dir.glob("*.jsonl")) + sorted((megc_dir / "predictions").glob("*.jsonl"))
    assert len(files) == 10
    total = 0
    for f in files:
        rows = read_jsonl(f)
        total += len(rows)
        for r in rows:
            qtype, au = classify(r["question"])
            assert qtype in QUESTION_TYPES, (f.name, r["question"])
            assert (au is not None) == (qtype in ("au_presence", "au_side"))
            assert isinstance(r.get("subject", ""), str)
        if f.parent == megc_dir:  # the teams' predictions are free text, the task files are not
            assert validate(rows).ok, f.name
    assert total == 992 + 911 + 35 + 85 + 182 + 914 + 2 * (35 + 85)


def test_row_counts_and_datasets(megc_dir):
    test = read_jsonl(megc_dir / "test_samm_to_answer.jsonl")
    assert len(test) == 35 and {row_dataset(r) for r in test} == {"samm"}
    assert len({clip_key(r) for r in test}) == 7  # five questions per clip
    cas = read_jsonl(megc_dir / "test_casme3_to_answer.jsonl")
    assert {row_dataset(r) for r in cas} == {"casme3"}


def test_classify_extracts_au_names():
    assert classify("Is the action unit lip corner puller shown on the face?") == (
        "au_presence",
        "lip corner puller",
    )
    assert classify("Is the action unit brow lowerer located on the left or right face?") == (
        "au_side",
        "brow lowerer",
    )
    assert classify("  what is the COARSE expression class? ") == ("coarse", None)
    assert classify("How do you feel?") == ("free", None)


def test_submission_round_trip(megc_dir, tmp_path):
    rows = read_jsonl(megc_dir / "test_samm_to_answer.jsonl")
    answers = {r["video_id"]: f"answer {i}" for i, r in enumerate(rows)}
    (path,) = write_submissions(rows, answers, tmp_path)
    assert path.name == "me_vqa_samm_test_pred.jsonl"
    back = read_jsonl(path)
    assert [r["video_id"] for r in back] == [r["video_id"] for r in rows]
    assert [r["answer"] for r in back] == [answers[r["video_id"]] for r in rows]
    assert list(back[0]) == ["video_id", "video", "question", "answer"]


@pytest.mark.parametrize(
    "content,needle",
    [
        ('{"id": "a", "question": "q"}\n{"id": "b", "question": \n', ":2 — malformed JSON"),
        ('{"id": "a"}\n', ":1 — missing field(s): question"),
        ('{"question": "q"}\n', ":1 — missing field(s): id or video_id"),
        ("[1, 2]\n", ":1 — expected a JSON object"),
    ],
)
def test_malformed_lines_named(tmp_path, content, needle):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(InputError, match=re.escape(needle)):
        read_jsonl(f)


def test_validate_cli_flags_problems(tmp_path):
    rows = [
        {
            "id": "x_1",
            "dataset": "casme2",
            "question": "What is the coarse expression class?",
            "answer": "joyful",
        },
        {"id": "x_1", "dataset": "casme2", "question": "What colour is the sky?", "answer": "blue"},
    ]
    f = write_jsonl(tmp_path / "bad.jsonl", rows)
    r = cli("data", "validate", str(f))
    assert r.returncode == 2
    assert "duplicate ids (1)" in r.stdout and "unknown question templates (1)" in r.stdout
    assert "answers outside the label sets (1)" in r.stdout and "'joyful'" in r.stdout


def test_validate_and_stats_cli_on_real_file(megc_dir):
    r = cli("data", "validate", str(megc_dir / "train_casme2.jsonl"))
    assert r.returncode == 0 and "911 rows, 145 clips" in r.stdout
    r = cli("data", "stats", str(megc_dir / "train_casme2.jsonl"))
    assert r.returncode == 0 and "disgust 61" in r.stdout


def test_resolve_real_layouts(tmp_path):
    (tmp_path / "sub01" / "EP02_01f").mkdir(parents=True)
    (tmp_path / "006" / "006_1_2").mkdir(parents=True)
    (tmp_path / "SAMM-1").mkdir()
    (tmp_path / "CAS-1.mp4").write_bytes(b"")
    (tmp_path / "casme3" / "spNO.1").mkdir(parents=True)
    casme2 = {
        "id": "c",
        "dataset": "casme2",
        "image_id": "sub01_EP02_01f",
        "subject": "sub01",
        "filename": "EP02_01f",
    }
    samm = {"id": "s", "dataset": "samm", "image_id": "006_1_2", "subject": "6", "filename": "006_1_2"}
    assert resolve_clip(casme2, tmp_path) == tmp_path / "sub01" / "EP02_01f"
    assert resolve_clip(samm, tmp_path) == tmp_path / "006" / "006_1_2"
    assert resolve_clip({"video_id": "v", "video": "SAMM-1"}, tmp_path) == tmp_path / "SAMM-1"
    assert resolve_clip({"video_id": "v", "video": "CAS-1"}, tmp_path) == tmp_path / "CAS-1.mp4"
    row = {"id": "z", "dataset": "casme3", "subject": "spNO.1", "filename": "a"}
    assert resolve_clip(row, tmp_path, "{dataset}/{subject}") == tmp_path / "casme3" / "spNO.1"
    with pytest.raises(InputError, match="clip not found"):
        resolve_clip({**casme2, "filename": "EP99"}, tmp_path)
    with pytest.raises(InputError, match="has no field"):
        resolve_clip(row, tmp_path, "{nope}")


def test_synthme_validates_with_clips(synthme):
    r = cli("data", "validate", str(synthme / "train.jsonl"), "--root", str(synthme))
    assert r.returncode == 0, r.stdout + r.stderr
    missing = cli("data", "validate", str(synthme / "train.jsonl"), "--root", str(synthme / "frames" / "x"))
    assert missing.returncode == 2 and "clips missing" in missing.stdout


def test_jsonl_written_atomically(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"id": "1", "question": "q"}])
    assert json.loads(path.read_text()) == {"id": "1", "question": "q"}
    assert not list(tmp_path.glob(".*tmp"))
