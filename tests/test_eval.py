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
from helpers import cli, eval_cli

from mevqa.data.megc import read_jsonl, row_id, write_jsonl


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
    run_keys = {"mevqa_version", "fingerprint", "device", "seed", "process_seconds", "answering_seconds"}
    assert run_keys <= set(m["run"])
    assert m["settings"]["model_config_hash"] and m["settings"]["prompt"] == "labels"
    report = (out / "report.md").read_text()
    assert "## Metrics" in report and "10 worst examples" in report and "prompt_fingerprint" in report
    assert (out / "confusion_coarse.png").stat().st_size > 1000 and (out / "confusion_fine.png").exists()
    assert "UF1-C" in r.stdout
    # files as a user expects them: the umask's modes (mkstemp alone gives 0600), no lock file left behind
    from mevqa.io import FILE_MODE

    for name in ("predictions.jsonl", "metrics.json", "report.md", "confusion_coarse.png"):
        assert (out / name).stat().st_mode & 0o777 == FILE_MODE, name
    assert not (out / ".lock").exists()


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
        "--limit",
        "20",
        "--max-new-tokens",
        "24",
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
    total = 20
    assert 5 <= before < total, "the run was not killed mid-way"
    r = cli(*cmd[3:])
    assert r.returncode == 0, r.stderr
    ids = pred_ids(out)
    assert sorted(ids) == sorted(row_id(x) for x in read_jsonl(synthme / "train.jsonl")[:total])
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
    kept = read_jsonl(out / "superseded.jsonl")  # ... and the answers of the first settings kept apart
    assert len(kept) == n and {r["id"] for r in kept} == set(pred_ids(out))
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
    assert r.returncode == 1, r.stderr  # some questions have no answer: the exit status says so
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
                "gen": {"max_new_tokens": 8},
                "frames": {"input": "flow", "flow_with_oao": True, "folder_fps": 100.0},
            }
        )
    )
    r = cli("eval", "--config", str(cfg), "--limit", "7")
    assert r.returncode == 0, r.stderr
    assert len(pred_ids(tmp_path / "run")) == 7
    settings = json.loads((tmp_path / "run" / "metrics.json").read_text())["settings"]
    assert settings["prompt"] == "hierarchical"
    # options the flat configs could not reach from eval (they were "unknown keys")
    assert settings["frames"]["flow_with_oao"] is True and settings["frames"]["folder_fps"] == 100.0


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


def _answers(out):
    return {row_id(r): r for r in read_jsonl(out / "predictions.jsonl")}


def test_limit_keeps_the_other_answers(synthme, tiny_qwen, tmp_path):
    out = tmp_path / "run"
    n = len(read_jsonl(synthme / "test.jsonl"))
    assert eval_cli(synthme / "test.jsonl", synthme, tiny_qwen, out).returncode == 0
    before = _answers(out)
    r = eval_cli(synthme / "test.jsonl", synthme, tiny_qwen, out, "--limit", "3")
    assert r.returncode == 0 and "3 questions" in r.stdout
    assert _answers(out) == before and len(before) == n  # the rows this run did not ask about stay
    # --overwrite with a mistyped --model: the model fails to load before any answer is deleted
    r = eval_cli(synthme / "test.jsonl", synthme, tmp_path / "no-such-model", out, "--overwrite")
    assert r.returncode == 2 and _answers(out) == before


def test_limit_keeps_every_row_of_the_submission(synthme, tiny_qwen, tmp_path):
    """`--limit 2` on a test file used to cut the submission file to 2 rows: it is written from every
    answer on disk."""
    rows = read_jsonl(synthme / "test.jsonl")[:6]
    test_rows = [
        {
            "video_id": f"synthme_test_{r['filename']}_{i}",
            "video": r["filename"],
            "question": r["question"],
            "answer": "",
        }
        for i, r in enumerate(rows)
    ]
    data = write_jsonl(tmp_path / "test_to_answer.jsonl", test_rows)
    out = tmp_path / "run"
    assert eval_cli(data, synthme / "frames", tiny_qwen, out).returncode == 0
    r = eval_cli(data, synthme / "frames", tiny_qwen, out, "--limit", "2")
    assert r.returncode == 0, r.stderr
    assert len(read_jsonl(out / "me_vqa_synthme_test_pred.jsonl")) == 6


