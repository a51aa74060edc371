"""Training checkpoints: the trainable weights (safetensors), optimizer + scheduler state, the loop state,
and every process's torch RNG state (LoRA dropout draws from it: a resumed run draws what the uninterrupted
one would have, so it ends with the same weights).

Written into a temporary folder and renamed into place, so a kill never leaves half a checkpoint; only
the newest few are kept.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mevqa.errors import InputError
from mevqa.io import atomic_dir
from mevqa.models.shapes import safetensors_header

log = logging.getLogger(__name__)
KEEP = 2  # checkpoints kept: the newest, and one before it in case the newest is from a bad step


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict[str, torch.Tensor]:
    """This process's torch RNG: the CPU generator, and the current GPU's once CUDA is in use."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def save_checkpoint(
    out: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any, state: dict, rng: list[dict]
) -> Path:
    """`rng`: every process's `rng_state()`, in rank order."""
    folder = out / "checkpoints" / f"step-{state['step']}"
    with atomic_dir(folder) as tmp:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optim.pt"
        )
        torch.save(rng, tmp / "rng.pt")
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
    """Restore the weights, optimizer and schedule; a checkpoint cut short (a full disk, a copy) is one
    error saying which, not a loader's traceback."""
    safetensors_header(folder / "trainable.safetensors")
    try:
        opt = torch.load(folder / "optim.pt", weights_only=True)
        state = json.loads((folder / "state.json").read_text())
    except (OSError, RuntimeError, EOFError, ValueError) as e:
        raise InputError(
            f"{folder} — unreadable checkpoint ({str(e).splitlines()[0][:100]}); remove it to resume from "
            "the one before"
        ) from None
    weights = load_file(str(folder / "trainable.safetensors"))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    return state


def restore_rng(folder: Path, rank: int, processes: int) -> None:
    """Set this process's RNG to what it was when `folder` was saved, if the run had as many processes."""
    path = folder / "rng.pt"
    saved = torch.load(path, weights_only=True) if path.is_file() else []
    if len(saved) != processes:
        log.warning(
            "%s holds no RNG state for %d processes: from here the dropout draws differ from an "
            "uninterrupted run's",
            folder,
            processes,
        )
        return
    torch.set_rng_state(saved[rank]["cpu"])
    if "cuda" in saved[rank] and torch.cuda.is_available():
        torch.cuda.set_rng_state(saved[rank]["cuda"])
