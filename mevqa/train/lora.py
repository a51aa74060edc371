"""`mevqa train`: LoRA (peft) / QLoRA (bitsandbytes nf4) / full fine-tuning of a VLM on MEGC-style QA.

One accelerate loop for one CPU, one GPU or many (`accelerate launch -m mevqa train ...`). The adapter
folder it writes is what peft and vLLM load: adapter_config.json + adapter_model.safetensors, plus
mevqa.yaml (the resolved recipe and the base's config hash), metrics.json and training.png.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from mevqa.config import FrameConfig
from mevqa.errors import InputError, MissingDependency, ModelError

log = logging.getLogger(__name__)

METHODS = ("lora", "qlora", "full")
# Language-model projections of Qwen2.5-VL (model.language_model.*) and Idefics3/SmolVLM (model.text_model.*):
# what vLLM serves LoRA on by default.
LM_TARGETS = r".*(language_model|text_model).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
VISION_TARGETS = r".*(visual\.blocks|vision_model\.encoder).*\.(qkv|proj|q_proj|k_proj|v_proj|out_proj|fc1|fc2|gate_proj|up_proj|down_proj)"  # noqa: E501
PROJECTOR_TARGETS = r".*(visual\.merger\.mlp\.[02]|connector\.modality_projection\.proj)"


@dataclass(frozen=True)
class TrainConfig:
    """A training recipe; `adapters/recipes/*.yaml` use the same keys."""

    data: str
    out: str
    model: str
    root: str | None = None
    eval_data: str | None = None
    method: str = "lora"
    input: str = "frames"
    frames: int = 8
    sampling: str = "uniform"
    prompt: str = "plain"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: str = LM_TARGETS
    lora_vision: bool = False
    lora_projector: bool = False
    lr: float = 1e-4
    epochs: float = 3.0
    max_steps: int | None = None
    batch_size: int = 1
    grad_accum: int = 8
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    grad_checkpointing: bool = False
    dtype: str = "auto"
    seed: int = 0
    save_every: int = 200
    log_every: int = 10
    eval_limit: int | None = None
    eval_every: int | None = None  # steps; None = at the end of every epoch
    clip_pattern: str | None = None
    question_types: tuple[str, ...] | None = None
    max_new_tokens: int = 32
    device: str = "auto"
    resume: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"--method {self.method!r} — choose one of {', '.join(METHODS)}")
        if self.question_types is not None:
            object.__setattr__(self, "question_types", tuple(self.question_types))

    def frame_config(self) -> FrameConfig:
        return FrameConfig(frames=self.frames, sampling=self.sampling, input=self.input)


# ---------------------------------------------------------------- model
def _quantization(cfg: TrainConfig, device: str) -> Any:
    if cfg.method != "qlora":
        return None
    if not device.startswith("cuda"):
        raise InputError(
            "--method qlora — 4-bit QLoRA (bitsandbytes nf4) needs a CUDA GPU; on CPU use --method lora"
        )
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise MissingDependency("--method qlora — needs bitsandbytes: pip install 'mevqa[qlora]'") from None
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def lora_targets(cfg: TrainConfig) -> str:
    parts = [cfg.target_modules]
    if cfg.lora_vision:
        parts.append(VISION_TARGETS)
    if cfg.lora_projector:
        parts.append(PROJECTOR_TARGETS)
    if len(parts) > 1:
        warnings.warn(
            "LoRA on the vision tower/projector: vLLM ignores those weights unless the server "
            "enables LoRA for the tower (see `vllm serve --help`, 'tower' LoRA); language-model LoRA "
            "is what every vLLM build serves.",
            stacklevel=2,
        )
    return "|".join(f"(?:{p})" for p in parts)


def build_model(cfg: TrainConfig, device: str) -> torch.nn.Module:
    """The base model with LoRA (or QLoRA) adapters attached, or fully trainable for `full`."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from mevqa.models.loading import load_model

    model = load_model(cfg.model, device, cfg.dtype, quantization_config=_quantization(cfg, device))
    if cfg.grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if cfg.method == "full":
        return model.train()
    if cfg.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.grad_checkpointing)
    peft_cfg = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=lora_targets(cfg),
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, peft_cfg)
    except ValueError as e:
        raise ModelError(
            f"--target-modules {cfg.target_modules!r} — {str(e).splitlines()[0][:200]}"
        ) from None
    return model.train()


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------- data
def load_rows(path: str, cfg: TrainConfig, limit: int | None = None) -> list[dict]:
    from mevqa.data.megc import read_jsonl
    from mevqa.prompts import classify

    rows = [r for r in read_jsonl(path) if str(r.get("answer", "")).strip()]
    if cfg.question_types:
        rows = [r for r in rows if classify(r["question"])[0] in cfg.question_types]
    if not rows:
        raise InputError(f"{path} — no rows with answers to train on")
    return rows[:limit] if limit else rows


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(seed * 1000 + epoch).shuffle(order)
    return order


