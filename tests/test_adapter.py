"""A LoRA adapter saved to disk and loaded back really changes the model (not silently ignored)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from helpers import cli, make_adapter

from mevqa.backends.base import VQARequest, load_backend
from mevqa.config import FrameConfig, GenConfig, ModelSpec
from mevqa.errors import ModelError
from mevqa.inputs import question_message
from mevqa.models.loading import config_hash
from mevqa.video import sample


@pytest.fixture(scope="module")
def adapter(tiny_qwen, tmp_path_factory):
    return make_adapter(tiny_qwen, tmp_path_factory.mktemp("adapters") / "rand-lora")


def _logits_and_text(backend, clip):
    cfg = FrameConfig(frames=4)
    req = VQARequest("a", (question_message(sample(clip, cfg), "What is the coarse expression class?", cfg),))
    with torch.no_grad():
        logits = backend.model(**backend.encode([req])).logits[0, -1]
    return logits, backend.generate([req], GenConfig(max_new_tokens=8))[0].text


def test_adapter_changes_output(tiny_qwen, qwen, adapter, clips):
    base = qwen
    tuned = load_backend(ModelSpec(str(tiny_qwen), adapter=str(adapter)))
    lb, tb = _logits_and_text(base, clips["mp4"])
    lt, tt = _logits_and_text(tuned, clips["mp4"])
    assert not torch.allclose(lb, lt, atol=1e-3)
    assert tb != tt
    # loading the same adapter again is deterministic
    tuned2 = load_backend(ModelSpec(str(tiny_qwen), adapter=str(adapter)))
    torch.testing.assert_close(_logits_and_text(tuned2, clips["mp4"])[0], lt)


def test_adapter_for_another_architecture_is_refused(tiny_qwen, tiny_idefics3, tmp_path):
    other = make_adapter(tiny_idefics3, tmp_path / "idefics-lora")
    with pytest.raises(ModelError, match="idefics-lora"):
        load_backend(ModelSpec(str(tiny_qwen), adapter=str(other)))


def test_recorded_base_hash_mismatch_is_refused(tiny_qwen, tiny_idefics3, adapter, tmp_path):
    moved = tmp_path / "lora"
    shutil.copytree(adapter, moved)
    (moved / "mevqa.yaml").write_text(yaml.safe_dump({"base_config_hash": config_hash(tiny_idefics3)}))
    with pytest.raises(ModelError, match="config hash"):
        load_backend(ModelSpec(str(tiny_qwen), adapter=str(moved)))
    (moved / "mevqa.yaml").write_text(yaml.safe_dump({"base_config_hash": config_hash(tiny_qwen)}))
    assert load_backend(ModelSpec(str(tiny_qwen), adapter=str(moved))).adapter == str(moved)


def test_cli_ask_with_adapter_json(tiny_qwen, adapter, clips):
    q = "What is the coarse expression class?"
    args = ["ask", clips["mp4"], q, "--model", tiny_qwen, "--json", "--frames", "4"]
    base, tuned = cli(*args), cli(*args, "--adapter", adapter)
    assert base.returncode == 0 and tuned.returncode == 0, base.stderr + tuned.stderr
    b, t = json.loads(base.stdout), json.loads(tuned.stdout)
    assert set(b) == {"answer", "model", "adapter", "frames", "seconds", "process_seconds", "threads"}
    assert b["frames"] == [0, 16, 31, 47] and t["adapter"] == str(adapter)
    assert b["answer"] != t["answer"]


def test_pickle_weights_are_refused(tiny_qwen, adapter, clips, tmp_path):
    """Only safetensors are loaded: a pickle can run code when unpickled (a .bin adapter on another base
    used to answer with exit 0, its weights never checked)."""
    model = tmp_path / "bin-model"
    shutil.copytree(tiny_qwen, model)
    from safetensors.torch import load_file

    torch.save(load_file(str(model / "model.safetensors")), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    r = cli("ask", clips["mp4"], "q", "--model", model)
    assert r.returncode == 2 and "pickle" in r.stderr and "pytorch_model.bin" in r.stderr, r.stderr
    lora = tmp_path / "bin-lora"
    shutil.copytree(adapter, lora)
    torch.save(load_file(str(lora / "adapter_model.safetensors")), lora / "adapter_model.bin")
    (lora / "adapter_model.safetensors").unlink()
    with pytest.raises(ModelError, match="only pickle weights: adapter_model.bin"):
        load_backend(ModelSpec(str(tiny_qwen), adapter=str(lora)))
