"""The model to train: the base (full precision, or 4-bit for QLoRA) with LoRA on the chosen modules."""

from __future__ import annotations

import dataclasses
import logging

import torch

from mevqa.config import ModelSpec, TrainConfig
from mevqa.errors import ModelError
from mevqa.models import families
from mevqa.models.loading import load_model

log = logging.getLogger(__name__)


def lora_targets(cfg: TrainConfig, model_type: str) -> str:
    """The regex of the modules to adapt: --lora-target-modules, else the family's language model, plus
    its vision tower / projector when asked for."""
    family = families.for_model_type(model_type)
    if family is None and (not cfg.lora.target_modules or cfg.lora.vision or cfg.lora.projector):
        raise ModelError(
            f"model.model {cfg.model.model} — architecture {model_type!r} is not in mevqa's family table "
            f"({', '.join(families.FAMILIES)}); pass --lora-target-modules REGEX (and no --lora-vision / "
            "--lora-projector)"
        )
    parts = [cfg.lora.target_modules or family.lm_targets]
    if cfg.lora.vision:
        parts.append(family.vision_targets)
    if cfg.lora.projector:
        parts.append(family.projector_targets)
    if len(parts) > 1:
        log.warning(
            "LoRA on the vision tower/projector: vLLM ignores those weights unless the server enables "
            "LoRA for the tower (see `vllm serve --help`, 'tower' LoRA); language-model LoRA is what "
            "every vLLM build serves."
        )
    return "|".join(f"(?:{p})" for p in parts)


def build_model(cfg: TrainConfig, device: str) -> torch.nn.Module:
    """The base model with LoRA adapters attached (on a 4-bit base for qlora), or fully trainable."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    spec = ModelSpec.of(dataclasses.replace(cfg.model, device=device), load_in_4bit=cfg.method == "qlora")
    model = load_model(spec)
    if cfg.method == "qlora":
        # casts norms to fp32 and enables input grads; checkpointing is ours to switch on below
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if cfg.grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if cfg.method == "full":
        return model.train()
    peft_cfg = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=lora_targets(cfg, model.config.model_type),
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, peft_cfg)
    except ValueError as e:
        raise ModelError(
            f"lora.target_modules {cfg.lora.target_modules!r} — {str(e).splitlines()[0][:200]}"
        ) from None
    return model.train()
