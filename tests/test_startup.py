"""Fast from the first keystroke and honest about it: what each command imports, how long outputs take,
the timing a run records, --threads, whole-clip sampling and `mevqa bench startup` (issue 23)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from helpers import cli, eval_cli
from PIL import Image

from mevqa.config import FrameConfig
from mevqa.data.megc import read_jsonl, write_jsonl
from mevqa.video import open_clip, select

HEAVY = (
    "torch",
    "transformers",
    "peft",
    "sklearn",
    "matplotlib",
    "accelerate",
    "vllm",
    "langchain_core",
    "nltk",
    "sacrebleu",
)
# `python -m mevqa ARGS` run by runpy exactly as the interpreter runs it; at exit (after sys.exit) the
# top-level packages loaded are printed as the last line of stderr
PROBE = """
import atexit, json, runpy, sys
atexit.register(lambda: print("MODULES " + json.dumps(sorted({m.split(".")[0] for m in sys.modules})),
                              file=sys.stderr))
sys.argv = ["mevqa", *sys.argv[1:]]
runpy.run_module("mevqa", run_name="__main__", alter_sys=True)
"""


def loaded(*args: str) -> tuple[set[str], subprocess.CompletedProcess]:
    """The heavy packages `mevqa ARGS` imports, from a fresh interpreter."""
    r = subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("MODULES ")][-1]
    return set(json.loads(line[len("MODULES ") :])) & set(HEAVY), r


def _no_gold(synthme, tmp_path, n: int = 5):
    rows = read_jsonl(synthme / "test.jsonl")[:n]
    test_rows = [
        {"video_id": f"synthme_test_{r['filename']}_{i}", "video": r["filename"], "question": r["question"]}
        for i, r in enumerate(rows)
    ]
    return write_jsonl(tmp_path / "to_answer.jsonl", test_rows)


def test_commands_load_only_what_they_use(synthme, tiny_qwen, tmp_path):
    mods, r = loaded("--help")
    assert r.returncode == 0 and not mods, mods
    mods, r = loaded("data", "validate", synthme / "train.jsonl", "--root", synthme)
    assert r.returncode == 0 and not mods, (mods, r.stderr[-2000:])  # no torch, not even transformers
    pred = tmp_path / "pred.jsonl"
    write_jsonl(pred, [{"id": x["id"], "answer": "negative"} for x in read_jsonl(synthme / "train.jsonl")])
    mods, r = loaded("score", "--pred", pred, "--gold", synthme / "train.jsonl")
    assert r.returncode == 0 and "UF1-C" in r.stdout, r.stderr[-2000:]
    assert mods == {"nltk", "sacrebleu"}, mods  # ROUGE and BLEU; no torch, scikit-learn or matplotlib
    # answering a test file (no gold) with no adapter: the model's own imports, no scoring, no plotting
    data, out = _no_gold(synthme, tmp_path), tmp_path / "run"
    mods, r = loaded("eval", "--data", data, "--root", synthme / "frames", "--model", tiny_qwen, "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert {"torch", "transformers"} <= mods  # transformers itself imports accelerate when installed
    assert not mods & {"peft", "sklearn", "matplotlib", "vllm", "langchain_core", "nltk", "sacrebleu"}, mods


@pytest.mark.slow  # a fresh process
def test_scoring_hides_scipy_and_sklearn_only_while_nltk_imports():
    code = (
        "import sys; from mevqa.evaluation.metrics import rouge1; assert rouge1(['raised brows'], ['brow']);"
        "assert 'sklearn' not in sys.modules; import sklearn.metrics, scipy.stats; print('ok')"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "ok", r.stderr[-2000:]


@pytest.mark.slow  # a fresh process
def test_process_seconds_count_from_the_process_start():
    """The interpreter's own start-up and the imports before mevqa's are in it (a sleep stands for them)."""
    code = "import time; time.sleep(0.6); import mevqa; print(mevqa.process_seconds())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert 0.6 <= float(r.stdout) < 30, r.stdout


def test_eval_timing_is_the_process_and_a_rerun_keeps_it(synthme, tiny_qwen, tmp_path):
    out = tmp_path / "run"
    args = ["eval", "--data", synthme / "test.jsonl", "--root", synthme, "--model", tiny_qwen, "--out", out]
    args += ["--limit", "5", "--max-new-tokens", "4", "--threads", "1"]
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "mevqa", *map(str, args)], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-2000:]
    run = json.loads((out / "metrics.json").read_text())["run"]
    assert run["answered_this_run"] == 5 and run["threads"] == 1
    assert run["answering_seconds"] < run["process_seconds"] <= wall
    # imports and model load are in it: the record is written just before the last files and the exit
    assert run["process_seconds"] > 0.75 * wall, (run, wall)
    closing = r.stdout.strip().splitlines()[-1]
    assert "5 answered this run" in closing and "since the process started" in closing
    assert "answering" in (out / "report.md").read_text().split("## Run")[1]
    again = eval_cli(synthme / "test.jsonl", synthme, tiny_qwen, out, "--limit", "5", "--max-new-tokens", "4")
    assert "0 answered this run" in again.stdout, again.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["run"] == run  # the rerun answered nothing: the timing stays the one of the run that did
    assert [x["answered_this_run"] for x in m["runs"]] == [5, 0]


def test_ask_threads_and_its_two_clocks(clips, tiny_qwen):
    import torch

    before = torch.get_num_threads()
    try:
        r = cli(
            "ask",
            clips["folder"],
            "What is the coarse expression class?",
            "--model",
            tiny_qwen,
            "--max-new-tokens",
            "4",
            "--threads",
            "1",
            "--json",
        )
    finally:
        torch.set_num_threads(before)
    out = json.loads(r.stdout)
    assert out["threads"] == 1 and 0 < out["seconds"] < out["process_seconds"]
    assert "--threads" in cli("chat", "--help").stdout and "--threads" in cli("eval", "--help").stdout


def test_confusion_pngs_only_where_gold_has_classes(tmp_path):
    from mevqa.evaluation.report import confusion_png, confusions

    path = confusion_png(
        ["negative", "positive"] * 3,
        ["negative"] * 5 + ["what"],
        ["negative", "positive"],
        "coarse (rows: gold)",
        tmp_path / "c.png",
    )
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 100 and im.height > 80
    one = [
        {"id": f"q{i}", "question": "What is the coarse expression class?", "answer": "negative"}
        for i in "12"
    ]
    (tmp_path / "confusion_coarse.png").write_bytes(b"stale")
    assert confusions(one, {"q1": "negative", "q2": "positive"}, tmp_path) == []
    assert not (tmp_path / "confusion_coarse.png").exists()  # an earlier run's picture does not linger


def test_no_plots_flag(synthme, tiny_qwen, tmp_path):
    out = tmp_path / "run"
    r = eval_cli(synthme / "test.jsonl", synthme, tiny_qwen, out, "--limit", "5", "--no-plots")
    assert r.returncode == 0 and (out / "metrics.json").exists(), r.stderr
    assert not list(out.glob("*.png"))


def test_uniform_is_onset_to_offset_and_whole_is_the_clip(clips):
    clip = open_clip(clips["folder"])  # img1.jpg ... img48.jpg: frame number = file number
    inside = select(clip, FrameConfig(frames=4), onset=11, offset=21)
    assert inside == [10, 13, 17, 20]
    assert select(clip, FrameConfig(frames=4, sampling="whole"), onset=11, offset=21) == [0, 16, 31, 47]
    text = " ".join(cli("eval", "--help").stdout.split())
    assert (
        "between the row's onset and offset" in text
        and "whole (over the whole clip, onset and offset ignored" in text
    )


def test_bench_startup_runs(tiny_qwen, tmp_path):
    r = cli("bench", "startup", "--model", tiny_qwen, "--repeat", "1", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "startup.json").read_text())["startup"]
    assert set(res["seconds"]) == set(res["own_report_seconds"]) and len(res["seconds"]) == 2
    (ratio,) = res["ratios"].values()
    assert ratio > 0 and "mevqa ask / (imports + load)" in r.stdout


def test_collection_waits_out_start_up_until_a_backend_is_loaded(tiny_qwen):
    import gc

    from mevqa import process
    from mevqa.backends.base import load_backend
    from mevqa.config import ModelSpec

    usual = gc.get_threshold()
    process.started()  # not deferred: nothing changes, nothing is frozen
    assert gc.get_threshold() == usual and gc.get_freeze_count() == 0
    try:
        process.defer_collection()
        assert gc.get_threshold() == process.STARTUP_THRESHOLDS
        load_backend(ModelSpec(str(tiny_qwen), device="cpu"))
        assert gc.get_threshold() == usual and gc.get_freeze_count() > 0  # answering collects as usual
    finally:
        gc.set_threshold(*usual)
        gc.unfreeze()


EXIT = """
import atexit, subprocess, sys, threading, time
from mevqa import process
atexit.register(lambda: open(sys.argv[1], "w").write("handler ran"))
if sys.argv[2] == "child":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
elif sys.argv[2] == "thread":
    threading.Thread(target=time.sleep, args=(0.5,)).start()
print("printed, not flushed", end="")
print("returned", process.exit_now(3), file=sys.stderr)
"""


@pytest.mark.slow  # fresh processes
@pytest.mark.parametrize("case", ["alone", "child", "thread"])
def test_exit_now_skips_the_teardown_only_when_nothing_needs_it(tmp_path, case):
    flag = tmp_path / "flag"
    r = subprocess.run([sys.executable, "-c", EXIT, flag, case], capture_output=True, text=True, timeout=60)
    assert r.stdout == "printed, not flushed" and flag.read_text() == "handler ran"
    from mevqa.process import _children

    # where /proc lists no children (a kernel without them), exit_now cannot know and exits the usual way
    if case == "alone" and _children() is not None:  # exited in exit_now, after the handlers and a flush
        assert r.returncode == 3 and "returned" not in r.stderr, r.stderr
    else:  # a child process or a thread of its own: exit_now hands the code back to the usual exit
        assert r.returncode == 0 and "returned 3" in r.stderr, r.stderr
