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
from mevqa.models.adapters import attach_adapter
from mevqa.models.families import FAMILIES, FAMILY_TABLE, SHAPES, for_model_type
from mevqa.models.loading import load_model, load_processor
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
    unmerged = attach_adapter(load_model(ModelSpec(str(base), device="cpu")), adapter, str(base))
    asked = load_backend(ModelSpec(str(base), adapter=str(adapter), device="cpu")).model  # merged in memory
    b = load_backend(ModelSpec(str(tmp_path / "merged"), device="cpu")).model
    plain = load_backend(ModelSpec(str(base), device="cpu")).model
    with torch.no_grad():
        la, lb, lp = unmerged(**batch).logits, b(**batch).logits, plain(**batch).logits
        lasked = asked(**batch).logits
    torch.testing.assert_close(la, lb, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(la, lasked, atol=1e-4, rtol=1e-4)
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


# Qwen3.5's published template thinks unless told not to; the tiny one (tiny.py) answers directly unless
# told to think, so a test of the flag swaps in a template with the published default.
_TINY_GENERATION = (
    "{% if enable_thinking is defined and enable_thinking %}<think>\n{% else %}<think>\n\n</think>\n\n"
)
_PUBLISHED_GENERATION = (
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n"
)


def test_qwen3_5_prompts_do_not_open_a_think_block(backend_of, tiny_of, monkeypatch):
    """Every place mevqa renders a Qwen3.5 prompt passes `enable_thinking=False`: the transformers and vLLM
    backends, training's collator, and a served model's request body."""
    from mevqa.backends.base import VQARequest, chat_template_kwargs
    from mevqa.backends.openai_server import OpenAIBackend
    from mevqa.backends.vllm_offline import VLLMBackend
    from mevqa.config import GenConfig
    from mevqa.models.tiny import QWEN3_5_CHAT_TEMPLATE
    from mevqa.prompts import Message
    from mevqa.train.data import AnswerOnlyCollator

    assert _TINY_GENERATION in QWEN3_5_CHAT_TEMPLATE
    backend = backend_of("qwen3_5")
    published = QWEN3_5_CHAT_TEMPLATE.replace(_TINY_GENERATION, _PUBLISHED_GENERATION)
    monkeypatch.setattr(backend.processor, "chat_template", published)
    req = VQARequest("q", (Message.user("What is the coarse expression class?"),))
    chat = [{"role": "user", "content": [{"type": "text", "text": "What is the coarse expression class?"}]}]
    thinking = backend.processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert thinking.endswith("<|im_start|>assistant\n<think>\n")  # the published default
    text, _, _ = backend._render(req)
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    kwargs, model = {"enable_thinking": False}, str(tiny_of("qwen3_5"))
    assert chat_template_kwargs(model) == kwargs
    assert VLLMBackend(llm=None, processor=backend.processor, model_id=model).prompt(req)["prompt"] == text
    served = OpenAIBackend(["http://127.0.0.1:9/v1"], "m", template_kwargs=chat_template_kwargs(model))
    assert served._payload(req, GenConfig(), 1, None)["chat_template_kwargs"] == kwargs
    # training: the answer's labels start after the closed think block the prompt ends with
    collate = AnswerOnlyCollator(backend.processor, kwargs)
    enc = collate([(req.messages[0], "negative")])
    labelled = enc["input_ids"][0][enc["labels"][0] != -100]
    assert backend.processor.tokenizer.decode(labelled).startswith("negative")


def test_other_families_render_without_template_variables(backend_of, tiny_qwen):
    from mevqa.backends.base import VQARequest, chat_template_kwargs
    from mevqa.backends.openai_server import OpenAIBackend
    from mevqa.config import GenConfig
    from mevqa.models.families import chat_template_kwargs as of_type
    from mevqa.prompts import Message

    assert chat_template_kwargs(str(tiny_qwen)) == {} and of_type("llava") == {}
    assert backend_of("qwen2_5_vl").template_kwargs == {}
    assert chat_template_kwargs("no/such-model-here") == {}  # a served name with no local config
    payload = OpenAIBackend(["http://127.0.0.1:9/v1"], "m")._payload(
        VQARequest("q", (Message.user("hi"),)), GenConfig(), 1, None
    )
    assert "chat_template_kwargs" not in payload
