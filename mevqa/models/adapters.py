"""LoRA adapters, in one place: find them, read what they recorded, check their base, attach, merge, and
name them the way a server serves them.

An adapter folder is what peft and vLLM load (adapter_config.json + adapter_model.safetensors) plus
`mevqa.yaml`, the resolved training recipe: the base model (absolute path or Hub id) and its config hash,
the frame settings and prompt it was trained with, and its rank.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from transformers import AutoConfig

from mevqa.config import ModelSpec, safe_yaml
from mevqa.errors import InputError, ModelError
from mevqa.io import atomic_dir
from mevqa.models.loading import PICKLE_SUFFIXES, config_hash, hash_file, load_model, load_processor
from mevqa.models.shapes import safetensors_header

# The max_lora_rank values vLLM accepts (vllm/config/lora.py).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _read(path: Path, parse: Any) -> Any:
    try:
        return parse(path.read_text(encoding="utf-8"))
    except (ValueError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise InputError(f"{path} — unreadable ({str(e).splitlines()[0][:120]})") from None


def train_traces(folder: str | Path) -> list[str]:
    """What a `mevqa train` run leaves in its --out besides the adapter: its checkpoints, and the lock file
    it holds while it runs (left behind when it was killed)."""
    folder, found = Path(folder), []
    if (folder / "checkpoints").is_dir():
        found.append("checkpoints/")
    lock = folder / ".lock"
    if lock.is_file() and lock.read_text(encoding="utf-8", errors="replace").startswith("mevqa train"):
        found.append(".lock")
    return found


def recipe(adapter: str | Path) -> dict:
    """The adapter's mevqa.yaml (empty for adapters trained elsewhere).

    `mevqa train` writes mevqa.yaml after the adapter's weights: a folder of a mevqa run with weights but no
    mevqa.yaml was killed while saving them (half-written, and without its recorded settings or base)."""
    path = Path(adapter) / "mevqa.yaml"
    if not path.is_file() and (Path(adapter) / "adapter_config.json").is_file() and train_traces(adapter):
        raise ModelError(
            f"adapter {adapter} — incomplete adapter (its mevqa train run stopped before writing "
            "mevqa.yaml); rerun mevqa train --resume with the same --out"
        )
    data = _read(path, safe_yaml) if path.is_file() else {}  # an alias bomb is refused, not expanded
    if not isinstance(data, dict | None):
        raise InputError(f"{path} — expected a mapping, got {type(data).__name__}")
    return data or {}


def peft_config(adapter: str | Path) -> dict:
    path = Path(adapter) / "adapter_config.json"
    if not path.is_file():
        raise InputError(f"adapter {adapter} — no adapter_config.json (is this a PEFT adapter folder?)")
    data = _read(path, json.loads)
    if not isinstance(data, dict):
        raise InputError(f"{path} — expected a JSON object")
    return data


def recorded_settings(adapter: str | Path | None) -> dict[str, Any]:
    """The frame settings and prompt the adapter was trained with: eval's defaults for it.

    mevqa 0.1 recorded them flat (`input: oao`, `frames: 8`); today under `frames:`.
    """
    rec = recipe(adapter) if adapter and Path(adapter).is_dir() else {}
    frames = rec.get("frames")
    if not isinstance(frames, dict):
        frames = {k: rec[k] for k in ("input", "sampling") if k in rec} | (
            {"frames": frames} if frames is not None else {}
        )
    out: dict[str, Any] = {"frames": frames} if frames else {}
    if "prompt" in rec:
        out["prompt"] = rec["prompt"]
    return out


def adapter_rank(adapter: str | Path) -> int | None:
    """The largest LoRA rank in the adapter (rank_pattern can raise it per module)."""
    data = peft_config(adapter)
    return max([data.get("r") or 0, *(data.get("rank_pattern") or {}).values()]) or None


def vllm_lora_rank(rank: int) -> int:
    """The smallest rank vLLM allows that covers `rank`."""
    for r in VLLM_LORA_RANKS:
        if r >= rank:
            return r
    raise InputError(f"LoRA rank {rank} — larger than vLLM's maximum {VLLM_LORA_RANKS[-1]}")


def base_id(model: str) -> str:
    """How a base is recorded: a local folder as its absolute path, a Hub id as the id."""
    return str(Path(model).resolve()) if Path(model).exists() else model


def list_adapters(folder: str | Path = "adapters") -> list[dict]:
    """One row per adapter folder: name, base, rank, input mode, best held-out score."""
    rows = []
    for d in sorted(Path(folder).iterdir()) if Path(folder).is_dir() else []:
        if not (d / "adapter_config.json").is_file():
            continue
        rec = recipe(d)
        metrics = _read(d / "metrics.json", json.loads) if (d / "metrics.json").is_file() else {}
        frames = recorded_settings(d).get("frames", {})
        rows.append(
            {
                "name": d.name,
                "path": d,
                "base": rec.get("base_model") or peft_config(d).get("base_model_name_or_path"),
                "rank": adapter_rank(d),
                "method": rec.get("method", "lora"),
                "input": frames.get("input", "frames"),
                "frames": frames.get("frames"),
                "flow_with_oao": frames.get("flow_with_oao", False),
                "best_coarse_uf1": metrics.get("best_held_out_coarse_uf1")
                if isinstance(metrics, dict)
                else None,
            }
        )
    return rows


def adapter_name(spec: str) -> tuple[str, str]:
    """The one naming rule `serve` and the openai backend share: `NAME=PATH` is served as NAME; a path
    (anything with a slash) as its folder's name; a bare NAME is a folder under the adapters dir."""
    name, eq, path = spec.partition("=")
    if eq:
        return name, path
    if "/" in spec or "\\" in spec:
        return Path(spec.rstrip("/")).name, spec
    return spec, ""


