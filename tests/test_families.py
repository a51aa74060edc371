"""Every entry of the family table gets the same guarantees on its tiny checkpoint: LoRA changes only LoRA
weights and learns, QLoRA runs on a 4-bit base, a merged adapter answers as the unmerged one, and the
`bench gpu` shapes are the published sizes. (Shared-prefix and cross-clip batching: test_backend.py.)"""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch
from helpers import cli, make_adapter
from test_train import batch_of, cfg_for

from mevqa.backends.base import load_backend
from mevqa.config import ModelSpec
from mevqa.models.families import FAMILIES, FAMILY_TABLE, SHAPES, for_model_type
from mevqa.models.loading import load_processor
from mevqa.train.loop import train
from mevqa.train.model import build_model


def _one_step(model, batch) -> set[str]:
    """Names of the parameters one AdamW step on `batch` changed."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**batch).loss.backward()
    opt.step()
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_step_changes_only_lora_weights_of_the_language_model(synthme, tiny_of, tmp_path, family):
    base = tiny_of(family)
    cfg = cfg_for(synthme, base, tmp_path / "a")
    model = build_model(cfg, "cpu")
    changed = _one_step(model, batch_of(cfg, load_processor(str(base))))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed and changed <= trainable and all("lora_" in n for n in trainable)
    assert any("lora_B" in n for n in changed)
    vision = FAMILY_TABLE[family].vision_modules
    assert not any(v in n for n in trainable for v in vision)  # language model only, by default


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_on_the_vision_tower_and_projector_finds_their_modules(synthme, tiny_of, tmp_path, family):
    cfg = cfg_for(synthme, tiny_of(family), tmp_path / "a", lora={"vision": True, "projector": True})
    trainable = {n for n, p in build_model(cfg, "cpu").named_parameters() if p.requires_grad}
    for v in FAMILY_TABLE[family].vision_modules:
        assert any(v in n for n in trainable), (v, sorted(trainable)[:5])


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_learns(synthme, tiny_of, tmp_path, family):
    """12 steps on the coarse questions lower the loss (first 5 vs last 5 steps, measured: by 0.48 nats
    (idefics3, qwen3_5), 0.54 (qwen2_5_vl) and 0.64 (qwen3_vl))."""
    metrics = train(
        cfg_for(
            synthme,
            tiny_of(family),
            tmp_path / "lora",
            max_steps=12,
            batch_size=4,
            lr=1e-2,
            question_types=["coarse"],
        )
    )
    losses = [v for _, v in metrics["train_loss"]]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3, losses


@pytest.mark.parametrize("family", FAMILIES)
def test_qlora_runs_on_a_4bit_language_model(synthme, tiny_of, tmp_path, family):
    base = tiny_of(family)
    cfg = cfg_for(synthme, base, tmp_path / "q", method="qlora")
    model = build_model(cfg, "cpu")
    quantized = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized and not any(v in n for n in quantized for v in FAMILY_TABLE[family].vision_modules)
    changed = _one_step(model, batch_of(cfg, load_processor(str(base))))
    assert changed and all("lora_" in n for n in changed) and any("lora_B" in n for n in changed)


@pytest.mark.parametrize("family", FAMILIES)
def test_merged_adapter_answers_as_the_unmerged_one(synthme, tiny_of, tmp_path, family):
    base = tiny_of(family)
    adapter = make_adapter(base, tmp_path / "lora", recipe={"base_model": str(base)})
    r = cli("adapters", "merge", adapter, "--out", tmp_path / "merged")
    assert r.returncode == 0, r.stderr
    batch = batch_of(cfg_for(synthme, base, tmp_path), load_processor(str(base)))
    a = load_backend(ModelSpec(str(base), str(adapter), device="cpu")).model
    b = load_backend(ModelSpec(str(tmp_path / "merged"), device="cpu")).model
    plain = load_backend(ModelSpec(str(base), device="cpu")).model
    with torch.no_grad():
        la, lb, lp = a(**batch).logits, b(**batch).logits, plain(**batch).logits
    torch.testing.assert_close(la, lb, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(la, lp, atol=1e-3)  # the adapter is a real change


def test_every_family_names_its_own_model_type(tiny_of):
    from transformers import AutoConfig

    for name in FAMILIES:
        assert for_model_type(AutoConfig.from_pretrained(tiny_of(name)).model_type) is FAMILY_TABLE[name]


# published sizes (billions of parameters, vision tower included), the names' promise
PUBLISHED = {
    "qwen2_5_vl_3b": 3.75,
    "qwen2_5_vl_7b": 8.29,
    "qwen3_vl_4b": 4.44,
    "qwen3_vl_8b": 8.77,
    "qwen3_5_4b": 4.54,
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_bench_gpu_shapes_have_the_published_size(tmp_path, shape):
    """Each `bench gpu --shape` config, instantiated without memory (meta device), has the parameter
    count its model card states (within 3%)."""
    from transformers import AutoModelForImageTextToText

    from mevqa.bench_gpu import shape_config

    config = shape_config(shape, tmp_path)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    n = sum(p.numel() for p in model.parameters()) / 1e9
    assert abs(n - PUBLISHED[shape]) / PUBLISHED[shape] < 0.03, n


def test_an_architecture_outside_the_table_needs_its_lora_targets_named(synthme, tiny_qwen, tmp_path):
    from mevqa.errors import ModelError
    from mevqa.models.families import full_precision_for
    from mevqa.train.model import lora_targets

    cfg = cfg_for(synthme, tiny_qwen, tmp_path / "a")
    with pytest.raises(ModelError, match="not in mevqa's family table"):
        lora_targets(cfg, "llava")
    named = cfg_for(synthme, tiny_qwen, tmp_path / "b", lora={"target_modules": r".*q_proj"})
    assert lora_targets(named, "llava") == r"(?:.*q_proj)"
    assert "model.vision_tower" in full_precision_for("llava")  # 4-bit keeps any known tower name
    assert lora_targets(cfg, "qwen3_vl") == f"(?:{FAMILY_TABLE['qwen3_vl'].lm_targets})"
