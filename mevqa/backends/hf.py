"""In-process transformers backend: any HF image-text-to-text model, optionally with a LoRA adapter.

`prepare` is the CPU half (chat template, image processor, tokenizer), `run` the model half, so the eval
runner can prepare the next batch while this one generates. Questions with the same `prefix_key` (the same
clip) share their visual prefix, prefilled once, and several clips' questions decode in one call
(`prefix_batch.py`). Sampling draws each row from a generator of its own, seeded by its request, so a
sampled answer does not depend on the batch it lands in, and torch's global RNG is never touched (training
that scores held-out questions keeps its dropout draws).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
import transformers
from transformers import ProcessorMixin, TextIteratorStreamer

from mevqa.backends import prefix_batch
from mevqa.backends.base import Answer, Backend, Prepared, VQARequest, oom_error, out_of_memory
from mevqa.backends.prefix_batch import Job
from mevqa.config import GenConfig, ModelSpec, ServerSpec, VLLMSpec
from mevqa.errors import ModelError
from mevqa.models import families
from mevqa.models.adapters import attach_adapter, merges_exactly
from mevqa.models.loading import load_model, load_processor
from mevqa.prompts import VideoPart, to_hf, video_kwargs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannedBatch(Prepared):
    """A prepared batch: its requests, each repeated `samples` times as rows, answered by `jobs`."""

    samples: int
    jobs: list[Job]

    def row_seeds(self, rows: list[int]) -> list[int | None]:
        """The sampling seed of each row: its request's seed, plus the sample's index."""
        seeds = [self.requests[i // self.samples].seed for i in rows]
        return [None if s is None else s + i % self.samples for s, i in zip(seeds, rows)]


@dataclass(frozen=True)
class PrefillSize:
    """What the model computes before decoding a prepared batch: prompt tokens and vision patches."""

    tokens: int
    patches: int


class TransformersBackend(Backend[PlannedBatch]):
    """Batched generation with `model.generate`, left-padded; requests with the same `prefix_key` share
    their prefix, prefilled once."""

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
            if merges_exactly(m):
                m = m.merge_and_unload()
        return cls(m, processor, model_id=model.model, adapter=model.adapter)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------ CPU half
    @property
    def template_kwargs(self) -> dict[str, Any]:
        """The family's chat-template variables (Qwen3.5: no thinking); none outside the table."""
        return dict(self.family.chat_template_kwargs) if self.family is not None else {}

    def _render(self, r: VQARequest) -> tuple[str, list, list[VideoPart]]:
        chat, imgs, vids = to_hf(list(r.messages))
        text = self.processor.apply_chat_template(
            chat, add_generation_prompt=True, tokenize=False, **self.template_kwargs
        )
        return text, imgs, vids

    def _process(self, texts: list[str], images: list[list], videos: list[VideoPart]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
        if any(images):
            kwargs["images"] = images
        if videos and getattr(self.processor, "video_processor", None) is None:
            raise ModelError(
                f"model.model {self.model_id} — its processor takes images only; set `frames.input` to frames"
            )
        kwargs.update(video_kwargs(videos))
        return dict(self.processor(**kwargs))

    def encode(self, requests: list[VQARequest]) -> dict[str, Any]:
        """Processor outputs for a batch (chat template + images/videos), on the CPU."""
        rendered = [self._render(r) for r in requests]
        return self._process(
            [t for t, _, _ in rendered], [i for _, i, _ in rendered], [v for _, _, vs in rendered for v in vs]
        )

    @cached_property
    def _boundary_tokens(self) -> list[str]:
        """Special/added token strings: a cut right after one tokenizes the same split or joined."""
        return sorted(self.processor.tokenizer.get_added_vocab(), key=len, reverse=True)

    def _shared_job(self, rows: list[int], requests: list[VQARequest]) -> Job:
        """The prefix the requests share (the first one's images), processed once, and each suffix's ids."""
        rendered = [self._render(r) for r in requests]
        texts = [t for t, _, _ in rendered]
        at = prefix_batch.cut(texts, self._boundary_tokens)
        prefix = self._process([texts[0][:at]], [rendered[0][1]], rendered[0][2])
        tok = self.processor.tokenizer
        return Job(rows, prefix, [tok(t[at:], add_special_tokens=False)["input_ids"] for t in texts])

    @property
    def shares_prefix(self) -> bool:
        """Whether requests with the same `prefix_key` are prefilled once (the family's cache allows it)."""
        return self.share_prefix and self.family is not None and self.family.shared_prefix

    def prepare(self, requests: list[VQARequest], gen: GenConfig) -> PlannedBatch:
        """Render and process the batch: a job per clip whose questions share the prefix, one for the rest."""
        n = gen.samples
        expanded = [r for r in requests for _ in range(n)]
        jobs = [
            self._shared_job(list(g.rows), [expanded[i] for i in g.rows])
            if g.shared
            else Job(list(g.rows), self.encode([expanded[i] for i in g.rows]))
            for g in prefix_batch.plan(requests, n, self.shares_prefix)
        ]
        return PlannedBatch(requests, n, jobs)

    def prefill_size(self, prepared: PlannedBatch) -> PrefillSize:
        """The prompt tokens (a shared prefix counted once) and vision patches the model computes for a
        prepared batch, before its first new token (`bench gpu`'s FLOP count)."""
        patches = sum(j.inputs["pixel_values"].shape[0] for j in prepared.jobs if "pixel_values" in j.inputs)
        return PrefillSize(sum(j.tokens for j in prepared.jobs), patches)

    # ------------------------------------------------------------ model half
    def _sampling(self, gen: GenConfig, seeds: list[int | None]) -> dict[str, Any]:
        """generate's decoding arguments. Sampling is a logits processor that draws each row's token from
        its own generator; generate then takes that token greedily, and its own RNG use (the global one)
        never happens."""
        if not gen.sampling:
            return {"do_sample": False}
        sampler = RowSampler(seeds, gen.temperature, gen.top_p)
        return {"do_sample": False, "logits_processor": transformers.LogitsProcessorList([sampler])}

    def _decode(self, new_tokens: torch.Tensor) -> list[str]:
        return [t.strip() for t in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]

    def _to_device(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}

    @torch.inference_mode()
    def _run_plain(self, job: Job, gen: GenConfig, seeds: list[int | None]) -> list[str]:
        inputs = self._to_device(job.inputs)
        out = self.model.generate(**inputs, max_new_tokens=gen.max_new_tokens, **self._sampling(gen, seeds))
        return self._decode(out[:, inputs["input_ids"].shape[1] :])

    def _run_shared(self, jobs: list[Job], gen: GenConfig, seeds: list[int | None]) -> list[list[str]]:
        """Several clips' questions in one decode, each clip's prefix prefilled once (`prefix_batch`)."""
        new = prefix_batch.generate_shared(
            self.model,
            jobs,
            self.processor.tokenizer.pad_token_id,
            self.family.rope_deltas if self.family is not None else None,
            max_new_tokens=gen.max_new_tokens,
            **self._sampling(gen, seeds),
        )
        texts, out = self._decode(new), []
        for job in jobs:
            out.append(texts[: len(job.rows)])
            texts = texts[len(job.rows) :]
        return out

    def _texts(self, prepared: PlannedBatch, gen: GenConfig) -> list[str]:
        """Every row's answer: the shared jobs in one decode (one per clip without cross-clip batching),
        then the plain job."""
        shared = [j for j in prepared.jobs if j.shared]
        calls = [shared] if self.cross_clip else [[j] for j in shared]
        results = []
        for jobs in (c for c in calls if c):
            seeds = prepared.row_seeds([i for j in jobs for i in j.rows])
            results += zip(jobs, self._run_shared(jobs, gen, seeds))
        for job in (j for j in prepared.jobs if not j.shared):
            results.append((job, self._run_plain(job, gen, prepared.row_seeds(job.rows))))
        texts = [""] * (len(prepared.requests) * prepared.samples)
        for job, answers in results:
            for i, t in zip(job.rows, answers):
                texts[i] = t
        return texts

    def run(self, prepared: PlannedBatch, gen: GenConfig) -> list[Answer]:
        """Generate every job; a request that fails gets an error answer, the others still get theirs."""
        t0 = time.perf_counter()
        try:
            texts = self._texts(prepared, gen)
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
        kwargs = {**inputs, "max_new_tokens": gen.max_new_tokens, "streamer": streamer}
        kwargs.update(self._sampling(gen, [request.seed]))
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


class RowSampler(transformers.LogitsProcessor):
    """Sampling with one generator per row, seeded by the row's request (and sample).

    Each step, after the temperature and top-p that `GenConfig` asks for (as vLLM applies them; a
    checkpoint's default top-k is not), every row draws one uniform number from its own generator and
    takes the token where its cumulative probability passes it. The scores returned keep only that token
    (0, every other -inf), so generate's greedy pick takes it. A row's tokens therefore depend on its seed
    and its own logits, never on the other rows of the batch. The generators live on the CPU (one small
    draw per row and step; the search runs on the scores' device); a row without a seed gets an unseeded
    one.
    """

    def __init__(self, seeds: list[int | None], temperature: float = 1.0, top_p: float = 1.0):
        self.generators = [torch.Generator() for _ in seeds]
        for g, seed in zip(self.generators, seeds):
            if seed is None:
                g.seed()
            else:
                g.manual_seed(seed % 2**63)
        self.warpers: list[transformers.LogitsProcessor] = []
        if temperature != 1.0:
            self.warpers.append(transformers.TemperatureLogitsWarper(temperature))
        if top_p < 1.0:
            self.warpers.append(transformers.TopPLogitsWarper(top_p))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for warp in self.warpers:
            scores = warp(input_ids, scores)
        cdf = torch.softmax(scores.float(), dim=-1).cumsum(dim=-1)
        u = torch.cat([torch.rand(1, generator=g) for g in self.generators]).to(cdf.device)
        # the first token whose cumulative probability exceeds u (scaled to the total, against rounding)
        picks = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True)
        picks = picks.clamp_(max=cdf.shape[1] - 1)
        return torch.full_like(scores, float("-inf")).scatter_(1, picks, 0.0)


class _Stopped(transformers.StoppingCriteria):
    """Stops a streamed generation once its reader is gone."""

    def __init__(self, stop: threading.Event):
        self.stop = stop

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.BoolTensor:
        done = self.stop.is_set()
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)
