"""Tiny checkpoints are ordinary HF directories: offline loadable, small, byte-for-byte reproducible."""

from __future__ import annotations

import filecmp

import pytest
from transformers import AutoModelForImageTextToText, AutoProcessor

from mevqa.errors import InputError
from mevqa.models.tiny import build_tiny


@pytest.mark.parametrize("family", ["qwen2_5_vl", "idefics3"])
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


def test_loads_offline_with_auto_classes(tiny_qwen, tiny_idefics3):
    for d, proc_cls in ((tiny_qwen, "Qwen2_5_VLProcessor"), (tiny_idefics3, "Idefics3Processor")):
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
