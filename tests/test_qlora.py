"""QLoRA for real on this CPU: bitsandbytes 4-bit base, LoRA on top, trained, saved as an ordinary PEFT
adapter, answering on the unquantized base as on the 4-bit one, merged into the full-precision base."""

from __future__ import annotations

import json

import bitsandbytes as bnb
import pytest
import torch
from helpers import cli, eval_cli
from test_train import batch_of, cfg_for

from mevqa.backends.base import load_backend
from mevqa.config import EvalConfig, FrameConfig, GenConfig, ModelSpec, TrainConfig
from mevqa.data.megc import read_jsonl
from mevqa.evaluation.runner import answer_rows
from mevqa.models.loading import load_processor
from mevqa.train.loop import train
from mevqa.train.model import build_model


def qlora_cfg(synthme, tiny_qwen, out, **kw) -> TrainConfig:
    """test_train's small recipe, as QLoRA on the coarse questions."""
    base = {"method": "qlora", "batch_size": 4, "lr": 5e-3, "max_steps": 30, "question_types": ["coarse"]}
    return cfg_for(synthme, tiny_qwen, out, **(base | kw))


@pytest.fixture(scope="module")
def qlora(synthme, tiny_qwen, tmp_path_factory):
    out = tmp_path_factory.mktemp("qlora") / "q-lora"
    return out, train(qlora_cfg(synthme, tiny_qwen, out))


def test_one_qlora_step_changes_only_lora_weights(synthme, tiny_qwen, tmp_path):
    cfg = qlora_cfg(synthme, tiny_qwen, tmp_path / "q")
    model = build_model(cfg, "cpu")
    quantized = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized and all(
        "language_model" in n for n in quantized
    )  # the vision tower stays full precision
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**batch_of(cfg, load_processor(str(tiny_qwen)))).loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed) and any("lora_B" in n for n in changed)


def test_qlora_loss_falls_and_the_adapter_is_ordinary_peft(qlora, tiny_qwen):
    out, metrics = qlora
    losses = [v for _, v in metrics["train_loss"]]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3, losses  # measured: 5.97 -> 5.41
    peft = json.loads((out / "adapter_config.json").read_text())
    assert peft["peft_type"] == "LORA" and (out / "adapter_model.safetensors").is_file()
    assert not list(out.glob("*.bin"))


def test_qlora_adapter_answers_alike_on_the_unquantized_and_the_4bit_base(qlora, tiny_qwen, synthme):
    """The usual deployment puts the adapter on the unquantized base; `--load-in-4bit` keeps the 4-bit one.
    Measured on the 13 held-out questions: 13/13 greedy answers equal; the first answer token's logits
    differ by at most 0.021 (their spread: std 0.17, top-1 margin 0.84), so nf4's rounding moves no choice."""
    out, _ = qlora
    cfg = EvalConfig(
        data="-",
        out="-",
        model=ModelSpec(str(tiny_qwen)),
        root=str(synthme),
        frames=FrameConfig(frames=2),
        gen=GenConfig(max_new_tokens=8),
    )
    rows = read_jsonl(synthme / "test.jsonl")
    full = load_backend(ModelSpec(str(tiny_qwen), adapter=str(out)))
    four = load_backend(ModelSpec(str(tiny_qwen), adapter=str(out), load_in_4bit=True))
    from peft import PeftModel

    # merged into the fp32 base at load; kept apart on the 4-bit one (merging would round it into nf4)
    assert not isinstance(full.model, PeftModel) and isinstance(four.model, PeftModel)
    a = [x.text for _, x in answer_rows(cfg, full, rows)]
    b = [x.text for _, x in answer_rows(cfg, four, rows)]
    agree = sum(x == y for x, y in zip(a, b))
    assert all(a) and agree >= 0.8 * len(rows), (agree, list(zip(a, b)))
    enc = full.encode([_request(rows[0], synthme)])
    with torch.no_grad():
        la, lb = full.model(**enc).logits[0, -1], four.model(**enc).logits[0, -1]
    assert (la - lb).abs().max() < 0.1 and la.argmax() == lb.argmax()
    r = eval_cli(
        synthme / "test.jsonl",
        synthme,
        tiny_qwen,
        out.parent / "e4",
        "--adapter",
        out,
        "--load-in-4bit",
        "--frames",
        "2",
        "--max-new-tokens",
        "8",
    )
    assert r.returncode == 0 and "0 errors" in r.stdout, r.stderr
    settings = json.loads((out.parent / "e4" / "metrics.json").read_text())["settings"]
    assert settings["load_in_4bit"] == {"quant_type": "nf4", "double_quant": True}  # part of the fingerprint


def _request(row, synthme):
    from mevqa.backends.base import VQARequest
    from mevqa.inputs import ClipParts
    from mevqa.prompts import Message

    parts = ClipParts(synthme, FrameConfig(frames=2))(row)
    return VQARequest("x", (Message.user(*parts, row["question"]),))


def test_qlora_adapter_merges_into_the_full_precision_base(qlora, tmp_path):
    out, _ = qlora
    r = cli("adapters", "merge", out, "--out", tmp_path / "merged")
    assert r.returncode == 0 and "QLoRA adapter merged into the full-precision base" in r.stdout, r.stderr
    assert "quantization_config" not in json.loads((tmp_path / "merged" / "config.json").read_text())
