"""Self-consistency voting: N sampled answers per question, the majority label, every sample kept."""

from __future__ import annotations

import json

from helpers import cli, eval_cli

from mevqa.data.megc import read_jsonl
from mevqa.evaluation.parse import vote
from mevqa.prompts import Q_AU_MANY, Q_COARSE, Q_COMBINED_MANY, Q_FINE, combined_answer


def test_vote_takes_the_majority_label_with_the_first_sample_breaking_ties():
    assert (
        vote(Q_COARSE, ["It is negative.", "positive", "Negative!", "surprise", "negative"])
        == "It is negative."
    )
    assert vote(Q_COARSE, ["surprise", "positive", "positive", "surprise"]) == "surprise"  # tie: first wins
    assert vote(Q_FINE, ["happy", "happiness", "sad"]) == "happy"  # synonyms count as their label
    assert vote(
        Q_AU_MANY, ["brow lowerer, lid tightener", "brow lowerer", "lid tightener, brow lowerer, jaw drop"]
    ) == ("brow lowerer, lid tightener")  # per AU: named by more than half the samples
    anger = combined_answer(["brow lowerer", "lid tightener"], "anger", "negative")
    disgust = combined_answer(["brow lowerer"], "disgust", "negative")
    assert vote(Q_COMBINED_MANY, [anger, disgust, anger]) == anger
    # each part votes on its own: AUs named by most samples, the majority fine and coarse labels
    third = combined_answer(["brow lowerer"], "anger", "positive")
    assert vote(Q_COMBINED_MANY, [anger, disgust, third]) == combined_answer(
        ["brow lowerer"], "anger", "negative"
    )
    assert vote("Why?", ["a b", "c", "A b!"]) == "a b"
    assert vote(Q_COARSE, ["only one"]) == "only one"


def test_eval_samples_keeps_every_sample_and_votes(synthme, tiny_qwen, tmp_path):
    args = ["--samples", "5", "--temperature", "1.5", "--seed", "7", "--limit", "6"]
    r = eval_cli(synthme / "test.jsonl", synthme, tiny_qwen, tmp_path / "a", *args)
    assert r.returncode == 0, r.stderr
    preds = read_jsonl(tmp_path / "a" / "predictions.jsonl")
    assert all(len(p["samples"]) == 5 for p in preds)
    assert all(p["raw"] == vote(p["question"], p["samples"]) for p in preds)
    assert any(len(set(p["samples"])) > 1 for p in preds)  # they are samples, not one greedy answer 5 times
    again = eval_cli(synthme / "test.jsonl", synthme, tiny_qwen, tmp_path / "b", *args)
    assert again.returncode == 0
    assert [p["samples"] for p in read_jsonl(tmp_path / "b" / "predictions.jsonl")] == [
        p["samples"] for p in preds
    ]
    settings = json.loads((tmp_path / "a" / "metrics.json").read_text())["settings"]
    assert settings["generation"]["samples"] == 5 and settings["seed"] == 7  # part of the fingerprint


def test_one_sample_is_plain_seeded_sampling(synthme, tiny_qwen, tmp_path):
    base = ["--do-sample", "--temperature", "1.5", "--seed", "3", "--limit", "6"]
    a = eval_cli(synthme / "test.jsonl", synthme, tiny_qwen, tmp_path / "a", *base)
    b = eval_cli(synthme / "test.jsonl", synthme, tiny_qwen, tmp_path / "b", *base, "--samples", "1")
    assert a.returncode == 0 and b.returncode == 0
    answers = [[p["answer"] for p in read_jsonl(tmp_path / x / "predictions.jsonl")] for x in "ab"]
    assert answers[0] == answers[1]
    greedy = eval_cli(synthme / "test.jsonl", synthme, tiny_qwen, tmp_path / "g", "--limit", "6")
    assert greedy.returncode == 0
    assert [p["answer"] for p in read_jsonl(tmp_path / "g" / "predictions.jsonl")] != answers[0]


def test_ask_samples(clips, tiny_qwen):
    r = cli(
        "ask",
        clips["mp4"],
        Q_COARSE,
        "--model",
        tiny_qwen,
        "--json",
        "--samples",
        "3",
        "--temperature",
        "1.5",
    )
    out = json.loads(r.stdout)
    assert r.returncode == 0 and len(out["samples"]) == 3 and out["answer"] == vote(Q_COARSE, out["samples"])
