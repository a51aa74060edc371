"""Two real processes on this CPU (torch.distributed over gloo, started by `accelerate launch`): training
matches one process with twice the batch, only the main process writes, a killed launcher resumes both
ranks at the same step; eval shards clips across processes and merges one predictions file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import cli, train_args

from mevqa.data.megc import read_jsonl, row_id

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")
LAUNCH = [
    str(ACCELERATE),
    "launch",
    "--config_file",
    str(ROOT / "adapters/recipes/accelerate_cpu_2proc.yaml"),
]
pytestmark = pytest.mark.skipif(not ACCELERATE.exists(), reason="accelerate's launcher is not installed")


def launch(*args, timeout=600) -> subprocess.CompletedProcess:
    cmd = [*LAUNCH, "-m", "mevqa", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())


def test_two_processes_train_like_one_with_twice_the_batch(synthme, tiny_qwen, tmp_path):
    """Equal seeds, 2 x batch 2 vs 1 x batch 4: the same loss at every step (the loss is normalised over
    the global batch's answer tokens, the schedule steps once per optimizer step). 6 steps stay inside the
    first epoch: its last batch is partial, and accelerate pads a partial batch differently per process."""
    one, two = tmp_path / "one", tmp_path / "two"
    same = ["--max-steps", "6", "--save-every", "3", "--lora-dropout", "0", "--report-to", "tensorboard"]
    r = cli(*train_args(synthme, tiny_qwen, one, "--batch-size", "4", *same))
    assert r.returncode == 0, r.stderr
    r = launch(*train_args(synthme, tiny_qwen, two, "--batch-size", "2", *same))
    assert r.returncode == 0, r.stderr[-3000:]
    a = json.loads((one / "metrics.json").read_text())
    b = json.loads((two / "metrics.json").read_text())
    assert b["processes"] == 2 and [s for s, _ in b["train_loss"]] == [1, 2, 3, 4, 5, 6]
    for (_, la), (_, lb) in zip(a["train_loss"], b["train_loss"]):
        assert lb == pytest.approx(la, abs=1e-4)
    # only the main process wrote: one adapter, one progress bar, checkpoints once, TensorBoard once
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["step-3", "step-6"]
    assert (
        r.stderr.count("training:   0%") == 1 and len(list((two / "runs").rglob("events.out.tfevents*"))) == 2
    )
    from safetensors.torch import load_file

    wa, wb = load_file(one / "adapter_model.safetensors"), load_file(two / "adapter_model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_killed_launcher_resumes_both_ranks(synthme, tiny_qwen, tmp_path):
    out = tmp_path / "lora"
    args = train_args(
        synthme,
        tiny_qwen,
        out,
        "--batch-size",
        "1",
        "--max-steps",
        "30",
        "--save-every",
        "5",
        "--report-to",
        "none",
    )
    proc = subprocess.Popen(
        [*LAUNCH, "-m", "mevqa", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not (out / "checkpoints" / "step-10").exists():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, as a lost node would
    proc.wait()
    assert (out / "checkpoints" / "step-10").exists() and not (out / "adapter_config.json").exists()
    r = launch(*args, "--resume")
    assert r.returncode == 0 and "trained 30 steps" in r.stdout, r.stderr[-3000:]
    steps = [s for s, _ in json.loads((out / "metrics.json").read_text())["train_loss"]]
    assert steps == list(range(1, 31))


def test_two_processes_shard_eval_by_clip_and_merge(synthme, tiny_qwen, tmp_path):
    common = [
        "eval",
        "--data",
        synthme / "train.jsonl",
        "--root",
        synthme,
        "--model",
        tiny_qwen,
        "--max-new-tokens",
        "8",
    ]
    assert cli(*common, "--out", tmp_path / "one").returncode == 0
    r = launch(*common, "--out", tmp_path / "two")
    assert r.returncode == 0, r.stderr[-3000:]
    one = read_jsonl(tmp_path / "one" / "predictions.jsonl")
    two = read_jsonl(tmp_path / "two" / "predictions.jsonl")
    assert [(row_id(x), x["answer"]) for x in two] == [(row_id(x), x["answer"]) for x in one]  # order, once
    assert not list((tmp_path / "two").glob("predictions.rank*")) and r.stdout.count("questions,") == 1
    # resume after a change of process count: 1 process answers 10, then 2 processes the rest
    shutil.rmtree(tmp_path / "two")
    assert cli(*common, "--out", tmp_path / "two", "--limit", "10").returncode == 0
    r = launch(*common, "--out", tmp_path / "two")
    total = len(one)
    assert r.returncode == 0 and f"{total - 10} answered this run" in r.stdout, r.stdout
    again = read_jsonl(tmp_path / "two" / "predictions.jsonl")
    assert [(row_id(x), x["answer"]) for x in again] == [(row_id(x), x["answer"]) for x in one]


def test_fsdp_two_processes_train_like_one(synthme, tiny_qwen, tmp_path):
    """FSDP (v2, parameters sharded over 2 processes) trains the same LoRA as one process: equal losses
    and adapter weights, one adapter written."""
    fsdp = [
        str(ACCELERATE),
        "launch",
        "--config_file",
        str(ROOT / "adapters/recipes/accelerate_fsdp_cpu_2proc.yaml"),
    ]
    same = ["--max-steps", "4", "--lora-dropout", "0"]
    r = cli(*train_args(synthme, tiny_qwen, tmp_path / "one", "--batch-size", "4", *same))
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [
            *fsdp,
            "-m",
            "mevqa",
            *train_args(synthme, tiny_qwen, tmp_path / "fsdp", "--batch-size", "2", *same),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "metrics.json").read_text())["train_loss"]
    b = json.loads((tmp_path / "fsdp" / "metrics.json").read_text())["train_loss"]
    assert [round(x, 4) for _, x in a] == pytest.approx([round(x, 4) for _, x in b], abs=2e-4)
    from safetensors.torch import load_file

    wa = load_file(tmp_path / "one" / "adapter_model.safetensors")
    wb = load_file(tmp_path / "fsdp" / "adapter_model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)
