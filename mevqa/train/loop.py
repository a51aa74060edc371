"""`mevqa train`: LoRA (peft) / QLoRA (bitsandbytes 4-bit) / full fine-tuning of a VLM on MEGC-style QA.

One accelerate loop for one CPU, one GPU or many processes (`accelerate launch -m mevqa train ...`:
DDP, or FSDP with an accelerate config file). Only the main process writes files, logs and shows a
progress bar. The adapter folder it writes is what peft and vLLM load (adapter_config.json +
adapter_model.safetensors) plus mevqa.yaml (the resolved recipe, the base and its config hash),
metrics.json, training.png and TensorBoard logs under runs/.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from mevqa import __version__
from mevqa.backends.hf import TransformersBackend
from mevqa.config import TrainConfig, to_dict
from mevqa.data.megc import read_jsonl, row_id
from mevqa.errors import InputError
from mevqa.evaluation.metrics import score_rows
from mevqa.evaluation.report import plot_training, write_json
from mevqa.evaluation.runner import answer_rows
from mevqa.inputs import ClipParts
from mevqa.io import FolderLock, atomic_write, is_temp, remove_stale_temps
from mevqa.models import families
from mevqa.models.adapters import base_id, merges_exactly, train_traces
from mevqa.models.loading import config_hash, load_processor, pick_device
from mevqa.prompts import classify
from mevqa.train.checkpoint import latest_checkpoint, load_checkpoint, restore_rng, rng_state, save_checkpoint
from mevqa.train.data import IGNORE, AnswerOnlyCollator, QADataset
from mevqa.train.model import build_model

log = logging.getLogger(__name__)
HELD_OUT_KEYS = ("coarse_uf1", "coarse_uar", "fine_uf1", "fine_uar", "score")


def load_rows(path: str, cfg: TrainConfig, limit: int | None = None) -> list[dict]:
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


# Held-out questions are asked of a merged copy of a LoRA model up to this size (as `eval --adapter` asks
# them, same answers): the demo's three in-training evals took ~37 s each through peft's unmerged layers.
# A copy costs the model's size again, so bigger models answer through the training model itself.
MERGED_COPY_MAX_BYTES = 1 << 30


def answering_model(model: torch.nn.Module) -> torch.nn.Module:
    """What held-out questions are asked of: a merged copy of a small fp32 LoRA model, else `model`."""
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    if size > MERGED_COPY_MAX_BYTES or not merges_exactly(model):
        return model
    return copy.deepcopy(model).merge_and_unload()


def held_out(cfg: TrainConfig, model: torch.nn.Module, processor: Any, rows: list[dict], step: int) -> dict:
    """Answer the held-out rows with the model as it is now, through the eval runner's own code path."""
    model.eval()
    backend = TransformersBackend(answering_model(model), processor, cfg.model.model)
    answers = {
        row_id(r): (a.text if a.ok else None) for r, a in answer_rows(cfg.eval_config(), backend, rows)
    }
    del backend
    model.train()
    m = score_rows(rows, answers)["overall"]
    return {"step": step, **{k: m[k] for k in HELD_OUT_KEYS}}


