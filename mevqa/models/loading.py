"""Load a VLM checkpoint (local dir or Hub id) and, optionally, a PEFT LoRA adapter on top of it.

Shared by inference and training so both see the same model, dtype and adapter checks.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
import yaml
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, ProcessorMixin

from mevqa.errors import InputError, ModelError

log = logging.getLogger(__name__)


def pick_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pick_dtype(device: str, dtype: str = "auto") -> torch.dtype:
    """bf16 on a GPU that supports it, fp32 on CPU (bf16 matmuls are slow on most CPUs)."""
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def config_hash(model: str | Path, trust_remote_code: bool = False) -> str:
    """A short hash of the model's architecture config: same value = same shapes and vocabulary."""
    cfg = AutoConfig.from_pretrained(str(model), trust_remote_code=trust_remote_code).to_dict()
    for k in ("_name_or_path", "transformers_version", "dtype", "torch_dtype", "architectures"):
        cfg.pop(k, None)
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def adapter_hash(adapter: str | Path) -> str:
    """Hash of the adapter weights file (what a reproducibility record should pin)."""
    path = Path(adapter) / "adapter_model.safetensors"
    return _hash_file(path) if path.exists() else "unknown"


def load_processor(model: str, trust_remote_code: bool = False) -> ProcessorMixin:
    try:
        proc = AutoProcessor.from_pretrained(model, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(
            f"--model {model} — cannot load its processor ({str(e).splitlines()[0][:160]})"
        ) from None
    if not isinstance(proc, ProcessorMixin):
        raise ModelError(
            f"--model {model} — has a tokenizer but no image processor "
            "(processor_config.json / preprocessor_config.json); is it a vision-language model?"
        )
    proc.tokenizer.padding_side = "left"  # batched generation appends on the right
    return proc


def load_model(
    model: str,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    quantization_config: object | None = None,
) -> torch.nn.Module:
    """The model in eval mode on `device`; a missing or unusable checkpoint is a `ModelError`."""
    if not Path(model).exists() and (model.startswith((".", "/", "~")) or model.count("/") != 1):
        raise InputError(f"--model {model} — no such directory (and not a Hub id of the form org/name)")
    device = pick_device(device)
    try:
        m = AutoModelForImageTextToText.from_pretrained(
            model,
            dtype=pick_dtype(device, dtype),
            trust_remote_code=trust_remote_code,
            quantization_config=quantization_config,
        )
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(
            f"--model {model} — cannot load as an image-text-to-text model ({str(e).splitlines()[0][:160]})"
        ) from None
    if quantization_config is None:
        m.to(device)
    return m.eval()


def check_adapter(adapter: str | Path, model: str) -> dict:
    """Validate an adapter folder before loading it; returns its adapter_config."""
    path = Path(adapter)
    cfg_file = path / "adapter_config.json"
    if not cfg_file.is_file():
        raise InputError(f"--adapter {adapter} — no adapter_config.json (is this a PEFT adapter folder?)")
    recipe = path / "mevqa.yaml"
    if recipe.is_file():
        want = (yaml.safe_load(recipe.read_text()) or {}).get("base_config_hash")
        have = config_hash(model)
        if want and want != have:
            raise ModelError(
                f"--adapter {adapter} — trained on a base with config hash {want}, but --model "
                f"{model} has {have}; pass the base model it was trained on"
            )
    return json.loads(cfg_file.read_text())


def attach_adapter(model: torch.nn.Module, adapter: str | Path, model_id: str) -> torch.nn.Module:
    """Wrap `model` with the LoRA adapter, refusing one whose weights do not all land in the model.

    peft loads by name and only warns about keys it could not place; a VLM adapter saved against a
    different module layout then silently does nothing. We check every saved tensor found a home.
    """
    from peft import PeftModel
    from safetensors import safe_open

    check_adapter(adapter, model_id)
    try:
        wrapped = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as e:
        raise ModelError(
            f"--adapter {adapter} — does not fit --model {model_id} ({str(e).strip().splitlines()[0][:200]})"
        ) from None
    weights = Path(adapter) / "adapter_model.safetensors"
    if weights.is_file():
        modules = {n for n, _ in wrapped.named_modules()}
        with safe_open(str(weights), "pt") as f:
            missing = [k for k in f.keys() if k.rsplit(".", 2)[0] not in modules]
        if missing:
            raise ModelError(
                f"--adapter {adapter} — {len(missing)} weights match no module of --model "
                f"{model_id} (first: {missing[0]}); the adapter was trained on another base"
            )
    return wrapped.eval()
