"""One config: settings are composed once, every field is reachable from YAML and from every command that
holds its spec, and each setting has one default."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import cli

from mevqa.cli import build_parser
from mevqa.cli._args import load_settings
from mevqa.config import AskConfig, EvalConfig, FrameConfig, GenConfig, TrainConfig, from_dict
from mevqa.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def test_frame_options_reach_eval_train_ask_and_chat():
    """Frame settings and trust_remote_code reach every command that holds them, flags or packed."""
    p = build_parser()
    frame = ["--input", "flow", "--flow-with-oao", "--folder-fps", "100", "--frames-args", "flow_method=tvl1"]
    cfgs = [
        load_settings(
            p.parse_args(
                ["eval", "--data", "d", "--out", "o", "--model", "m", *frame, "--trust-remote-code"]
            ),
            EvalConfig,
            "eval",
        ),
        load_settings(
            p.parse_args(
                ["train", "--data", "d", "--out", "o", "--model", "m", *frame[:-2], "--flow-method", "tvl1"]
                + ["--trust-remote-code"]
            ),
            TrainConfig,
            "train",
        ),
        load_settings(
            p.parse_args(["ask", "c", "q", "--model", "m", *frame, "--trust-remote-code"]), AskConfig, "ask"
        ),
        load_settings(
            p.parse_args(["chat", "c", "--model", "m", *frame, "--trust-remote-code"]), AskConfig, "chat"
        ),
    ]
    want = FrameConfig(input="flow", flow_with_oao=True, folder_fps=100.0, flow_method="tvl1")
    assert all(c.frames == want and c.model.trust_remote_code for c in cfgs)


def test_yaml_nesting(tmp_path):
    y = tmp_path / "r.yaml"
    y.write_text(
        "data: d\nout: o\nmodel: m\nframes: {frames: 4}\ngen: {max_new_tokens: 9}\n"
        "vllm: {tensor_parallel_size: 2}\n"
    )
    ns = build_parser().parse_args(["eval", "--config", str(y), "--frames", "6"])
    cfg = load_settings(ns, EvalConfig, "eval")
    assert cfg.model.model == "m" and cfg.frames.frames == 6 and cfg.gen.max_new_tokens == 9
    assert cfg.vllm.tensor_parallel_size == 2  # vLLM's engine settings reach eval
    with pytest.raises(InputError, match=r"r.yaml: unknown key\(s\) frames.inpt"):
        from_dict(EvalConfig, {"data": "d", "out": "o", "model": "m", "frames": {"inpt": "flow"}}, str(y))
    with pytest.raises(InputError, match=r"frames.frames = '8' — expected an integer"):
        from_dict(EvalConfig, {"data": "d", "out": "o", "model": "m", "frames": {"frames": "8"}}, "c.yaml")


def test_every_recipe_in_the_repo_validates():
    for path in [*(ROOT / "adapters" / "recipes").glob("*.yaml"), *(ROOT / "eval").glob("*.yaml")]:
        values = yaml.safe_load(path.read_text())
        if "accelerate" in path.name or "compute_environment" in values:
            continue  # accelerate's own config files
        cls = EvalConfig if path.parent.name == "eval" else TrainConfig
        from_dict(cls, {"data": "d", "out": "o", **values}, str(path))


def test_one_default_per_setting():
    """max_new_tokens was 32, 48 or 64 depending on the entry point."""
    from mevqa.agent import ChatSession
    from mevqa.agent.lc import MevqaChatModel

    p = build_parser()
    defaults = {
        load_settings(p.parse_args(["ask", "c", "q", "--model", "m"]), AskConfig, "ask").gen,
        load_settings(
            p.parse_args(["eval", "--data", "d", "--out", "o", "--model", "m"]), EvalConfig, "e"
        ).gen,
        load_settings(
            p.parse_args(["train", "--data", "d", "--out", "o", "--model", "m"]), TrainConfig, "t"
        ).gen,
        ChatSession(None, None).gen,
        MevqaChatModel(backend=None).gen,
    }
    assert defaults == {GenConfig()} and GenConfig().max_new_tokens == 48


def test_mevqa_warnings_reach_the_user(synthme, tiny_qwen, tmp_path):
    """The CLI hides library warnings but not mevqa's own (vLLM ignores vision-tower LoRA)."""
    r = cli(
        "train",
        "--data",
        synthme / "train.jsonl",
        "--root",
        synthme,
        "--model",
        tiny_qwen,
        "--out",
        tmp_path / "v",
        "--max-steps",
        "1",
        "--frames",
        "2",
        "--lora-vision",
        "--report-to",
        "none",
    )
    assert r.returncode == 0 and "vLLM ignores those weights" in r.stderr, r.stderr


