"""Tiny checkpoints are ordinary HF directories: offline loadable, small, byte-for-byte reproducible."""

from __future__ import annotations

import filecmp

import pytest
from transformers import AutoModelForImageTextToText, AutoProcessor

from mevqa.errors import InputError
from mevqa.models.families import FAMILIES, get
from mevqa.models.tiny import TEXT_SIZES, build_tiny


@pytest.mark.slow  # builds three tiny checkpoints
@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_bytes(tmp_path, family):
    a = build_tiny(family, tmp_path / "a", seed=3)
    b = build_tiny(family, tmp_path / "b", seed=3)
    c = build_tiny(family, tmp_path / "c", seed=4)
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= set(names)
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert mismatch == [] and errors == []
    assert not filecmp.cmp(a / "model.safetensors", c / "model.safetensors", shallow=False)
    assert sum(p.stat().st_size for p in a.iterdir()) < 5 * 2**20


PROCESSORS = {
    "qwen2_5_vl": "Qwen2_5_VLProcessor",
    "idefics3": "Idefics3Processor",
    "qwen3_vl": "Qwen3VLProcessor",
    "qwen3_5": "Qwen3VLProcessor",  # Qwen3.5 ships Qwen3-VL's processor
}


def test_loads_offline_with_auto_classes(tiny_of):
    assert set(PROCESSORS) == set(FAMILIES)
    for family, proc_cls in PROCESSORS.items():
        d = tiny_of(family)
        proc = AutoProcessor.from_pretrained(d)
        model = AutoModelForImageTextToText.from_pretrained(d)
        assert type(proc).__name__ == proc_cls
        assert model.config.text_config.vocab_size == len(proc.tokenizer)
        chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
        text = proc.apply_chat_template(chat, add_generation_prompt=True)
        assert "hi" in text


def test_tokenizer_knows_special_tokens(tiny_qwen):
    tok = AutoProcessor.from_pretrained(tiny_qwen).tokenizer
    for t in ("<|im_start|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>"):
        ids = tok.encode(t, add_special_tokens=False)
        assert len(ids) == 1, t
    assert (
        tok.decode(tok.encode("What is the coarse expression class?"))
        == "What is the coarse expression class?"
    )


def test_unknown_family(tmp_path):
    with pytest.raises(InputError, match="unknown family"):
        build_tiny("llava9", tmp_path / "x")


def test_every_family_has_a_head_size_vllm_takes_and_the_demo_layout():
    """The tiny size has head size 32 (vLLM's CPU kernels refuse 16); the demo keeps its 4 heads of 16."""
    assert TEXT_SIZES["demo"]["hidden_size"] // TEXT_SIZES["demo"]["num_attention_heads"] == 16
    for family in FAMILIES:
        for size in ("tiny", "demo"):
            text = get(family).tiny_builder()(size)[0].text_config
            head = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
            assert head == (32 if size == "tiny" else 16), (family, size, head)
