"""A LoRA adapter saved to disk and loaded back really changes the model (not silently ignored)."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import run_cli
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForImageTextToText

from mevqa.backends.base import VQARequest, load_backend
from mevqa.config import FrameConfig, GenConfig
from mevqa.errors import ModelError
from mevqa.inputs import question_message
from mevqa.models.loading import config_hash
from mevqa.video import sample

LM_TARGETS = r".*(language_model|text_model).*\.(q_proj|k_proj|v_proj|o_proj)"


def make_adapter(base, out, seed=0):
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_pretrained(base)
    # init_lora_weights=False: B is random, so the adapter is a real, non-zero change
    peft_model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=32, target_modules=LM_TARGETS, init_lora_weights=False)
    )
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapter(tiny_qwen, tmp_path_factory):
    return make_adapter(tiny_qwen, tmp_path_factory.mktemp("adapters") / "rand-lora")


def _logits_and_text(backend, clip):
    cfg = FrameConfig(frames=4)
    req = VQARequest("a", (question_message(sample(clip, cfg), "What is the coarse expression class?", cfg),))
    with torch.no_grad():
        logits = backend.model(**backend.encode([req])).logits[0, -1]
    return logits, backend.generate([req], GenConfig(max_new_tokens=8))[0].text


def test_adapter_changes_output(tiny_qwen, adapter, clips):
    base = load_backend("transformers", model=str(tiny_qwen))
    tuned = load_backend("transformers", model=str(tiny_qwen), adapter=str(adapter))
    lb, tb = _logits_and_text(base, clips["mp4"])
    lt, tt = _logits_and_text(tuned, clips["mp4"])
    assert not torch.allclose(lb, lt, atol=1e-3)
    assert tb != tt
    # loading the same adapter again is deterministic
    tuned2 = load_backend("transformers", model=str(tiny_qwen), adapter=str(adapter))
    torch.testing.assert_close(_logits_and_text(tuned2, clips["mp4"])[0], lt)


def test_adapter_for_another_architecture_is_refused(tiny_qwen, tiny_idefics3, tmp_path):
    other = make_adapter(tiny_idefics3, tmp_path / "idefics-lora")
    with pytest.raises(ModelError, match="idefics-lora"):
        load_backend("transformers", model=str(tiny_qwen), adapter=str(other))


def test_recorded_base_hash_mismatch_is_refused(tiny_qwen, tiny_idefics3, adapter, tmp_path):
    import shutil

    moved = tmp_path / "lora"
    shutil.copytree(adapter, moved)
    (moved / "mevqa.yaml").write_text(yaml.safe_dump({"base_config_hash": config_hash(tiny_idefics3)}))
    with pytest.raises(ModelError, match="config hash"):
        load_backend("transformers", model=str(tiny_qwen), adapter=str(moved))
    (moved / "mevqa.yaml").write_text(yaml.safe_dump({"base_config_hash": config_hash(tiny_qwen)}))
    assert load_backend("transformers", model=str(tiny_qwen), adapter=str(moved)).adapter == str(moved)


def test_cli_ask_with_adapter_json(tiny_qwen, adapter, clips):
    import json

    base = run_cli(
        "ask",
        str(clips["mp4"]),
        "What is the coarse expression class?",
        "--model",
        str(tiny_qwen),
        "--json",
        "--frames",
        "4",
    )
    tuned = run_cli(
        "ask",
        str(clips["mp4"]),
        "What is the coarse expression class?",
        "--model",
        str(tiny_qwen),
        "--adapter",
        str(adapter),
        "--json",
        "--frames",
        "4",
    )
    assert base.returncode == 0 and tuned.returncode == 0, base.stderr + tuned.stderr
    b, t = json.loads(base.stdout), json.loads(tuned.stdout)
    assert set(b) == {"answer", "model", "adapter", "frames", "seconds"}
    assert b["frames"] == [0, 16, 31, 47] and t["adapter"] == str(adapter)
    assert b["answer"] != t["answer"]