# ---------------------------------------------------------------- checkpoints
def save_checkpoint(folder: Path, model, optimizer, scheduler, state: dict) -> None:
    from safetensors.torch import save_file

    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optim.pt")
    (tmp / "state.json").write_text(json.dumps(state))
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    tmp.rename(folder)


def latest_checkpoint(out: Path) -> Path | None:
    ckpts = sorted((out / "checkpoints").glob("step-*[0-9]"), key=lambda p: int(p.name.split("-")[1]))
    return ckpts[-1] if ckpts else None


def load_checkpoint(folder: Path, model, optimizer, scheduler) -> dict:
    from safetensors.torch import load_file

    weights = load_file(str(folder / "trainable.safetensors"))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
    opt = torch.load(folder / "optim.pt", weights_only=True)
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    return json.loads((folder / "state.json").read_text())


# ---------------------------------------------------------------- outputs
def write_recipe(out: Path, cfg: TrainConfig, extra: dict) -> None:
    from mevqa.models.loading import config_hash

    recipe = {
        **dataclasses.asdict(cfg),
        "base_model": cfg.model,
        "base_config_hash": config_hash(cfg.model),
        **extra,
    }
    recipe.pop("resume", None)
    if recipe.get("question_types"):
        recipe["question_types"] = list(recipe["question_types"])
    (out / "mevqa.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))


def plot_training(out: Path, losses: list[tuple[int, float]], evals: list[dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if losses:
        steps, values = [s for s, _ in losses], [v for _, v in losses]
        ax.plot(steps, values, color="tab:blue", alpha=0.25, linewidth=0.6)
        k = max(1, len(values) // 50)  # per-step loss swings with the question type: show a running mean
        smooth = [
            sum(values[max(0, i - k + 1) : i + 1]) / len(values[max(0, i - k + 1) : i + 1])
            for i in range(len(values))
        ]
        ax.plot(steps, smooth, color="tab:blue", label=f"train loss (mean of {k})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    if evals:
        ax2 = ax.twinx()
        ax2.plot(
            [e["step"] for e in evals],
            [e.get("coarse_uf1") or 0 for e in evals],
            "o-",
            color="tab:red",
            label="held-out coarse UF1",
        )
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("held-out coarse UF1")
    fig.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(out / "training.png", dpi=100)
    plt.close(fig)
    return out / "training.png"


# ---------------------------------------------------------------- held-out evaluation
def held_out(cfg: TrainConfig, model, processor, rows: list[dict], step: int) -> dict:
    """Answer the held-out rows with the model as it is now; the eval runner's own code path."""
    from mevqa.backends.hf import TransformersBackend
    from mevqa.data.megc import row_id
    from mevqa.evaluation.metrics import score_rows
    from mevqa.evaluation.runner import Answerer, EvalConfig, _batches, _groups

    ecfg = EvalConfig(
        data="-",
        out="-",
        model=cfg.model,
        root=cfg.root,
        input=cfg.input,
        frames=cfg.frames,
        sampling=cfg.sampling,
        prompt=cfg.prompt,
        clip_pattern=cfg.clip_pattern,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=8,
    )
    model.eval()
    answerer = Answerer(ecfg, TransformersBackend(model, processor, cfg.model))
    answers = {}
    for batch in _batches(_groups(rows), ecfg.batch_size):
        for row, ans in answerer.answer(batch):
            answers[row_id(row)] = ans.text if ans.ok else None
    model.train()
    m = score_rows(rows, answers)["overall"]
    return {"step": step, **{k: m[k] for k in ("coarse_uf1", "coarse_uar", "fine_uf1", "fine_uar", "score")}}


# ---------------------------------------------------------------- the loop
def _schedule(optimizer, cfg: TrainConfig, total: int):
    from transformers import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)


def train(cfg: TrainConfig) -> dict:
    """Train, checkpoint, evaluate held-out data per epoch, and write the adapter folder."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm import tqdm

    from mevqa.models.loading import load_processor, pick_device
    from mevqa.train.data import AnswerOnlyCollator, QADataset

    out = Path(cfg.out)
    rows = load_rows(cfg.data, cfg)
    eval_rows = load_rows(cfg.eval_data, cfg, cfg.eval_limit) if cfg.eval_data else []
    acc = Accelerator(gradient_accumulation_steps=cfg.grad_accum, cpu=pick_device(cfg.device) == "cpu")
    set_seed(cfg.seed)
    processor = load_processor(cfg.model)
    model = build_model(cfg, str(acc.device))
    dataset = QADataset(rows, cfg.root, cfg.frame_config(), cfg.prompt, cfg.clip_pattern)
    collate = AnswerOnlyCollator(processor)
    steps_per_epoch = max(1, math.ceil(len(rows) / cfg.batch_size / cfg.grad_accum / acc.num_processes))
    total = cfg.max_steps or max(1, math.ceil(steps_per_epoch * cfg.epochs))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = _schedule(optimizer, cfg, total)
    model, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
    state = {"step": 0, "epoch": 0, "micro": 0, "losses": [], "evals": []}
    if cfg.resume and (ckpt := latest_checkpoint(out)):
        state = load_checkpoint(ckpt, acc.unwrap_model(model), optimizer, scheduler)
        log.info("resumed from %s (step %d)", ckpt, state["step"])
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=total, initial=state["step"], unit="step", desc="training", dynamic_ncols=True)
    running: list[float] = []
    while state["step"] < total:
        seen = state["micro"] * cfg.batch_size * acc.num_processes  # samples this epoch already used
        order = epoch_order(len(rows), cfg.seed, state["epoch"])[seen:]
        loader = acc.prepare(
            torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, sampler=order, collate_fn=collate)
        )
        for batch in loader:
            with acc.accumulate(model):
                loss = model(**batch).loss
                acc.backward(loss)
                if acc.sync_gradients:
                    acc.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            state["micro"] += 1
            running.append(loss.item())
            if acc.sync_gradients:
                _after_step(
                    cfg, acc, model, optimizer, scheduler, processor, eval_rows, state, running, out, bar
                )
                running = []
                if state["step"] >= total:
                    break
        else:
            state["epoch"] += 1
            state["micro"] = 0
            if eval_rows and cfg.eval_every is None and acc.is_main_process:
                state["evals"].append(
                    held_out(cfg, acc.unwrap_model(model), processor, eval_rows, state["step"])
                )
    bar.close()
    return finish(cfg, acc, model, processor, eval_rows, state, out)


def _after_step(
    cfg, acc, model, optimizer, scheduler, processor, eval_rows, state, running, out, bar
) -> None:
    state["step"] += 1
    state["losses"].append((state["step"], sum(running) / len(running)))
    bar.update(1)
    if state["step"] % cfg.log_every == 0:
        bar.set_postfix(loss=f"{state['losses'][-1][1]:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
    if cfg.eval_every and eval_rows and state["step"] % cfg.eval_every == 0 and acc.is_main_process:
        state["evals"].append(held_out(cfg, acc.unwrap_model(model), processor, eval_rows, state["step"]))
    if cfg.save_every and state["step"] % cfg.save_every == 0 and acc.is_main_process:
        save_checkpoint(
            out / "checkpoints" / f"step-{state['step']}",
            acc.unwrap_model(model),
            optimizer,
            scheduler,
            state,
        )


def finish(cfg: TrainConfig, acc, model, processor, eval_rows, state: dict, out: Path) -> dict:
    """Final held-out score, then the adapter (or full model) folder with its recipe and metrics."""
    model = acc.unwrap_model(model)
    if eval_rows and (not state["evals"] or state["evals"][-1]["step"] != state["step"]):
        state["evals"].append(held_out(cfg, model, processor, eval_rows, state["step"]))
    if not acc.is_main_process:
        return state
    model.save_pretrained(out)  # peft: adapter_config.json + adapter_model.safetensors; full: the model
    if cfg.method == "full":
        processor.save_pretrained(out)
    rank = None if cfg.method == "full" else cfg.lora_r
    write_recipe(out, cfg, {"final_step": state["step"], "rank": rank})
    best = max((e.get("coarse_uf1") or 0 for e in state["evals"]), default=None)
    metrics = {
        "train_loss": state["losses"],
        "held_out": state["evals"],
        "best_held_out_coarse_uf1": best,
        "steps": state["step"],
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    plot_training(out, state["losses"], state["evals"])
    return metrics
