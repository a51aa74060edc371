"""`mevqa bench gpu`: the GPU numbers, from one command that needs no editing when a GPU appears.

It builds a published 3-8B shape (Qwen2.5-VL-3B/7B, Qwen3-VL-4B/8B, Qwen3.5-4B: `families.SHAPES`) from
its config values with random weights (bf16, nothing downloaded) and measures on the MEGC shape (a clip's
8 frames of 224 px, five questions per clip): eval questions/s and prefill MFU by batch size, decode
tokens/s, a LoRA r16 training step (samples/s, MFU, peak memory) and QLoRA (nf4) peak memory at batch 4.
`--shape tiny` runs every path on a CPU (the tests do); its MFU is None (no peak to compare with).

FLOPs counted (the usual model-FLOPs convention, dense matmuls only): a forward pass over T language tokens
costs 2 * P_lm * T, plus 2 * P_vision * V for V vision patches; a training step costs 3x its forward
(forward + backward, the "6PT" rule), although LoRA skips the frozen weights' gradients - so LoRA MFU is
conservative by up to a third. MFU = FLOPs / seconds / the GPU's dense bf16 peak.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForImageTextToText

from mevqa.backends.base import load_backend
from mevqa.backends.hf import TransformersBackend
from mevqa.bench import environment, test_like_rows
from mevqa.config import CheckpointSpec, EvalConfig, FrameConfig, GenConfig, ModelSpec, TrainConfig
from mevqa.data.synth import synthesize
from mevqa.errors import InputError
from mevqa.evaluation.runner import Answerer, answer_rows, batches_of
from mevqa.io import atomic_write
from mevqa.models import families
from mevqa.models.families import SHAPES
from mevqa.models.loading import load_processor
from mevqa.models.tiny import build_tiny
from mevqa.train.loop import Trainer

PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.1}  # dense, no sparsity


def peak_tflops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def shape_config(shape: str, work: Path) -> Any:
    """The config of `shape`: its family's tiny checkpoint (tokenizer ids, processor) with the published
    text and vision values (families.py) in place of the tiny ones."""
    if shape not in SHAPES:
        raise InputError(f"--shape {shape!r} — choose one of tiny, {', '.join(SHAPES)}")
    family, values = SHAPES[shape]
    config = AutoConfig.from_pretrained(build_tiny(family.name, work / f"tiny-{family.name}"))
    text = {**config.text_config.to_dict(), **values["text"]}
    if len(text.get("layer_types") or ()) != text["num_hidden_layers"]:
        text.pop("layer_types", None)  # the tiny layer pattern; the config recomputes the published one
    config.text_config = type(config.text_config)(**text)
    vision = {**config.vision_config.to_dict(), **values["vision"], "out_hidden_size": text["hidden_size"]}
    config.vision_config = type(config.vision_config)(**vision)
    for k, v in values.get("top", {}).items():
        setattr(config, k, v)
    return config


def build_shape(shape: str, work: Path) -> Path:
    """A checkpoint folder of `shape`: real architecture and processor (224 px frames), random weights."""
    if shape == "tiny":
        return build_tiny("qwen2_5_vl", work / "tiny")
    config = shape_config(shape, work)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    out = work / shape
    model.save_pretrained(out)
    proc = load_processor(str(work / f"tiny-{SHAPES[shape][0].name}"))
    # 224 px frames: 64 tokens per frame (14 px patches), 49 (16 px patches)
    proc.image_processor.max_pixels = proc.image_processor.min_pixels = 224 * 224
    proc.save_pretrained(out)
    del model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return out


def params(model: torch.nn.Module) -> tuple[int, int]:
    """(language-model parameters, vision-tower parameters)."""
    family = families.for_model_type(model.config.model_type)
    tower = [f".{m}." for m in (family.vision_modules if family else ())]  # also under a PEFT wrapper
    vision = sum(p.numel() for n, p in model.named_parameters() if any(t in f".{n}" for t in tower))
    return sum(p.numel() for p in model.parameters()) - vision, vision


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def eval_rows(work: Path, size: int) -> tuple[Path, list[dict]]:
    root = synthesize(work / "synthme", subjects=4, clips_per_subject=4, size=size, seed=1)
    return root, test_like_rows(root)


def bench_eval(
    backend: TransformersBackend, root: Path, rows: list[dict], sizes: tuple[int, ...], peak: float | None
) -> dict:
    """Questions/s and prefill MFU by batch size; the prefill share is measured with 1 new token."""
    p_lm, p_vis = params(backend.model)
    out: dict[str, Any] = {"questions_per_second": {}, "prefill_mfu": {}, "prefill_tflops": {}}
    for b in sizes:
        base = EvalConfig(
            data="-",
            out="-",
            model=ModelSpec(backend.model_id),
            root=str(root),
            frames=FrameConfig(frames=8),
            batch_size=b,
        )
        for label, tokens in (("answer", 16), ("prefill", 1)):
            cfg = dataclasses.replace(base, gen=GenConfig(max_new_tokens=tokens))
            list(answer_rows(cfg, backend, rows[: max(b, 5)]))  # warm-up
            _sync()
            t0 = time.perf_counter()
            list(answer_rows(cfg, backend, rows))
            _sync()
            dt = time.perf_counter() - t0
            if label == "answer":
                out["questions_per_second"][str(b)] = len(rows) / dt
            else:
                flops = _prefill_flops(backend, rows, root, p_lm, p_vis)
                out["prefill_tflops"][str(b)] = flops / dt / 1e12
                out["prefill_mfu"][str(b)] = flops / dt / 1e12 / peak if peak else None
    return out


def _prefill_flops(
    backend: TransformersBackend, rows: list[dict], root: Path, p_lm: int, p_vis: int
) -> float:
    """2 * P * tokens over what the shared-prefix path really computes: one prefix per clip + the suffixes."""
    cfg = EvalConfig(
        data="-", out="-", model=ModelSpec(backend.model_id), root=str(root), frames=FrameConfig(frames=8)
    )
    answerer = Answerer(cfg, backend)
    sizes = [backend.prefill_size(answerer.prepare(batch).prepared) for batch in batches_of(cfg, rows)]
    return 2.0 * p_lm * sum(s.tokens for s in sizes) + 2.0 * p_vis * sum(s.patches for s in sizes)


def bench_decode(
    backend: TransformersBackend, root: Path, rows: list[dict], batch: int = 32, tokens: int = 64
) -> dict:
    cfg = EvalConfig(
        data="-",
        out="-",
        model=ModelSpec(backend.model_id),
        root=str(root),
        frames=FrameConfig(frames=8),
        batch_size=batch,
        gen=GenConfig(max_new_tokens=tokens),
    )
    list(answer_rows(dataclasses.replace(cfg, gen=GenConfig(max_new_tokens=2)), backend, rows[:batch]))
    _sync()
    t0 = time.perf_counter()
    answers = [a for _, a in answer_rows(cfg, backend, rows)]
    _sync()
    n = sum(len(backend.processor.tokenizer(a.text)["input_ids"]) for a in answers)
    return {"decode_tokens_per_second": n / (time.perf_counter() - t0), "batch": batch}


def bench_train(model_dir: Path, root: Path, method: str, batch: int, steps: int, peak: float | None) -> dict:
    """LoRA / QLoRA r16 for `steps` optimizer steps (after 2 warm-up steps): samples/s, MFU, peak memory."""

    def trainer(n: int) -> Trainer:
        return Trainer(
            TrainConfig(
                data=str(root / "train.jsonl"),
                out=tempfile.mkdtemp(prefix=f"bench-{method}-"),
                model=CheckpointSpec(str(model_dir)),
                root=str(root),
                frames=FrameConfig(frames=8),
                method=method,
                batch_size=batch,
                grad_accum=1,
                max_steps=n,
                save_every=0,
                report_to="none",
                grad_checkpointing=True,
            )
        )

    trainer(2).run()  # warm-up: kernels, allocator
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t = trainer(steps)
    p_lm, _ = params(t.unwrapped)
    sample = t.collate([t.dataset[i] for i in range(batch)])
    tokens = int(sample["attention_mask"].sum())  # per step, at this batch
    _sync()
    t0 = time.perf_counter()
    t.run()
    _sync()
    per_step = (time.perf_counter() - t0) / steps
    flops = 6.0 * p_lm * tokens
    return {
        "method": method,
        "batch": batch,
        "samples_per_second": batch / per_step,
        "mfu": flops / per_step / 1e12 / peak if peak else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
    }


def run(
    shape: str = "tiny", out: Path | None = None, sizes: tuple[int, ...] = (1, 4, 16, 32, 64), steps: int = 5
) -> dict:
    """Every GPU row for `shape`; writes gpu-<shape>.json and .md under `out`."""
    peak = peak_tflops()
    results: dict[str, Any] = {"environment": {**environment(), "shape": shape, "peak_bf16_tflops": peak}}
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        model_dir = build_shape(shape, work)
        root, rows = eval_rows(work, 224 if shape != "tiny" else 112)
        backend = load_backend(ModelSpec(str(model_dir)))
        results["eval"] = bench_eval(backend, root, rows, sizes, peak)
        results["decode"] = bench_decode(backend, root, rows)
        del backend
        results["train_lora"] = bench_train(model_dir, root, "lora", 4, steps, peak)
        results["train_qlora"] = bench_train(model_dir, root, "qlora", 4, steps, peak)
    if out:
        atomic_write(out / f"gpu-{shape}.json", json.dumps(results, indent=2) + "\n")
        atomic_write(out / f"gpu-{shape}.md", markdown(results))
    return results


def _f(v: Any) -> str:
    return "—" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)


def _row(*cells: Any) -> str:
    return "| " + " | ".join(_f(c) for c in cells) + " |"


def markdown(r: dict) -> str:
    e, ev = r["environment"], r["eval"]
    lines = [
        f"shape {e['shape']}, {e.get('cuda') or 'CPU'}, bf16 peak {_f(e['peak_bf16_tflops'])} TFLOP/s",
        "",
        "| batch | questions/s | prefill TFLOP/s | prefill MFU |",
        "|---|---|---|---|",
    ]
    lines += [
        _row(b, ev["questions_per_second"][b], ev["prefill_tflops"][b], ev["prefill_mfu"][b])
        for b in ev["questions_per_second"]
    ]
    lines += [
        "",
        f"decode: {_f(r['decode']['decode_tokens_per_second'])} tokens/s at batch {r['decode']['batch']}",
        "",
        "| training | batch | samples/s | MFU | peak memory (GiB) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        _row(f"{t['method']} r16", t["batch"], t["samples_per_second"], t["mfu"], t["peak_memory_gib"])
        for t in (r["train_lora"], r["train_qlora"])
    ]
    return "\n".join(lines) + "\n"
