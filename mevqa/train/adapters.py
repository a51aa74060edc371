"""The adapters/ registry: list trained adapters, merge one into its base, read recorded recipes."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from mevqa.errors import InputError, ModelError


def recipe(adapter: str | Path) -> dict:
    """The adapter's mevqa.yaml (empty for adapters trained elsewhere)."""
    path = Path(adapter) / "mevqa.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def adapter_rank(adapter: str | Path) -> int | None:
    """The largest LoRA rank in the adapter (rank_pattern can raise it per module)."""
    cfg = Path(adapter) / "adapter_config.json"
    if not cfg.is_file():
        return None
    data = json.loads(cfg.read_text())
    return max([data.get("r") or 0, *(data.get("rank_pattern") or {}).values()]) or None


def list_adapters(folder: str | Path = "adapters") -> list[dict]:
    """One row per adapter folder: name, base, rank, input mode, best held-out score."""
    rows = []
    for d in sorted(Path(folder).iterdir()) if Path(folder).is_dir() else []:
        if not (d / "adapter_config.json").is_file():
            continue
        rec = recipe(d)
        peft_cfg = json.loads((d / "adapter_config.json").read_text())
        metrics = json.loads((d / "metrics.json").read_text()) if (d / "metrics.json").is_file() else {}
        rows.append(
            {
                "name": d.name,
                "path": d,
                "base": rec.get("base_model") or peft_cfg.get("base_model_name_or_path"),
                "rank": adapter_rank(d),
                "input": rec.get("input", "frames"),
                "frames": rec.get("frames"),
                "best_coarse_uf1": metrics.get("best_held_out_coarse_uf1"),
            }
        )
    return rows


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


def merge(adapter: str | Path, model: str | None, out: str | Path) -> Path:
    """Base + LoRA merged into one ordinary checkpoint (what `transformers serve` can serve)."""
    from transformers import AutoConfig

    from mevqa.models.loading import attach_adapter, load_model, load_processor

    base = model or recipe(adapter).get("base_model")
    if not base:
        raise InputError(f"{adapter} — no base model recorded in mevqa.yaml; pass --model")
    if getattr(AutoConfig.from_pretrained(base), "quantization_config", None):
        raise ModelError(
            f"--model {base} — is a quantized checkpoint; merging into quantized weights loses the "
            "adapter's precision. Merge into the unquantized base instead"
        )
    merged = attach_adapter(load_model(base, device="cpu"), adapter, base).merge_and_unload()
    merged.save_pretrained(out)
    load_processor(base).save_pretrained(out)
    return Path(out)