def write_recipe(out: Path, cfg: TrainConfig, extra: dict) -> None:
    """mevqa.yaml: the resolved recipe, the base as an absolute path (or Hub id) and its config hash."""
    recipe = {k: v for k, v in to_dict(cfg).items() if k not in ("resume", "overwrite")}
    recipe |= {"base_model": base_id(cfg.model.model), "base_config_hash": config_hash(cfg.model.model)}
    recipe |= {"mevqa_version": __version__, **extra}
    atomic_write(out / "mevqa.yaml", yaml.safe_dump(recipe, sort_keys=False))


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested settings as flat scalar hyper-parameters (what TensorBoard's hparams accept)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[prefix + k] = v if isinstance(v, int | float | str | bool) else str(v)
    return out


class Trainer:
    """Setup in `__init__`; `run()` loops over epochs; steps, held-out scores and checkpoints read `self`."""

    def __init__(self, cfg: TrainConfig):
        self.cfg, self.out = cfg, Path(cfg.out)
        self.rows = load_rows(cfg.data, cfg)
        self.eval_rows = load_rows(cfg.eval_data, cfg, cfg.eval_limit) if cfg.eval_data else []
        tracker = None if cfg.report_to == "none" else cfg.report_to
        self.acc = Accelerator(
            gradient_accumulation_steps=cfg.grad_accum,
            cpu=pick_device(cfg.model.device) == "cpu",
            log_with=tracker,
            project_dir=str(self.out),
            # one schedule step per optimizer step: accelerate would otherwise step it once per process
            step_scheduler_with_optimizer=False,
        )
        set_seed(cfg.seed)
        self.processor = load_processor(cfg.model.model, cfg.model.trust_remote_code)
        model = build_model(cfg, str(self.acc.device))
        parts = ClipParts(cfg.root, cfg.frames, cfg.clip_pattern, cache=1024)
        self.dataset = QADataset(self.rows, parts, cfg.prompt)
        template_kwargs = families.chat_template_kwargs(model.config.model_type)
        self.collate = AnswerOnlyCollator(self.processor, template_kwargs)
        per_step = cfg.batch_size * cfg.grad_accum * self.acc.num_processes
        self.total = cfg.max_steps or max(1, math.ceil(math.ceil(len(self.rows) / per_step) * cfg.epochs))
        self.params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * self.total), self.total)
        self.model, self.optimizer, self.scheduler = self.acc.prepare(model, optimizer, scheduler)
        self.state: dict[str, Any] = {"step": 0, "epoch": 0, "micro": 0, "losses": [], "evals": []}
        if cfg.resume and (ckpt := latest_checkpoint(self.out)):
            self.state = load_checkpoint(ckpt, self.unwrapped, self.optimizer, self.scheduler)
            restore_rng(ckpt, self.acc.process_index, self.acc.num_processes)  # after the LoRA init drew
            log.info("resumed from %s (step %d)", ckpt, self.state["step"])
        elif cfg.resume:  # a finished run keeps none, nor one shorter than save_every: say it starts over
            log.warning("%s holds no checkpoint to resume from: training from step 0", self.out)

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.acc.unwrap_model(self.model)

    def run(self) -> dict | None:
        """Train to `total` steps, then write the adapter folder; returns the metrics."""
        if self.acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
        if self.acc.log_with:
            self.acc.init_trackers("runs", config=_flat(to_dict(self.cfg)))
        main = self.acc.is_local_main_process
        self.bar = tqdm(
            total=self.total, initial=self.state["step"], unit="step", desc="training", disable=not main
        )
        while self.state["step"] < self.total:
            if self._epoch():
                self.state["epoch"] += 1
                self.state["micro"] = 0
                if self.cfg.eval_every is None:
                    self.evaluate()
        self.bar.close()
        return self.finish()

    def _loader(self) -> Any:
        """This epoch's remaining samples (a resumed epoch skips what its checkpoint had already seen)."""
        seen = self.state["micro"] * self.cfg.batch_size * self.acc.num_processes
        order = epoch_order(len(self.rows), self.cfg.seed, self.state["epoch"])[seen:]
        # a generator of its own: starting to iterate draws a seed, which from the global RNG would shift
        # the dropout draws of a resumed epoch against the uninterrupted run's
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.cfg.batch_size,
            sampler=order,
            collate_fn=self.collate,
            generator=torch.Generator(),
        )
        return self.acc.prepare(loader)

    def _epoch(self) -> bool:
        """One pass; True when the epoch ran to its end (False: the step budget ended it)."""
        running: list[float] = []
        for batch in self._loader():
            with self.acc.accumulate(self.model):
                loss = self._loss(batch)
                self.acc.backward(loss)
                if self.acc.sync_gradients:
                    self.acc.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
                self.optimizer.step()  # a no-op between accumulation steps
                if self.acc.sync_gradients:
                    self.scheduler.step()
                self.optimizer.zero_grad()
            self.state["micro"] += 1
            running.append(loss.item() / self.acc.num_processes)
            if self.acc.sync_gradients:
                self._after_step(sum(running) / len(running))
                running = []
                if self.state["step"] >= self.total:
                    return False
        return True

    def _loss(self, batch: dict) -> torch.Tensor:
        """The loss over the *global* batch's answer tokens, whatever the number of processes.

        Each process divides its token-loss sum by the answer tokens of every process together, times the
        process count (DDP averages gradients): 2 processes x batch B train exactly like 1 x batch 2B,
        instead of averaging per-process means that weigh short and long answers differently.
        """
        if self.acc.num_processes == 1:
            return self.model(**batch).loss
        tokens = (batch["labels"][:, 1:] != IGNORE).sum()
        total = self.acc.gather(tokens.reshape(1)).sum()
        return self.model(**batch, num_items_in_batch=total).loss * self.acc.num_processes

    def _after_step(self, loss: float) -> None:
        # every process's share of the global-batch loss, summed: the same curve at any process count
        loss = self.acc.reduce(torch.tensor(loss, device=self.acc.device), "sum").item()
        s = self.state
        s["step"] += 1
        s["losses"].append([s["step"], loss])  # a list, as it reads back from a checkpoint's state.json
        lr = self.scheduler.get_last_lr()[0]
        self.bar.update(1)
        if s["step"] % self.cfg.log_every == 0:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        self.acc.log({"train/loss": loss, "train/lr": lr}, step=s["step"])
        if self.cfg.eval_every and s["step"] % self.cfg.eval_every == 0:
            self.evaluate()
        if self.cfg.save_every and s["step"] % self.cfg.save_every == 0:
            rng = gather_object([rng_state()])  # every process's (a collective: all of them call it)
            if self.acc.is_main_process:
                save_checkpoint(self.out, self.unwrapped, self.optimizer, self.scheduler, s, rng)

    def evaluate(self) -> None:
        """Score the held-out rows (main process; the others wait at their next synchronisation)."""
        if not self.eval_rows or not self.acc.is_main_process:
            return
        if self.state["evals"] and self.state["evals"][-1]["step"] == self.state["step"]:
            return
        result = held_out(self.cfg, self.unwrapped, self.processor, self.eval_rows, self.state["step"])
        self.state["evals"].append(result)
        self.acc.log(
            {f"held_out/{k}": v for k, v in result.items() if k != "step" and v is not None},
            step=self.state["step"],
        )

    def finish(self) -> dict | None:
        """Final held-out score, then the adapter (or full model) folder with its recipe and metrics."""
        self.evaluate()
        self.acc.wait_for_everyone()
        self.acc.end_training()
        if not self.acc.is_main_process:
            return None
        cfg, out = self.cfg, self.out
        # mevqa.yaml goes last, and an older one first: a kill while the weights are written leaves a
        # folder without it, which readers refuse as incomplete (not new weights with old settings)
        (out / "mevqa.yaml").unlink(missing_ok=True)
        self.unwrapped.save_pretrained(out)  # peft: adapter_config.json + adapter_model.safetensors
        if cfg.method == "full":
            self.processor.save_pretrained(out)
        rank = None if cfg.method == "full" else cfg.lora.r
        write_recipe(out, cfg, {"final_step": self.state["step"], "rank": rank})
        evals = self.state["evals"]
        best = max((e.get("coarse_uf1") or 0 for e in evals), default=None)
        metrics = {
            "train_loss": self.state["losses"],
            "held_out": evals,
            "best_held_out_coarse_uf1": best,
            "steps": self.state["step"],
            "processes": self.acc.num_processes,
        }
        write_json(out / "metrics.json", metrics)
        plot_training(out, self.state["losses"], evals)
        return metrics