def test_shared_prefix_uses_generates_current_cache_argument(qwen, clips, capfd):
    """transformers 5.24 deprecates `past_key_values` (generate, outputs; gone in 6): we use `cache`."""
    from transformers.utils import generic
    from transformers.utils import logging as hf_logging

    from mevqa.backends.base import VQARequest
    from mevqa.inputs import question_message
    from mevqa.prompts import TEMPLATE_EXAMPLES, Message
    from mevqa.video import sample

    cfg = FrameConfig(frames=2)
    parts = question_message(sample(clips["mp4"], cfg), "q", cfg).parts[:-1]
    reqs = [
        VQARequest(str(i), (Message.user(*parts, q),), prefix_key="clip")
        for i, q in enumerate(TEMPLATE_EXAMPLES[:3])
    ]
    hf_logging.set_verbosity_warning()
    generic.logger.warning_once.cache_clear()  # it warns once per process
    capfd.readouterr()
    assert all(a.ok for a in qwen.generate(reqs, GenConfig(max_new_tokens=4)))
    assert "past_key_values" not in capfd.readouterr().err


OOM_SCRIPT = """
import resource, sys
from mevqa.backends.base import load_backend
from mevqa.backends.hf import TransformersBackend
from mevqa.config import EvalConfig, FrameConfig, GenConfig, ModelSpec
from mevqa.errors import MevqaError
from mevqa.evaluation.runner import run_eval
model, data, root, out = sys.argv[1:5]
loaded = load_backend(ModelSpec(model))
backend = TransformersBackend(loaded.model, loaded.processor, share_prefix=False)  # 56 questions x 16 images
run_eval(EvalConfig(data=data, out=out + "-warm", model=ModelSpec(model), root=root, limit=2), backend)
cfg = EvalConfig(data=data, out=out, model=ModelSpec(model), root=root, batch_size=64,
                 frames=FrameConfig(frames=16), gen=GenConfig(max_new_tokens=4))
vm = int(next(ln for ln in open("/proc/self/status") if ln.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (48 << 20), vm + (48 << 20)))  # everything warm: +48 MB more
try:
    run_eval(cfg, backend)
except MevqaError as e:
    print("error:", e)
    sys.exit(e.exit_code)
"""


def test_out_of_memory_stops_the_run_with_the_batch_size_to_try(tiny_qwen, synthme, tmp_path):
    """A real allocation failure (an address-space limit: the CPU's out of memory) is not error rows and
    exit 0: the run stops with one line saying which batch size to try."""
    args = [str(tiny_qwen), str(synthme / "train.jsonl"), str(synthme), str(tmp_path / "run")]
    r = subprocess.run([sys.executable, "-c", OOM_SCRIPT, *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "error: out of memory answering" in r.stdout, r.stdout + r.stderr[-2000:]
    assert "lower `batch_size` (try" in r.stdout  # a library error names the setting; the CLI adds flags


def test_help_comes_from_the_docstrings():
    r = cli("eval", "--help")
    assert r.returncode == 0 and "--flow-with-oao" in r.stdout and "with --input flow, show onset" in r.stdout
