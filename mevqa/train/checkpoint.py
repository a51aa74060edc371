"""Training checkpoints: the trainable weights (safetensors), optimizer + scheduler state, the loop state.

Written into a temporary folder and renamed into place, so a kill never leaves half a checkpoint; only
the newest few are kept.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mevqa.io import atomic_dir

KEEP = 2  # checkpoints kept: the newest, and one before it in case the newest is from a bad step


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(out: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any, state: dict) -> Path:
    folder = out / "checkpoints" / f"step-{state['step']}"
    with atomic_dir(folder) as tmp:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optim.pt"
        )
        (tmp / "state.json").write_text(json.dumps(state))
    for old in checkpoints(out)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def checkpoints(out: Path) -> list[Path]:
    found = (out / "checkpoints").glob("step-*[0-9]")
    return sorted(
        (p for p in found if p.name.split("-")[1].isdigit()), key=lambda p: int(p.name.split("-")[1])
    )


def latest_checkpoint(out: Path) -> Path | None:
    ckpts = checkpoints(out)
    return ckpts[-1] if ckpts else None


def load_checkpoint(folder: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> dict:
    weights = load_file(str(folder / "trainable.safetensors"))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
    opt = torch.load(folder / "optim.pt", weights_only=True)
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    return json.loads((folder / "state.json").read_text())