def resolve_adapter(name: str, folder: str | Path = "adapters") -> Path:
    """A bare name is a folder under `folder` (and may not climb out of it); anything with a slash is a path.

    Either way the result must be a PEFT adapter folder.
    """
    if "/" in name or "\\" in name:
        path = Path(name)
    else:
        root = Path(folder).resolve()
        path = (root / name).resolve()
        if root not in path.parents:
            raise InputError(f"adapter {name!r} — not a folder inside {folder}")
    if not (path / "adapter_config.json").is_file():
        raise InputError(f"adapter {name!r} — {path} has no adapter_config.json (see `mevqa adapters list`)")
    return path


def served_name(adapter: str, models: list[dict]) -> str:
    """The name a server serves `adapter` under: the name itself, or the folder's entry in /v1/models
    (vLLM lists each LoRA module's folder as its `root`)."""
    ids = [m.get("id", "") for m in models]
    if adapter in ids:
        return adapter
    path = Path(adapter)
    if path.is_dir():
        for m in models:
            if m.get("root") and Path(m["root"]).resolve() == path.resolve():
                return m["id"]
    raise InputError(
        f"model.adapter {adapter} — not served here; served models: {', '.join(ids) or 'none'} "
        "(start it with `mevqa serve --adapter NAME=PATH` and pass NAME or PATH)"
    )


def check_base(adapter: str | Path, model: str) -> None:
    """Refuse an adapter whose recorded base config hash differs from `model`'s."""
    want = recipe(adapter).get("base_config_hash")
    if want and want != (have := config_hash(model)):
        raise ModelError(
            f"model.adapter {adapter} — trained on a base with config hash {want}, but `model.model` "
            f"{model} has {have}; pass the base model it was trained on"
        )


def check_adapter(adapter: str | Path, model: str) -> dict:
    """Validate an adapter folder before loading it; returns its adapter_config."""
    path = Path(adapter)
    cfg = peft_config(path)
    if not (path / "adapter_model.safetensors").is_file():
        pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
        raise ModelError(
            f"model.adapter {adapter} — no adapter_model.safetensors"
            + (
                f" (only pickle weights: {pickles[0]}; mevqa loads safetensors only — load it once in peft "
                "and save_pretrained(..., safe_serialization=True))"
                if pickles
                else ""
            )
        )
    safetensors_header(path / "adapter_model.safetensors")  # complete, not cut short
    check_base(path, model)
    return cfg


def adapter_fingerprint(adapter: str | Path) -> str | None:
    path = Path(adapter) / "adapter_model.safetensors"
    return hash_file(path) if path.is_file() else None


def attach_adapter(model: Any, adapter: str | Path, model_id: str) -> Any:
    """Wrap `model` with the LoRA adapter, refusing one whose weights do not all land in the model.

    peft loads by name and only warns about keys it could not place; a VLM adapter saved against a
    different module layout then silently does nothing. We check every saved tensor found a home.
    """
    from peft import PeftModel
    from safetensors import safe_open

    check_adapter(adapter, model_id)
    try:
        wrapped = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise ModelError(
            f"model.adapter {adapter} — does not fit `model.model` {model_id} "
            f"({str(e).strip().splitlines()[0][:200]})"
        ) from None
    modules = {n for n, _ in wrapped.named_modules()}
    with safe_open(str(Path(adapter) / "adapter_model.safetensors"), "pt") as f:
        missing = [k for k in f.keys() if k.rsplit(".", 2)[0] not in modules]
    if missing:
        raise ModelError(
            f"model.adapter {adapter} — {len(missing)} weights match no module of `model.model` "
            f"{model_id} (first: {missing[0]}); the adapter was trained on another base"
        )
    return wrapped.eval()


def merges_exactly(model: Any) -> bool:
    """Whether answering with the adapter merged gives the unmerged adapter's answers: into fp32 weights.

    peft's unmerged LoRA runs two more matmuls (and a dropout) per adapted linear: merged, the demo's
    adapter answered 200 questions in 4.2 s instead of 13.9, the same 200 answers. Merged into bf16 (or
    nf4) weights the adapter's update is rounded (Qwen3.5 bf16 then answered otherwise than vLLM's
    unmerged LoRA)."""
    import torch

    return (
        hasattr(model, "merge_and_unload")
        and model.dtype == torch.float32
        and not getattr(model, "is_quantized", False)
    )


def merge(adapter: str | Path, model: str | None, out: str | Path) -> tuple[Path, str]:
    """Base + LoRA merged into one ordinary checkpoint (what `transformers serve` can serve).

    Always into the full-precision base: a QLoRA adapter was trained against a 4-bit copy of it, and the
    usual deployment merges into (or serves on) the unquantized weights. Returns (out, a note to print).
    """
    rec = recipe(adapter)
    base = model or rec.get("base_model")
    if not base:
        raise InputError(f"{adapter} — no base model recorded in mevqa.yaml; pass --model")
    if getattr(AutoConfig.from_pretrained(base), "quantization_config", None):
        raise ModelError(
            f"--model {base} — is a quantized checkpoint; merging into quantized weights loses the "
            "adapter's precision. Merge into the unquantized base instead"
        )
    merged = attach_adapter(load_model(ModelSpec(base, device="cpu")), adapter, base).merge_and_unload()
    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp)
        load_processor(base).save_pretrained(tmp)
    note = "QLoRA adapter merged into the full-precision base" if rec.get("method") == "qlora" else ""
    return Path(out), note
