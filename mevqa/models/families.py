"""What mevqa knows about each VLM architecture, in one table: one `Family` entry per architecture.

Everything that differs between architectures lives here and nowhere else: the module names LoRA adapts
(language model, vision tower, projector), the modules a 4-bit load keeps in full precision, how the
shared-prefix path handles the model's RoPE and cache, the tiny-checkpoint builder and the published
shapes `bench gpu` builds. Adding an architecture is one entry plus its tiny builder in `tiny.py`; the
family tests are parametrized over `FAMILIES`, so the new entry gets every invariant test at once.

Plain data, no torch or transformers import: the table is read by the CLI's choices and help too.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mevqa.errors import InputError

# The language-model projections (attention and MLP) under model.language_model.* (Qwen) and
# model.text_model.* (Idefics3): what vLLM serves LoRA on for every family here. Qwen3.5's linear-attention
# projections (in_proj_qkv, out_proj, ...) are left out on purpose: vLLM packs them differently.
_LM = r".*(language_model|text_model).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
_QWEN_VISION = r".*visual\.blocks.*\.(qkv|proj|gate_proj|up_proj|down_proj|linear_fc1|linear_fc2)"
_QWEN3_PROJECTOR = r".*visual\.(merger|deepstack_merger_list\.\d+)\.linear_fc[12]"


@dataclass(frozen=True)
class Family:
    """One architecture.

    Attributes:
        name: the `--family` name (and the `model_type` of its config).
        label: the name people use for it (the README's).
        model_types: every config `model_type` this entry covers.
        lm_targets: regex of the language-model modules LoRA adapts by default.
        vision_targets: regex of the vision-tower modules `--lora-vision` adds.
        projector_targets: regex of the vision-language projector modules `--lora-projector` adds.
        vision_modules: module-name prefixes of the vision tower and its projector (parameter counts,
            4-bit skip list).
        rope_deltas: the submodule (of the ...ForConditionalGeneration model) holding multimodal RoPE
            offsets (`rope_deltas`), which the shared-prefix path sets per row; None for plain 1-D RoPE.
        shared_prefix: whether a clip's prefilled prefix cache can be stacked with others' behind masked
            padding. False for a model with recurrent (linear-attention) layers: their cache is a state,
            not keys and values, and the state would run through the masked padding; such a family
            answers every question with the plain batched path.
        video: whether its processor takes video input (else frames only).
        tiny: "module:function" building a tiny checkpoint's (config, processor, eos id) for a size.
        shapes: `bench gpu --shape` name -> published config values: "text" and "vision" sub-config
            overrides, "top" for the top-level config.
        chat_template_kwargs: extra variables for its chat template, passed wherever mevqa renders a
            prompt (transformers, vLLM, training; a served model's request when its family is known).
            Qwen3.5's published template opens a <think> block unless `enable_thinking=False`; ME-VQA
            scores short answers.
    """

    name: str
    label: str
    model_types: tuple[str, ...]
    lm_targets: str
    vision_targets: str
    projector_targets: str
    vision_modules: tuple[str, ...]
    rope_deltas: str | None
    shared_prefix: bool
    video: bool
    tiny: str
    shapes: dict[str, dict[str, Any]] = field(default_factory=dict)
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def full_precision(self) -> list[str]:
        """Modules a 4-bit load keeps in full precision: the vision tower, its projector and the output
        head (the usual QLoRA recipe for VLMs: they are small, and bitsandbytes' CPU kernels need
        in_features >= 64)."""
        return [*self.vision_modules, "lm_head"]

    def tiny_builder(self) -> Callable[[str], tuple[Any, Any, int]]:
        """The tiny builder, imported when asked for (it needs torch and transformers)."""
        module, _, name = self.tiny.partition(":")
        return getattr(importlib.import_module(module), name)


def _mrope(theta: float, section: list[int], **extra: Any) -> dict[str, Any]:
    return {"rope_type": "default", "rope_theta": theta, "mrope_section": section, **extra}


# Published config values (Qwen/Qwen2.5-VL-{3B,7B}-Instruct config.json); the vision tower is shared.
_QWEN2_5_VISION = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    patch_size=14,
    spatial_merge_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
    tokens_per_second=2,
    temporal_patch_size=2,
)
_QWEN2_5_SHAPES = {
    "qwen2_5_vl_7b": dict(
        text=dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            vocab_size=152064,
            rope_parameters=_mrope(1e6, [16, 24, 24]),
        ),
        vision=_QWEN2_5_VISION,
    ),
    "qwen2_5_vl_3b": dict(
        text=dict(
            hidden_size=2048,
            intermediate_size=11008,
            num_hidden_layers=36,
            num_attention_heads=16,
            num_key_value_heads=2,
            vocab_size=151936,
            tie_word_embeddings=True,
            rope_parameters=_mrope(1e6, [16, 24, 24]),
        ),
        vision=_QWEN2_5_VISION,
        top=dict(tie_word_embeddings=True),
    ),
}
# Qwen/Qwen3-VL-{4B,8B}-Instruct config.json: head size 128, interleaved M-RoPE, DeepStack features from
# three vision blocks into the first language-model layers.
_QWEN3_VL_SHAPES = {
    "qwen3_vl_4b": dict(
        text=dict(
            hidden_size=2560,
            intermediate_size=9728,
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            vocab_size=151936,
            tie_word_embeddings=True,
            rope_parameters=_mrope(5e6, [24, 20, 20], mrope_interleaved=True),
        ),
        vision=dict(
            depth=24,
            hidden_size=1024,
            intermediate_size=4096,
            num_heads=16,
            patch_size=16,
            num_position_embeddings=2304,
            deepstack_visual_indexes=[5, 11, 17],
        ),
        top=dict(tie_word_embeddings=True),
    ),
    "qwen3_vl_8b": dict(
        text=dict(
            hidden_size=4096,
            intermediate_size=12288,
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            vocab_size=151936,
            rope_parameters=_mrope(5e6, [24, 20, 20], mrope_interleaved=True),
        ),
        vision=dict(
            depth=27,
            hidden_size=1152,
            intermediate_size=4304,
            num_heads=16,
            patch_size=16,
            num_position_embeddings=2304,
            deepstack_visual_indexes=[8, 16, 24],
        ),
    ),
}
# Qwen/Qwen3.5-4B config.json: 32 layers, every 4th full attention (head size 256, a quarter of it
# rotary), the others Gated DeltaNet linear attention; the vision tower is Qwen3-VL-4B's without DeepStack.
_QWEN3_5_SHAPES = {
    "qwen3_5_4b": dict(
        text=dict(
            hidden_size=2560,
            intermediate_size=9216,
            num_hidden_layers=32,
            num_attention_heads=16,
            num_key_value_heads=4,
            head_dim=256,
            linear_num_key_heads=16,
            linear_num_value_heads=32,
            linear_key_head_dim=128,
            linear_value_head_dim=128,
            linear_conv_kernel_dim=4,
            vocab_size=248320,
            tie_word_embeddings=True,
            rope_parameters=_mrope(1e7, [11, 11, 10], mrope_interleaved=True, partial_rotary_factor=0.25),
        ),
        vision=dict(
            depth=24,
            hidden_size=1024,
            intermediate_size=4096,
            num_heads=16,
            patch_size=16,
            num_position_embeddings=2304,
        ),
        top=dict(tie_word_embeddings=True),
    ),
}

FAMILY_TABLE: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            name="qwen2_5_vl",
            label="Qwen2.5-VL",
            model_types=("qwen2_5_vl",),
            lm_targets=_LM,
            vision_targets=_QWEN_VISION,
            projector_targets=r".*visual\.merger\.mlp\.[02]",
            vision_modules=("model.visual",),
            rope_deltas="model",
            shared_prefix=True,
            video=True,
            tiny="mevqa.models.tiny:qwen2_5_vl_parts",
            shapes=_QWEN2_5_SHAPES,
        ),
        Family(
            name="idefics3",
            label="Idefics3 / SmolVLM",
            model_types=("idefics3",),
            lm_targets=_LM,
            vision_targets=r".*vision_model\.encoder.*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)",
            projector_targets=r".*connector\.modality_projection\.proj",
            vision_modules=("model.vision_model", "model.connector"),
            rope_deltas=None,
            shared_prefix=True,
            video=False,
            tiny="mevqa.models.tiny:idefics3_parts",
        ),
        Family(
            name="qwen3_vl",
            label="Qwen3-VL",
            model_types=("qwen3_vl",),
            lm_targets=_LM,
            vision_targets=_QWEN_VISION,
            projector_targets=_QWEN3_PROJECTOR,
            vision_modules=("model.visual",),
            rope_deltas="model",
            shared_prefix=True,
            video=True,
            tiny="mevqa.models.tiny:qwen3_vl_parts",
            shapes=_QWEN3_VL_SHAPES,
        ),
        Family(
            name="qwen3_5",
            label="Qwen3.5",
            model_types=("qwen3_5",),
            lm_targets=_LM,
            vision_targets=_QWEN_VISION,
            projector_targets=_QWEN3_PROJECTOR,
            vision_modules=("model.visual",),
            rope_deltas="model",
            shared_prefix=False,
            video=True,
            tiny="mevqa.models.tiny:qwen3_5_parts",
            shapes=_QWEN3_5_SHAPES,
            chat_template_kwargs={"enable_thinking": False},
        ),
    )
}
FAMILIES = tuple(FAMILY_TABLE)
SHAPES: dict[str, tuple[Family, dict[str, Any]]] = {
    shape: (f, values) for f in FAMILY_TABLE.values() for shape, values in f.shapes.items()
}


def get(name: str) -> Family:
    """The entry called `name` (the `--family` value)."""
    if name not in FAMILY_TABLE:
        raise InputError(f"--family {name!r} — unknown family; choose one of {', '.join(FAMILIES)}")
    return FAMILY_TABLE[name]


def for_model_type(model_type: str) -> Family | None:
    """The entry covering a config's `model_type`, or None for an architecture not in the table."""
    return next((f for f in FAMILY_TABLE.values() if model_type in f.model_types), None)


def chat_template_kwargs(model_type: str) -> dict[str, Any]:
    """The chat-template variables of `model_type`'s family (a copy); none for an architecture not in
    the table."""
    family = for_model_type(model_type)
    return dict(family.chat_template_kwargs) if family is not None else {}


def full_precision_for(model_type: str) -> list[str]:
    """The 4-bit skip list of `model_type`; for an architecture not in the table, every entry's plus
    LLaVA's tower name (a name that does not exist in a model skips nothing)."""
    family = for_model_type(model_type)
    if family is not None:
        return family.full_precision
    return sorted({"model.vision_tower", *(m for f in FAMILY_TABLE.values() for m in f.full_precision)})
