"""`mevqa eval` end to end on SynthME with a tiny model: outputs, resume after SIGKILL, errors, settings."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import run_cli

from mevqa.data.megc import read_jsonl, row_id, write_jsonl


def eval_cli(data, root, model, out, *extra):
    return run_cli(
        "eval",
        "--data",
        str(data),
        "--root",
        str(root),
        "--model",
        str(model),
        "--out",
        str(out),
        "--max-new-tokens",
        "12",
        *extra,
    )


def pred_ids(out):
    return [row_id(json.loads(line)) for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_eval_writes_everything(synthme, tiny_qwen, tmp_path):
    out = tmp_path / "run"
    r = eval_cli(synthme / "test.jsonl", synthme, tiny_qwen, out, "--prompt", "labels")
    assert r.returncode == 0, r.stderr
    rows = read_jsonl(synthme / "test.jsonl")
    preds = read_jsonl(out / "predictions.jsonl")
    assert [row_id(p) for p in preds] == [row_id(x) for x in rows]
    for p in preds:
        assert {"answer", "raw", "error", "seconds", "gold", "fingerprint"} <= set(p) and p["error"] is None
    m = json.loads((out / "metrics.json").read_text())
    assert m["overall"]["n"] == len(rows) and m["overall"]["missing"] == 0
    assert {"mevqa_version", "fingerprint", "device", "wall_seconds", "seed"} <= set(m["run"])
    assert m["settings"]["model_config_hash"] and m["settings"]["prompt"] == "labels"
    report = (out / "report.md").read_text()
    assert "## Metrics" in report and "10 worst examples" in report and "prompt_fingerprint" in report
    assert (out / "confusion_coarse.png").stat().st_size > 1000 and (out / "confusion_fine.png").exists()
    assert "UF1-C" in r.stdout


def test_resume_after_sigkill_answers_each_question_once(synthme, tiny_qwen, tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "mevqa",
        "eval",
        "--data",
        str(synthme / "train.jsonl"),
        "--root",
        str(synthme),
        "--model",
        str(tiny_qwen),
        "--out",
        str(out),
        "--no-reuse",
        "--batch-size",
        "1",
        "--max-new-tokens",
        "48",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    pred = out / "predictions.jsonl"
    deadline = time.time() + 60
    while (
        proc.poll() is None
        and time.time() < deadline
        and (not pred.exists() or len(pred.read_text().splitlines()) < 5)
    ):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = len(pred.read_text().splitlines())
    total = len(read_jsonl(synthme / "train.jsonl"))
    assert 5 <= before < total, "the run was not killed mid-way"
    r = run_cli(*cmd[3:])
    assert r.returncode == 0, r.stderr
    ids = pred_ids(out)
    assert sorted(ids) == sorted(row_id(x) for x in read_jsonl(synthme / "train.jsonl"))
    assert len(ids) == len(set(ids)) == total
    assert (
        f"{total - before} answered this run" in r.stdout
        or f"{total - before + 1} answered this run" in r.stdout
    )


def test_rerun_skips_and_settings_change_recomputes(synthme, tiny_qwen, tmp_path):
    out = tmp_path / "run"
    n = len(read_jsonl(synthme / "test.jsonl"))
    assert f"{n} answered this run" in eval_cli(synthme / "test.jsonl", synthme, tiny_qwen, out).stdout
    assert "0 answered this run" in eval_cli(synthme / "test.jsonl", synthme, tiny_qwen, out).stdout
    r = eval_cli(synthme / "test.jsonl", synthme, tiny_qwen, out, "--input", "oao")
    assert f"{n} answered this run" in r.stdout
    assert len(pred_ids(out)) == n  # compacted: one row per question, the current settings
    assert (
        f"{n} answered this run"
        in eval_cli(synthme / "test.jsonl", synthme, tiny_qwen, out, "--input", "oao", "--overwrite").stdout
    )


def test_missing_clip_becomes_error_rows(synthme, tiny_qwen, tmp_path):
    root = tmp_path / "clips"
    shutil.copytree(synthme / "frames", root / "frames")
    rows = read_jsonl(synthme / "test.jsonl")
    gone = rows[0]["filename"]
    shutil.rmtree(root / "frames" / gone)
    out = tmp_path / "run"
    r = eval_cli(synthme / "test.jsonl", root, tiny_qwen, out)
    assert r.returncode == 0, r.stderr
    n_gone = sum(x["filename"] == gone for x in rows)
    assert f"{n_gone} errors" in r.stdout
    preds = read_jsonl(out / "predictions.jsonl")
    errs = [p for p in preds if p["error"]]
    assert len(errs) == n_gone and all("clip not found" in p["error"] and p["answer"] == "" for p in errs)
    m = json.loads((out / "metrics.json").read_text())
    assert m["overall"]["missing"] == n_gone
    assert "clip not found" in (out / "report.md").read_text()


def test_test_file_gets_submission(synthme, tiny_qwen, tmp_path):
    rows = read_jsonl(synthme / "test.jsonl")
    test_rows = [
        {
            "video_id": f"synthme_test_{r['filename']}_{r['id'].rsplit('_', 1)[1]}",
            "video": r["filename"],
            "question": r["question"],
            "answer": "",
        }
        for r in rows
    ]
    data = write_jsonl(tmp_path / "test_to_answer.jsonl", test_rows)
    out = tmp_path / "run"
    r = eval_cli(data, synthme / "frames", tiny_qwen, out)
    assert r.returncode == 0, r.stderr
    sub = read_jsonl(out / "me_vqa_synthme_test_pred.jsonl")
    assert [x["video_id"] for x in sub] == [x["video_id"] for x in test_rows]
    assert all(x["answer"] for x in sub) and list(sub[0]) == ["video_id", "video", "question", "answer"]
    assert not (out / "metrics.json").exists()


def test_yaml_config_and_hierarchical(synthme, tiny_qwen, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "data": str(synthme / "test.jsonl"),
                "root": str(synthme),
                "model": str(tiny_qwen),
                "out": str(tmp_path / "run"),
                "prompt": "hierarchical",
                "max_new_tokens": 8,
            }
        )
    )
    r = run_cli("eval", "--config", str(cfg), "--limit", "7")
    assert r.returncode == 0, r.stderr
    assert len(pred_ids(tmp_path / "run")) == 7
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["settings"]["prompt"] == "hierarchical"


@pytest.mark.parametrize("case", ["malformed", "backend", "model", "config_key"])
def test_bad_input_stops_before_work(synthme, tiny_qwen, tmp_path, case):
    data, extra, model = synthme / "test.jsonl", [], str(tiny_qwen)
    if case == "malformed":
        data = tmp_path / "bad.jsonl"
        data.write_text((synthme / "test.jsonl").read_text() + '{"id": "x", "question": \n')
    elif case == "backend":
        extra = ["--backend", "nope"]
    elif case == "model":
        model = str(tmp_path / "no-model")
    else:
        cfg = tmp_path / "c.yaml"
        cfg.write_text("frams: 8\n")
        extra = ["--config", str(cfg)]
    out = tmp_path / "run"
    r = eval_cli(data, synthme, model, out, *extra)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, (
        r.stderr
    )
    assert not (out / "predictions.jsonl").exists()
