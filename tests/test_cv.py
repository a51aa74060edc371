"""`mevqa cv`: folds by subject with no leaks, pooled scores equal `mevqa score` on the pooled predictions,
a killed fold resumes without touching finished ones, and impossible splits are one clear line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import cli

from mevqa.data.megc import read_jsonl, row_id, write_jsonl
from mevqa.train.cv import split_subjects, subject_of


@pytest.fixture(scope="module")
def all_rows(synthme, tmp_path_factory):
    """SynthME's train and test rows together: 4 subjects."""
    path = tmp_path_factory.mktemp("cv") / "all.jsonl"
    write_jsonl(path, read_jsonl(synthme / "train.jsonl") + read_jsonl(synthme / "test.jsonl"))
    return path


def cv_args(data, synthme, model, out, *extra):
    return [
        "cv",
        "--data",
        data,
        "--root",
        synthme,
        "--model",
        model,
        "--out",
        out,
        "--folds",
        "3",
        "--frames",
        "2",
        "--batch-size",
        "4",
        "--grad-accum",
        "1",
        "--lr",
        "0.005",
        "--report-to",
        "none",
        "--max-new-tokens",
        "8",
        *extra,
    ]


def test_three_folds_no_leak_and_pooled_equals_score(all_rows, synthme, tiny_qwen, tmp_path):
    out = tmp_path / "cv"
    r = cli(*cv_args(all_rows, synthme, tiny_qwen, out, "--max-steps", "3"))
    assert r.returncode == 0, r.stderr
    folds = json.loads((out / "folds.json").read_text())["folds"]
    assert len(folds) == 3 and sorted(s for f in folds for s in f) == sorted(
        {subject_of(x) for x in read_jsonl(all_rows)}
    )
    for k in (1, 2, 3):
        train = {subject_of(x) for x in read_jsonl(out / f"fold-{k}" / "train.jsonl")}
        test = {subject_of(x) for x in read_jsonl(out / f"fold-{k}" / "test.jsonl")}
        assert test == set(folds[k - 1]) and not train & test  # checked from the written files
    pooled = read_jsonl(out / "predictions.jsonl")
    assert sorted(row_id(p) for p in pooled) == sorted(row_id(x) for x in read_jsonl(all_rows))  # each once
    score = cli("score", "--pred", out / "predictions.jsonl", "--gold", all_rows, "--json")
    metrics = json.loads((out / "metrics.json").read_text())
    assert json.loads(score.stdout)["overall"] == metrics["overall"]
    assert len(metrics["per_fold"]) == 3 and "mean ± std" in (out / "report.md").read_text()
    assert (out / "confusion_coarse.png").exists()


def test_k_folds_balance_question_counts():
    rows = [
        {"dataset": "d", "subject": str(s), "id": f"{s}-{i}"}
        for s, n in enumerate([9, 7, 5, 4, 3, 2])
        for i in range(n)
    ]
    per_subject = [9, 7, 5, 4, 3, 2]
    folds = split_subjects(rows, "3", seed=0)
    counts = sorted(sum(per_subject[int(s.split("/")[1])] for s in f) for f in folds)
    # greedy, biggest subject first into the lightest fold: within one smallest subject of even (here 9/10/11)
    assert sum(counts) == 30 and counts[-1] - counts[0] <= min(per_subject)
    assert split_subjects(rows, "loso", 0) == [[f"d/{s}"] for s in range(6)]


def test_killed_fold_resumes_and_finished_folds_stay(all_rows, synthme, tiny_qwen, tmp_path):
    out = tmp_path / "cv"
    args = [
        str(a) for a in cv_args(all_rows, synthme, tiny_qwen, out, "--max-steps", "40", "--save-every", "5")
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mevqa", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ.copy(),
    )
    ckpt = out / "fold-2" / "adapter" / "checkpoints" / "step-10"
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline and not ckpt.exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and not (out / "fold-2" / "adapter" / "adapter_config.json").exists()
    fold1 = {p: p.stat().st_mtime_ns for p in (out / "fold-1").rglob("*") if p.is_file()}
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert {p: p.stat().st_mtime_ns for p in fold1} == fold1  # fold 1 untouched
    steps = [
        s for s, _ in json.loads((out / "fold-2" / "adapter" / "metrics.json").read_text())["train_loss"]
    ]
    assert steps == list(range(1, 41))  # continued from its checkpoint
    assert len(read_jsonl(out / "predictions.jsonl")) == len(read_jsonl(all_rows))


def test_impossible_splits_are_one_line(all_rows, synthme, tiny_qwen, tmp_path):
    one = tmp_path / "one.jsonl"
    write_jsonl(one, [x for x in read_jsonl(all_rows) if x["subject"] == "s01"])
    for folds, data, needle in (
        ("1", all_rows, "at least 2"),
        ("9", all_rows, "more folds than the data's 4"),
        ("loso", one, "1 subject"),
    ):
        args = cv_args(data, synthme, tiny_qwen, tmp_path / f"x{folds}", "--max-steps", "1")
        args[args.index("--folds") + 1] = folds
        r = cli(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr
