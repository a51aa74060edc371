"""The benchmarks run end to end at tiny sizes (no timing assertions: speed is measured, not asserted)."""

from __future__ import annotations

import json

import pytest
from helpers import cli

from mevqa.bench import bench_sampling, format_results, run


def test_sampling_bench_small(tmp_path):
    r = bench_sampling(tmp_path, seconds=0.2, size=(64, 48), frames=4, repeat=1)
    assert r["frames_in_clip"] == 40 and set(r["ratios"]) == {
        "decord_full / decord_sparse",
        "pyav_full / decord_sparse",
        "folder_full / folder_sparse",
    }
    assert all(v > 0 for v in r["seconds"].values())


def test_eval_bench_small(tiny_qwen, tmp_path):
    """One eval bench through the public entry point: the others share its workload and runner path."""
    res = run("reuse", tmp_path / "out", model=str(tiny_qwen), clips=2, size=64, repeat=1, threads=1)
    assert set(res) == {"environment", "reuse"} and res["environment"]["torch_threads"] == 1
    assert res["reuse"]["questions"] == 10  # 2 clips x 5 questions
    assert json.loads((tmp_path / "out" / "reuse.json").read_text())["reuse"]["questions_per_second"]
    assert "decode once + shared prefix" in format_results(res)


def test_bench_cli_help():
    r = cli("bench", "--help")
    assert r.returncode == 0 and "sampling" in r.stdout and "--threads" in r.stdout


@pytest.mark.slow  # builds a tiny model and SynthME, trains LoRA and QLoRA
def test_gpu_bench_runs_every_row_on_cpu_with_the_tiny_shape(tmp_path):
    """`mevqa bench gpu` is one command for the GPU rows; here it runs at the tiny shape (MFU needs a GPU)."""
    from mevqa import bench_gpu

    res = bench_gpu.run("tiny", tmp_path, sizes=(1, 8), steps=2)
    assert set(res["eval"]["questions_per_second"]) == {"1", "8"} and res["eval"]["prefill_mfu"]["8"] is None
    assert res["decode"]["decode_tokens_per_second"] > 0
    assert res["train_lora"]["samples_per_second"] > 0 and res["train_qlora"]["method"] == "qlora"
    assert "prefill MFU" in (tmp_path / "gpu-tiny.md").read_text()