def check_out(cfg: TrainConfig) -> None:
    """Refuse an --out that holds files a mevqa run did not write, unless --overwrite: a user's folder (or
    another trainer's) has no mevqa.yaml, checkpoints or lock of ours, and `train` would overwrite its
    README.md and metrics.json."""
    out = Path(cfg.out)
    if cfg.overwrite or not out.is_dir() or (out / "mevqa.yaml").is_file() or train_traces(out):
        return
    theirs = sorted(p.name for p in out.iterdir() if p.name != ".lock" and not is_temp(p))
    if theirs:
        raise InputError(
            f"`out` {out} — holds files mevqa train did not write ({', '.join(theirs[:3])}); choose an "
            "empty or new folder, or pass --overwrite to write over them"
        )


def train(cfg: TrainConfig) -> dict | None:
    """Train, checkpoint, evaluate held-out data, and write the adapter folder; the metrics (None in the
    other processes of a multi-process run). One run per --out: a second one is refused while it runs."""
    check_out(cfg)
    # the launcher's rank (accelerate launch, torchrun): the main process holds the folder for them all
    lock = FolderLock(Path(cfg.out), "mevqa train") if int(os.environ.get("RANK", "0")) == 0 else None
    try:
        if lock:
            remove_stale_temps(Path(cfg.out) / "checkpoints")
        return Trainer(cfg).run()
    finally:
        if lock:
            lock.release()