def test_duplicate_ids_and_empty_files_are_refused_before_work(synthme, tiny_qwen, tmp_path):
    rows = read_jsonl(synthme / "test.jsonl")
    dup = write_jsonl(tmp_path / "dup.jsonl", [rows[0], rows[1], rows[0]])
    r = eval_cli(dup, synthme, tiny_qwen, tmp_path / "a")
    assert r.returncode == 2 and "duplicate id" in r.stderr and "rows 1 and 3" in r.stderr
    (tmp_path / "empty.jsonl").write_text("")
    r = eval_cli(tmp_path / "empty.jsonl", synthme, tiny_qwen, tmp_path / "b")
    assert r.returncode == 2 and "holds no questions" in r.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_torn_last_line_is_repaired(synthme, tiny_qwen, tmp_path):
    out = tmp_path / "run"
    n = len(read_jsonl(synthme / "test.jsonl"))
    eval_cli(synthme / "test.jsonl", synthme, tiny_qwen, out)
    pred = out / "predictions.jsonl"
    lines = pred.read_text().splitlines(keepends=True)
    pred.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # a write cut mid-line
    r = eval_cli(synthme / "test.jsonl", synthme, tiny_qwen, out)
    assert r.returncode == 0, r.stderr
    assert f"{n} questions, {n} answered, 0 errors; 1 answered this run" in r.stdout
    assert len(_answers(out)) == n


def test_one_eval_per_out_folder(synthme, tiny_qwen, tmp_path):
    from mevqa.io import FolderLock

    out = tmp_path / "run"
    lock = FolderLock(out)  # another eval holds the folder
    try:
        r = eval_cli(synthme / "test.jsonl", synthme, tiny_qwen, out)
    finally:
        lock.release()
    assert r.returncode == 2 and "in use by mevqa eval, pid" in r.stderr
    assert eval_cli(synthme / "test.jsonl", synthme, tiny_qwen, out, "--limit", "2").returncode == 0


def test_new_weights_at_the_same_path_are_not_served_stale(synthme, tiny_qwen, tmp_path):
    """Rebuilding the model folder with other weights recomputes every answer (the fingerprint reads the
    weights, not only config.json)."""
    import shutil

    from mevqa.models.tiny import build_tiny

    model, out = tmp_path / "model", tmp_path / "run"
    shutil.copytree(tiny_qwen, model)
    assert eval_cli(synthme / "test.jsonl", synthme, model, out, "--limit", "6").returncode == 0
    build_tiny("qwen2_5_vl", model, seed=5)
    r = eval_cli(synthme / "test.jsonl", synthme, model, out, "--limit", "12")
    assert "12 answered this run" in r.stdout, r.stdout


def test_failures_in_a_row_stop_the_run(synthme, tiny_qwen, tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    r = eval_cli(synthme / "test.jsonl", root, tiny_qwen, tmp_path / "run", "--max-errors", "3")
    assert r.returncode == 1 and "3 answers in a row failed" in r.stderr and "clip not found" in r.stderr
    assert len(read_jsonl(tmp_path / "run" / "predictions.jsonl")) >= 3  # what was answered is kept


def test_common_flags_after_the_command(synthme, tiny_qwen, tmp_path):
    r = eval_cli(synthme / "test.jsonl", synthme, tiny_qwen, tmp_path / "run", "--limit", "2", "-v")
    assert r.returncode == 0 and "INFO" in r.stderr


def test_a_full_disk_is_one_line_and_keeps_what_was_written(synthme, tiny_qwen, tmp_path):
    """/dev/full answers every write with ENOSPC, as a full disk does."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "predictions.jsonl").symlink_to("/dev/full")
    r = eval_cli(synthme / "test.jsonl", synthme, tiny_qwen, out, "--limit", "3")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "cannot write: No space left on device" in lines[-1], r.stderr
    assert lines[-1].startswith("error: ") and "Traceback" not in r.stderr
