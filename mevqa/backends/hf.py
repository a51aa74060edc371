"""In-process transformers backend: any HF image-text-to-text model, optionally with a LoRA adapter.

`prepare` is the CPU half (chat template, image processor, tokenizer), `run` the model half, so the eval
runner can prepare the next batch while this one generates. Questions about the same clip share their
visual prefix: the images and the prompt up to the question are prefilled once.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers
from transformers import DynamicCache, ProcessorMixin, TextIteratorStreamer

from mevqa.backends.base import Answer, Backend, VQARequest, oom_error, out_of_memory
from mevqa.config import GenConfig, ModelSpec, ServerSpec, VLLMSpec
from mevqa.errors import ModelError
from mevqa.models import families
from mevqa.models.adapters import attach_adapter
from mevqa.models.loading import load_model, load_processor
from mevqa.prompts import VideoPart, to_hf, video_kwargs

log = logging.getLogger(__name__)
# transformers 5.24 renamed generate's `past_key_values` to `cache` (the old name goes in 6.0)
CACHE_KW = (
    "cache" if "cache" in getattr(transformers.generation.utils, "ALL_CACHE_NAMES", ()) else "past_key_values"
)


def _visual_key(r: VQARequest) -> tuple:
    """Requests with the same key show the model the same image objects after the same turns."""
    *history, last = r.messages
    visuals = tuple(id(p) for p in last.parts if not isinstance(p, str))
    return (tuple(history), last.role, visuals) if visuals else (id(r),)


@dataclass
class Job:
    """One model call: `rows` are positions in the (sample-expanded) batch it answers.

    `inputs` are processor outputs (plain job) or the shared prefix's (shared job, with `suffixes`: the
    token ids of each question after the prefix)."""

    rows: list[int]
    inputs: dict[str, Any]
    suffixes: list[list[int]] = field(default_factory=list)


@dataclass
class Prepared:
    requests: list[VQARequest]
    samples: int
    jobs: list[Job]


def _stack(caches: list[Any], repeats: list[int], length: int) -> Any:
    """Per-clip KV caches as one: each left-padded (zeros, masked) to `length` and repeated per question."""

    def pad(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, 0, length - t.shape[-2], 0))

    layers = []
    for per_clip in zip(*(c.layers for c in caches)):
        keys = torch.cat([pad(x.keys).repeat_interleave(k, 0) for x, k in zip(per_clip, repeats)])
        values = torch.cat([pad(x.values).repeat_interleave(k, 0) for x, k in zip(per_clip, repeats)])
        layers.append((keys, values))
    return DynamicCache(ddp_cache_data=layers)


class TransformersBackend(Backend):
    """Batched generation with `model.generate`; left padding; one clip's questions share its prefix."""

    name = "transformers"

    def __init__(
        self,
        model: torch.nn.Module,
        processor: ProcessorMixin,
        model_id: str = "",
        adapter: str | None = None,
        share_prefix: bool = True,
        cross_clip: bool = True,
    ):
        self.model, self.processor = model, processor
        self.model_id, self.adapter = model_id, adapter
        self.share_prefix = share_prefix  # prefill a clip's images once for all its questions
        self.cross_clip = cross_clip  # decode several clips' questions together (False: a call per clip)
        # an architecture outside the table, or one with recurrent layers, answers by the plain path
        self.family = families.for_model_type(getattr(model.config, "model_type", ""))
        if self.family is None:
            log.info("%s: not in mevqa's family table; questions do not share their prefix", model_id)

    @classmethod
    def from_config(cls, model: ModelSpec, server: ServerSpec, engine: VLLMSpec) -> TransformersBackend:
        processor = load_processor(model.model, model.trust_remote_code)
        m = load_model(model)
        if model.adapter:
            m = attach_adapter(m, model.adapter, model.model)
        return cls(m, processor, model_id=model.model, adapter=model.adapter)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------ CPU half
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
        return dict(self.processor(**kwargs))

    def encode(self, requests: list[VQARequest]) -> dict[str, Any]:
        """Processor outputs for a batch (chat template + images/videos), on the CPU."""
        rendered = [self._render(r) for r in requests]
        return self._process(
            [t for t, _, _ in rendered], [i for _, i, _ in rendered], [v for _, _, vs in rendered for v in vs]
        )

    @functools.cached_property
    def _boundary_tokens(self) -> list[str]:
        """Special/added token strings: a cut right after one tokenizes the same split or joined."""
        return sorted(self.processor.tokenizer.get_added_vocab(), key=len, reverse=True)

    def _split_point(self, texts: list[str]) -> int:
        common = os.path.commonprefix(texts)
        return max((common.rfind(t) + len(t) for t in self._boundary_tokens if t in common), default=0)

    def _shared_job(self, rows: list[int], requests: list[VQARequest]) -> Job:
        rendered = [self._render(r) for r in requests]
        texts = [t for t, _, _ in rendered]
        cut = self._split_point(texts)
        prefix = self._process([texts[0][:cut]], [rendered[0][1]], rendered[0][2])
        tok = self.processor.tokenizer
        return Job(rows, prefix, [tok(t[cut:], add_special_tokens=False)["input_ids"] for t in texts])

    def prepare(self, requests: list[VQARequest], gen: GenConfig) -> Prepared:
        """Render and process the batch: a job per clip whose questions share the prefix, one for the rest."""
        expanded = [r for r in requests for _ in range(gen.samples)]
        groups: dict[tuple, list[int]] = {}
        share = self.share_prefix and self.family is not None and self.family.shared_prefix
        for i, r in enumerate(expanded):
            groups.setdefault(_visual_key(r) if share else (i,), []).append(i)
        jobs = [self._shared_job(ix, [expanded[i] for i in ix]) for ix in groups.values() if len(ix) > 1]
        singles = [ix[0] for ix in groups.values() if len(ix) == 1]
        if singles:
            jobs.append(Job(singles, self.encode([expanded[i] for i in singles])))
        return Prepared(requests, gen.samples, jobs)

    # ------------------------------------------------------------ model half
    def _sampling(self, gen: GenConfig) -> dict[str, Any]:
        if gen.sampling:
            return {"do_sample": True, "temperature": gen.temperature, "top_p": gen.top_p}
        return {"do_sample": False}

    def _decode(self, new_tokens: torch.Tensor) -> list[str]:
        return [t.strip() for t in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]

    def _to_device(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}

    @torch.inference_mode()
    def _run_plain(self, job: Job, gen: GenConfig) -> list[str]:
        inputs = self._to_device(job.inputs)
        out = self.model.generate(**inputs, max_new_tokens=gen.max_new_tokens, **self._sampling(gen))
        return self._decode(out[:, inputs["input_ids"].shape[1] :])

    def _rope_holder(self) -> Any:
        """The module keeping Qwen2-VL-style multimodal RoPE offsets (`rope_deltas`), if the family has it."""
        if self.family is None or self.family.rope_deltas is None:
            return None
        # under a PEFT wrapper the table's path starts at the wrapped ...ForConditionalGeneration
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return base.get_submodule(self.family.rope_deltas)

    @torch.inference_mode()
    def _run_shared(self, jobs: list[Job], gen: GenConfig) -> list[list[str]]:
        """Several clips' questions in one decode, each clip's visual prefix computed once.

        Each clip's prefix (system turn, every image, up to the question) is prefilled on its own, so the
        vision tower and the long multimodal prefill run once per clip instead of once per question. The
        caches are left-padded to one length and stacked, one row per question; each question's suffix is
        left-padded *after* its prefix (masked). Positions come from the mask, so padding shifts nothing;
        for Qwen2-VL-style RoPE each row also gets its own clip's offset.
        """
        prefixes, caches, deltas = [], [], []
        holder = self._rope_holder()
        for job in jobs:
            prefixes.append(self._to_device(job.inputs))
            caches.append(getattr(self.model(**prefixes[-1], use_cache=True), CACHE_KW))
            deltas.append(holder.rope_deltas if holder is not None else None)
        ks = [len(j.suffixes) for j in jobs]
        p, s = max(x["input_ids"].shape[1] for x in prefixes), max(len(x) for j in jobs for x in j.suffixes)
        ids = torch.full(
            (sum(ks), p + s), self.processor.tokenizer.pad_token_id, dtype=torch.long, device=self.device
        )
        mask = torch.zeros_like(ids)
        row = 0
        for prefix, job in zip(prefixes, jobs):
            n = prefix["input_ids"].shape[1]
            ids[row : row + len(job.suffixes), p - n : p] = prefix["input_ids"]
            mask[row : row + len(job.suffixes), p - n : p] = prefix["attention_mask"]
            for suf in job.suffixes:
                ids[row, p + s - len(suf) :] = torch.tensor(suf, device=self.device)
                mask[row, p + s - len(suf) :] = 1
                row += 1
        cache = _stack(caches, ks, p)
        if holder is not None and deltas[0] is not None:
            holder.rope_deltas = torch.cat([d.repeat(k, 1) for d, k in zip(deltas, ks)])
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=gen.max_new_tokens,
            **{CACHE_KW: cache},
            **self._sampling(gen),
        )
        texts = self._decode(out[:, p + s :])
        return [texts[sum(ks[:i]) : sum(ks[: i + 1])] for i in range(len(jobs))]

    def run(self, prepared: Prepared, gen: GenConfig) -> list[Answer]:
        """Generate every job; a request that fails gets an error answer, the others still get theirs."""
        t0 = time.perf_counter()
        if prepared.requests and prepared.requests[0].seed is not None:
            torch.manual_seed(prepared.requests[0].seed)  # sampled answers are reproducible per batch
        texts: list[str] = [""] * (len(prepared.requests) * prepared.samples)
        shared = [j for j in prepared.jobs if j.suffixes]
        try:
            groups = [shared] if self.cross_clip else [[j] for j in shared]
            results = [r for g in groups if g for r in zip(g, self._run_shared(g, gen))]
            results += [(j, self._run_plain(j, gen)) for j in prepared.jobs if not j.suffixes]
            for job, answers in results:
                for i, t in zip(job.rows, answers):
                    texts[i] = t
        except (ValueError, RuntimeError, MemoryError) as e:
            if out_of_memory(e):
                raise oom_error(len(prepared.requests)) from None
            if len(prepared.requests) == 1:
                log.warning("request %s failed: %s", prepared.requests[0].id, e)
                return [Answer(prepared.requests[0].id, "", error=f"{type(e).__name__}: {e}"[:300])]
            return [a for r in prepared.requests for a in self.generate([r], gen)]  # isolate the failure
        dt = (time.perf_counter() - t0) / max(1, len(prepared.requests))
        n = prepared.samples
        return [
            Answer(r.id, texts[i * n], seconds=dt, samples=tuple(texts[i * n : (i + 1) * n]) if n > 1 else ())
            for i, r in enumerate(prepared.requests)
        ]

    def generate(self, requests: list[VQARequest], gen: GenConfig) -> list[Answer]:
        return self.run(self.prepare(requests, gen), gen) if requests else []

    def stream(self, request: VQARequest, gen: GenConfig) -> Iterator[str]:
        """Yield the answer as it grows, token by token (for chat UIs).

        A generation error ends the stream and is raised here as one line (ModelError); closing this
        generator early (the app's client left) stops the generation at its next token."""
        inputs = self._to_device(self.encode([request]))
        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop, failed = threading.Event(), []
        kwargs = {**inputs, "max_new_tokens": gen.max_new_tokens, "streamer": streamer, **self._sampling(gen)}
        kwargs["stopping_criteria"] = transformers.StoppingCriteriaList([_Stopped(stop)])
        args = (kwargs, streamer, failed)
        thread = threading.Thread(target=self._stream_generate, args=args, daemon=True, name="mevqa-stream")
        thread.start()
        text = ""
        try:
            for piece in streamer:
                text += piece
                yield text.strip()
        finally:
            stop.set()  # also when closed early; the closer (Gradio's event loop) must not wait for the model
        thread.join()
        if failed:
            raise ModelError(f"generation — the model failed while answering: {failed[0]}")

    @torch.inference_mode()
    def _stream_generate(self, kwargs: dict, streamer: TextIteratorStreamer, failed: list[str]) -> None:
        try:
            self.model.generate(**kwargs)
        except Exception as e:  # the stream must end, or its reader (and the app's model queue) waits forever
            lines = str(e).strip().splitlines()
            failed.append(f"{type(e).__name__}: {lines[0][:200] if lines else ''}")
            streamer.end()


class _Stopped(transformers.StoppingCriteria):
    """Stops a streamed generation once its reader is gone."""

    def __init__(self, stop: threading.Event):
        self.stop = stop

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.BoolTensor:
        done = self.stop.is_set()
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)
