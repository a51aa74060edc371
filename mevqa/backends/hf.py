"""In-process transformers backend: any HF image-text-to-text model, optionally with a LoRA adapter."""

from __future__ import annotations

import functools
import logging
import os
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


def video_kwargs(videos: list[VideoPart]) -> dict[str, Any]:
    """Frames plus metadata saying they were sampled at `fps` (the frames are already selected)."""
    if not videos:
        return {}
    meta = [
        VideoMetadata(total_num_frames=len(v.frames), fps=v.fps, frames_indices=list(range(len(v.frames))))
        for v in videos
    ]
    return {"videos": [list(v.frames) for v in videos], "video_metadata": meta, "do_sample_frames": False}


def _visual_key(r: VQARequest) -> tuple:
    """Requests with the same key show the model the same image objects after the same turns."""
    *history, last = r.messages
    visuals = tuple(id(p) for p in last.parts if not isinstance(p, str))
    return (tuple(history), last.role, visuals) if visuals else (id(r),)


class TransformersBackend:
    """Batched greedy generation with `model.generate`; left padding, one batch per `gen.batch_size`."""

    name = "transformers"

    def __init__(
        self,
        model: torch.nn.Module,
        processor: ProcessorMixin,
        model_id: str = "",
        adapter: str | None = None,
        share_prefix: bool = True,
    ):
        self.model, self.processor = model, processor
        self.model_id, self.adapter = model_id, adapter
        self.share_prefix = share_prefix  # prefill a clip's images once for all its questions

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

    def _render(self, r: VQARequest) -> tuple[str, list, list[VideoPart]]:
        chat, imgs, vids = to_hf(list(r.messages))
        text = self.processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        return text, imgs, vids

    def _process(self, texts: list[str], images: list[list], videos: list[VideoPart]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
        if any(images):
            kwargs["images"] = images
        if videos and getattr(self.processor, "video_processor", None) is None:
            raise ModelError(f"--model {self.model_id} — its processor takes images only; use --input frames")
        kwargs.update(video_kwargs(videos))
        return self.processor(**kwargs).to(self.device)

    def encode(self, requests: list[VQARequest]) -> dict[str, Any]:
        """Processor outputs for a batch (chat template + images/videos), on the model's device."""
        rendered = [self._render(r) for r in requests]
        return self._process(
            [t for t, _, _ in rendered], [i for _, i, _ in rendered], [v for _, _, vs in rendered for v in vs]
        )

    def _sampling(self, gen: GenConfig) -> dict[str, Any]:
        return {"do_sample": True, "temperature": gen.temperature} if gen.do_sample else {"do_sample": False}

    @torch.inference_mode()
    def _generate_batch(self, requests: list[VQARequest], gen: GenConfig) -> list[str]:
        inputs = self.encode(requests)
        out = self.model.generate(**inputs, max_new_tokens=gen.max_new_tokens, **self._sampling(gen))
        return self._decode(out[:, inputs["input_ids"].shape[1] :])

    def _decode(self, new_tokens: torch.Tensor) -> list[str]:
        return [t.strip() for t in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]

    # ------------------------------------------------------------ shared visual prefix
    @functools.cached_property
    def _boundary_tokens(self) -> list[str]:
        """Special/added token strings: a cut right after one tokenizes the same split or joined."""
        return sorted(self.processor.tokenizer.get_added_vocab(), key=len, reverse=True)

    def _split_point(self, texts: list[str]) -> int:
        common = os.path.commonprefix(texts)
        return max((common.rfind(t) + len(t) for t in self._boundary_tokens if t in common), default=0)

    @torch.inference_mode()
    def _generate_shared(self, requests: list[VQARequest], gen: GenConfig) -> list[str]:
        """Questions about the same frames: encode the images and prefill the prompt prefix once.

        The prefix (system turn, every image, up to the question) runs through the model once; its KV
        cache is repeated for the K questions, whose suffixes are left-padded *after* the prefix (masked),
        so the vision tower and the long multimodal prefill run once instead of K times.
        """
        rendered = [self._render(r) for r in requests]
        texts = [t for t, _, _ in rendered]
        cut = self._split_point(texts)
        prefix = self._process([texts[0][:cut]], [rendered[0][1]], rendered[0][2])
        cache = self.model(**prefix, use_cache=True).past_key_values
        tok = self.processor.tokenizer
        suffixes = [tok(t[cut:], add_special_tokens=False)["input_ids"] for t in texts]
        k, p, s = len(requests), prefix["input_ids"].shape[1], max(map(len, suffixes))
        ids = torch.full((k, p + s), tok.pad_token_id, dtype=torch.long, device=self.device)
        mask = torch.zeros((k, p + s), dtype=torch.long, device=self.device)
        ids[:, :p], mask[:, :p] = prefix["input_ids"], prefix["attention_mask"]
        for i, suf in enumerate(suffixes):
            ids[i, p + s - len(suf) :] = torch.tensor(suf, device=self.device)
            mask[i, p + s - len(suf) :] = 1
        cache.batch_repeat_interleave(k)
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            past_key_values=cache,
            max_new_tokens=gen.max_new_tokens,
            **self._sampling(gen),
        )
        return self._decode(out[:, p + s :])

    def _texts(self, batch: list[VQARequest], gen: GenConfig) -> list[str]:
        """Group the batch by shared visual input; groups of 2+ take the shared-prefix path."""
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(batch):
            groups.setdefault(_visual_key(r) if self.share_prefix else (i,), []).append(i)
        texts: list[str] = [""] * len(batch)
        singles = [ix[0] for ix in groups.values() if len(ix) == 1]
        for ix in groups.values():
            if len(ix) > 1:
                for i, t in zip(ix, self._generate_shared([batch[i] for i in ix], gen)):
                    texts[i] = t
        if singles:
            for i, t in zip(singles, self._generate_batch([batch[i] for i in singles], gen)):
                texts[i] = t
        return texts

    def generate(self, requests: list[VQARequest], gen: GenConfig) -> list[Answer]:
        answers: list[Answer] = []
        for i in range(0, len(requests), max(1, gen.batch_size)):
            batch = requests[i : i + gen.batch_size]
            t0 = time.perf_counter()
            try:
                texts = self._texts(batch, gen)
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

    def stream(self, request: VQARequest, gen: GenConfig):
        """Yield the answer as it grows, token by token (for chat UIs)."""
        import threading

        from transformers import TextIteratorStreamer

        inputs = self.encode([request])
        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = {**inputs, "max_new_tokens": gen.max_new_tokens, "streamer": streamer, **self._sampling(gen)}
        thread = threading.Thread(target=lambda: self._no_grad_generate(kwargs), daemon=True)
        thread.start()
        text = ""
        for piece in streamer:
            text += piece
            yield text.strip()
        thread.join()

    @torch.inference_mode()
    def _no_grad_generate(self, kwargs: dict) -> None:
        self.model.generate(**kwargs)
