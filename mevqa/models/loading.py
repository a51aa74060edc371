"""Load a VLM checkpoint (local dir or Hub id), as `ModelSpec` says: device, dtype, 4-bit, remote code.

Shared by inference and training so both see the same model. Only safetensors weights are loaded: a
pickle file (`pytorch_model.bin`) can run code when it is unpickled, so it is refused with the command
that converts it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, ProcessorMixin

from mevqa import process
from mevqa.config import ModelSpec
from mevqa.errors import InputError, MissingDependency, ModelError
from mevqa.models import families
from mevqa.models.shapes import check_safetensors, header_bytes

log = logging.getLogger(__name__)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


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


def hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def config_hash(model: str | Path, trust_remote_code: bool = False) -> str:
    """A short hash of the model's architecture config: same value = same shapes and vocabulary."""
    try:
        cfg = AutoConfig.from_pretrained(str(model), trust_remote_code=trust_remote_code).to_dict()
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(
            f"model.model {model} — cannot read its config ({str(e).splitlines()[0][:160]})"
        ) from None
    for k in ("_name_or_path", "transformers_version", "dtype", "torch_dtype", "architectures"):
        cfg.pop(k, None)
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def weights_fingerprint(folder: str | Path) -> str | None:
    """What changes when the weights change, read without hashing gigabytes: every weights file's
    name, size, modification time (ns) and safetensors header (tensor names, shapes, offsets).

    Rebuilding, retraining or merging into the same folder rewrites the files, so the mtime changes
    even when shapes and sizes do not; a copy with `cp -p` keeps the mtime and is the same weights.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", *PICKLE_SUFFIXES)):
        st = f.stat()
        h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        if f.suffix == ".safetensors":
            h.update(header_bytes(f))
    return h.hexdigest()[:16]


# Files besides the weights that change an answer: how frames become pixels, how a question becomes tokens
# (the chat template, the vocabulary) and how generation stops. All small (tokenizer.json is a few MB).
PROCESSING_FILES = (
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer_config.json",
    "tokenizer.json",
    "special_tokens_map.json",
    "generation_config.json",
)


def processing_fingerprint(folder: str | Path) -> str | None:
    """A hash of the bytes of the model's processor, tokenizer, chat-template and generation files (absent
    ones count as absent): an edited chat template must not reuse the answers of the old one."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    h = hashlib.sha256()
    for name in PROCESSING_FILES:
        if (folder / name).is_file():
            h.update(f"{name}\0{hash_file(folder / name)}\0".encode())
    return h.hexdigest()[:16]


def refuse_pickle(folder: Path, what: str) -> None:
    """A folder whose weights are only pickle files is refused (loading a pickle can run its code)."""
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ModelError(
            f"{what} {folder} — holds only pickle weights ({pickles[0]}); mevqa loads safetensors only. "
            'Convert once where you trust the file: python -c "import torch, safetensors.torch as s; '
            f"s.save_file(torch.load('{pickles[0]}'), '{Path(pickles[0]).stem}.safetensors')\""
        )


def check_model_path(model: str) -> None:
    """A local path that is not there is said so, before the Hub client calls it a malformed repo id."""
    if not Path(model).exists() and (model.startswith((".", "/", "~")) or model.count("/") != 1):
        raise InputError(f"model.model {model} — no such directory (and not a Hub id of the form org/name)")


def load_processor(model: str, trust_remote_code: bool = False) -> ProcessorMixin:
    check_model_path(model)
    try:
        proc = AutoProcessor.from_pretrained(model, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(
            f"model.model {model} — cannot load its processor ({str(e).splitlines()[0][:160]})"
        ) from None
    if not isinstance(proc, ProcessorMixin):
        raise ModelError(
            f"model.model {model} — has a tokenizer but no image processor "
            "(processor_config.json / preprocessor_config.json); is it a vision-language model?"
        )
    proc.tokenizer.padding_side = "left"  # batched generation appends on the right
    return proc


def quantization(spec: ModelSpec, device: str) -> Any:
    """bitsandbytes 4-bit settings for `spec.load_in_4bit` (compute in bf16 on a GPU, fp32 on CPU)."""
    if not spec.load_in_4bit:
        return None
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise MissingDependency("4-bit loading needs bitsandbytes: pip install 'mevqa[qlora]'") from None
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=spec.quant_type,
        bnb_4bit_use_double_quant=spec.double_quant,
        bnb_4bit_compute_dtype=pick_dtype(device, spec.dtype),
        bnb_4bit_quant_storage=torch.uint8,
        # the vision tower, its projector and the output head stay in full precision (families.py says
        # why and which modules those are, per architecture)
        llm_int8_skip_modules=families.full_precision_for(model_type(spec)),
    )


def model_type(spec: ModelSpec) -> str:
    """The checkpoint's config `model_type` ("" when the config cannot be read: loading says why)."""
    try:
        return AutoConfig.from_pretrained(spec.model, trust_remote_code=spec.trust_remote_code).model_type
    except (OSError, ValueError, KeyError):
        return ""


def load_model(spec: ModelSpec) -> torch.nn.Module:
    """The model in eval mode on `spec.device`; a missing or unusable checkpoint is a `ModelError`."""
    model = spec.model
    check_model_path(model)
    refuse_pickle(Path(model), "model.model")
    if Path(model).is_dir():
        check_safetensors(model)
    device = pick_device(spec.device)
    quant = quantization(spec, device)
    try:
        m = AutoModelForImageTextToText.from_pretrained(
            model,
            dtype=pick_dtype(device, spec.dtype),
            trust_remote_code=spec.trust_remote_code,
            quantization_config=quant,
            use_safetensors=True,
            device_map=device if quant is not None else None,
        )
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(
            f"model.model {model} — cannot load as an image-text-to-text model "
            f"({str(e).splitlines()[0][:160]})"
        ) from None
    if quant is None:
        m.to(device)
    process.started()
    return m.eval()
