"""Offline vLLM backend: `vllm.LLM` in this process, LoRA adapters as `LoRARequest`s.

vLLM needs a GPU and its own torch build, so it is imported only when this backend is chosen; importing
mevqa never needs it. Prompts come from the same `Message` type and the model's own chat template
(through its HF processor), so they match the transformers and OpenAI backends token for token.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from mevqa.backends.base import Answer, VQARequest
from mevqa.config import GenConfig
from mevqa.errors import MissingDependency
from mevqa.prompts import VideoPart, to_hf

log = logging.getLogger(__name__)


def _vllm() -> Any:
    try:
        import vllm
        from vllm.lora.request import LoRARequest
    except ImportError:
        raise MissingDependency(
            "--backend vllm — vLLM is not installed (it needs a CUDA GPU): "
            "pip install 'mevqa[vllm]', or serve with vLLM and use --backend openai"
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


class VLLMBackend:
    name = "vllm"

    def __init__(self, llm: Any, processor: Any, model_id: str, lora_request: Any = None):
        self.llm, self.processor, self.model_id, self.lora = llm, processor, model_id, lora_request

    @classmethod
    def from_config(
        cls,
        model: str,
        adapter: str | None = None,
        tensor_parallel_size: int = 1,
        max_images: int = 16,
        max_lora_rank: int | None = None,
        gpu_memory_utilization: float = 0.9,
        trust_remote_code: bool = False,
        **_: Any,
    ) -> VLLMBackend:
        vllm, LoRARequest = _vllm()
        from mevqa.models.loading import load_processor
        from mevqa.serve import vllm_lora_rank
        from mevqa.train.adapters import adapter_rank

        kwargs: dict[str, Any] = {
            "model": model,
            "tensor_parallel_size": tensor_parallel_size,
            "limit_mm_per_prompt": {"image": max_images, "video": 1},
            "gpu_memory_utilization": gpu_memory_utilization,
            "trust_remote_code": trust_remote_code,
        }
        lora = None
        if adapter:
            rank = max_lora_rank or vllm_lora_rank(adapter_rank(adapter) or 16)
            kwargs.update(enable_lora=True, max_lora_rank=rank, max_loras=1)
            lora = LoRARequest(adapter.rstrip("/").rsplit("/", 1)[-1], 1, adapter)
        return cls(vllm.LLM(**kwargs), load_processor(model, trust_remote_code), model, lora)

    def prompt(self, r: VQARequest) -> dict[str, Any]:
        chat, images, videos = to_hf(list(r.messages))
        text = self.processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        data, mm_kwargs = multi_modal_data(images, videos)
        p: dict[str, Any] = {"prompt": text}
        if data:
            p["multi_modal_data"] = data
        if mm_kwargs:
            p["mm_processor_kwargs"] = mm_kwargs
        return p

    def generate(self, requests: list[VQARequest], gen: GenConfig) -> list[Answer]:
        vllm, _ = _vllm()
        params = vllm.SamplingParams(
            max_tokens=gen.max_new_tokens, temperature=gen.temperature if gen.do_sample else 0
        )
        outputs = self.llm.generate([self.prompt(r) for r in requests], params, lora_request=self.lora)
        return [Answer(r.id, o.outputs[0].text.strip()) for r, o in zip(requests, outputs)]
