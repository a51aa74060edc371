"""In-process transformers backend: any HF image-text-to-text model, optionally with a LoRA adapter."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from transformers import ProcessorMixin
from transformers.video_utils import VideoMetadata

from mevqa.backends.base import Answer, VQARequest
from mevqa.config import GenConfig
from mevqa.errors import ModelError
from mevqa.models.loading import attach_adapter, load_model, load_processor
from mevqa.prompts import VideoPart, to_hf

log = logging.getLogger(__name__)


def _video_kwargs(videos: list[VideoPart]) -> dict[str, Any]:
    """Frames plus metadata saying they were sampled at `fps` (the frames are already selected)."""
    if not videos:
        return {}
    meta = [
        VideoMetadata(total_num_frames=len(v.frames), fps=v.fps, frames_indices=list(range(len(v.frames))))
        for v in videos
    ]
    return {"videos": [list(v.frames) for v in videos], "video_metadata": meta, "do_sample_frames": False}


class TransformersBackend:
    """Batched greedy generation with `model.generate`; left padding, one batch per `gen.batch_size`."""

    name = "transformers"

    def __init__(
        self,
        model: torch.nn.Module,
        processor: ProcessorMixin,
        model_id: str = "",
        adapter: str | None = None,
    ):
        self.model, self.processor = model, processor
        self.model_id, self.adapter = model_id, adapter

    @classmethod
    def from_config(
        cls,
        model: str,
        adapter: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        trust_remote_code: bool = False,
        **_: Any,
    ) -> TransformersBackend:
        processor = load_processor(model, trust_remote_code)
        m = load_model(model, device, dtype, trust_remote_code)
        if adapter:
            m = attach_adapter(m, adapter, model)
        return cls(m, processor, model_id=model, adapter=adapter)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, requests: list[VQARequest]) -> dict[str, Any]:
        """Processor outputs for a batch (chat template + images/videos), on the model's device."""
        texts, images, videos = [], [], []
        for r in requests:
            chat, imgs, vids = to_hf(list(r.messages))
            texts.append(self.processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False))
            images.append(imgs)
            videos.extend(vids)
        kwargs: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
        if any(images):
            kwargs["images"] = images
        if videos and getattr(self.processor, "video_processor", None) is None:
            raise ModelError(f"--model {self.model_id} — its processor takes images only; use --input frames")
        kwargs.update(_video_kwargs(videos))
        return self.processor(**kwargs).to(self.device)

    @torch.inference_mode()
    def _generate_batch(self, requests: list[VQARequest], gen: GenConfig) -> list[str]:
        inputs = self.encode(requests)
        sampling = (
            {"do_sample": True, "temperature": gen.temperature} if gen.do_sample else {"do_sample": False}
        )
        out = self.model.generate(**inputs, max_new_tokens=gen.max_new_tokens, **sampling)
        new = out[:, inputs["input_ids"].shape[1] :]
        return [t.strip() for t in self.processor.batch_decode(new, skip_special_tokens=True)]

    def generate(self, requests: list[VQARequest], gen: GenConfig) -> list[Answer]:
        answers: list[Answer] = []
        for i in range(0, len(requests), max(1, gen.batch_size)):
            batch = requests[i : i + gen.batch_size]
            t0 = time.perf_counter()
            try:
                texts = self._generate_batch(batch, gen)
            except (ValueError, RuntimeError, IndexError) as e:
                if len(batch) > 1:  # isolate the request that failed; the others still get answers
                    answers += [a for r in batch for a in self.generate([r], gen)]
                    continue
                log.warning("request %s failed: %s", batch[0].id, e)
                answers.append(Answer(batch[0].id, "", error=f"{type(e).__name__}: {e}"[:300]))
                continue
            dt = (time.perf_counter() - t0) / len(batch)
            answers += [Answer(r.id, t, seconds=dt) for r, t in zip(batch, texts)]
        return answers
