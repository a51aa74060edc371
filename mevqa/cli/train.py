"""`mevqa train`: fine-tune a LoRA adapter (or QLoRA / full) on MEGC-style QA."""

from __future__ import annotations

import argparse
from pathlib import Path

from mevqa.cli._args import add_settings, load_settings
from mevqa.config import TrainConfig
from mevqa.errors import InputError
from mevqa.io import write_failure


def cmd_train(a: argparse.Namespace) -> int:
    from mevqa.train.loop import train

    cfg = load_settings(a, TrainConfig, "train")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} — is a file, not a folder")
    if (out / "adapter_config.json").exists() and not cfg.resume and not cfg.overwrite:
        raise InputError(f"--out {out} — already holds an adapter; pass --resume or --overwrite")
    try:
        metrics = train(cfg)
    except Exception as e:  # a full or read-only disk surfaces from torch, safetensors or peft, not just os
        if (failure := write_failure(f"--out {out}", e)) is None:
            raise
        raise failure from None
    if metrics is None:  # another process of a multi-process run: the main one reports
        return 0
    best = metrics.get("best_held_out_coarse_uf1")
    loss = metrics["train_loss"][-1][1] if metrics.get("train_loss") else float("nan")
    print(
        f"trained {metrics['steps']} steps; final loss {loss:.4f}; best held-out coarse UF1 "
        f"{'—' if best is None else f'{best:.3f}'}"
    )
    print(f"wrote {out}")
    return 0


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "train",
        usage="mevqa train --data FILE --out DIR --model MODEL [options]",
        parents=[common],
        help="fine-tune a LoRA adapter (or QLoRA / full) on MEGC-style QA",
        description="Loss on answer tokens only; LoRA on the language model by default (what vLLM serves). "
        "Several GPUs or processes: accelerate launch -m mevqa train ...",
    )
    p.add_argument("--config", help="recipe YAML (adapters/recipes/*.yaml), nested like the settings below")
    add_settings(p, TrainConfig)
    p.set_defaults(func=cmd_train)
