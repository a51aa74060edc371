"""Backend for any OpenAI-compatible server: vLLM (`vllm serve`, `mevqa serve`), `transformers serve`, ...

Frames travel as base64 `image_url` parts (PNG by default: a micro-movement is a few pixels, the size of
JPEG artefacts). The adapter is chosen by the request's `model` name — vLLM's multi-LoRA convention: the
backend asks for the adapter it was configured with (`--adapter`), or the base. When the model's family is
known here (its config.json is a local folder or in the Hub cache), its chat-template variables travel as
`chat_template_kwargs` (vLLM's extension; Qwen3.5: no thinking); otherwise the server's template defaults
apply.
Requests run concurrently (a bounded number in flight) over one or several base URLs (replicas);
connection errors and 5xx are retried with backoff, 4xx never (the request itself is wrong).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import httpx

from mevqa.backends.base import Answer, Backend, Prepared, VQARequest, chat_template_kwargs
from mevqa.config import GenConfig, ModelSpec, ServerSpec, VLLMSpec
from mevqa.errors import InputError, ModelError
from mevqa.models.adapters import served_name
from mevqa.prompts import to_openai

log = logging.getLogger(__name__)

# An answer is a label or a few sentences. A server that ignores max_tokens (or is no model at all) must not
# fill the predictions file: 50 MB answers made a 419 MB one. Read at most this much of a response, and keep
# at most this much of an answer (with an error note, so a rerun asks again).
MAX_BODY_BYTES = 8 * 2**20
MAX_ANSWER_CHARS = 20_000
CONTENT_RE = re.compile(rb'"content"\s*:\s*"')


def auth(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def list_models(base_url: str, api_key: str | None = None, timeout: float = 10) -> list[dict]:
    """GET /models of one server; nothing answering or an HTTP error is one clear `ModelError`."""
    url = base_url.rstrip("/")
    try:
        r = httpx.get(f"{url}/models", headers=auth(api_key), timeout=timeout)
    except httpx.TransportError as e:
        raise ModelError(
            f"server.base_url {url} — nothing answers ({type(e).__name__}); is the server running?"
        ) from None
    if r.status_code >= 400:
        raise ModelError(f"server.base_url {url} — GET /models gave HTTP {r.status_code} ({r.text[:120]})")
    try:
        return list(r.json().get("data", []))
    except (ValueError, AttributeError):
        raise ModelError(f"server.base_url {url} — GET /models did not answer a model list") from None


def served_folder(base_url: str, adapter: str, api_key: str | None = None) -> str | None:
    """The folder a server loaded adapter NAME from (vLLM lists it as the module's `root`), if readable
    here: so `--adapter NAME` takes the adapter's recorded frame settings as `--adapter PATH` does."""
    try:
        models = list_models(base_url, api_key)
    except ModelError:
        return None  # the backend's own check says what is wrong, with the URL
    root = next((m.get("root") for m in models if m.get("id") == adapter and m.get("parent")), None)
    return root if root and Path(root, "adapter_config.json").is_file() else None


class RequestFailed(Exception):
    """A request that failed for good (4xx, or 5xx / no connection after the retries)."""


class HTTPStatusError(Exception):
    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status


async def read_capped(resp: httpx.Response, limit: int = MAX_BODY_BYTES) -> tuple[bytes, bool]:
    """At most `limit` bytes of the body, and whether there was more (the rest is never read)."""
    body = bytearray()
    async for chunk in resp.aiter_bytes():
        body += chunk
        if len(body) > limit:
            return bytes(body[:limit]), True
    return bytes(body), False


def salvage_content(body: bytes) -> str:
    """The first `content` string of a cut-off JSON body, as far as it got (up to MAX_ANSWER_CHARS)."""
    m = CONTENT_RE.search(body)
    if not m:
        return ""
    frag = body[m.end() : m.end() + 6 * MAX_ANSWER_CHARS].decode("utf-8", "ignore")
    for end in range(len(frag), max(len(frag) - 7, -1), -1):  # drop an escape cut in half (\u00e)
        try:
            return json.decoder.scanstring(frag[:end] + '"', 0)[0][:MAX_ANSWER_CHARS]
        except ValueError:
            continue
    return ""


def parse_choices(body: bytes, cut: bool, content_type: str) -> tuple[list[str], str | None]:
    """The choices' texts of a 2xx response, each capped, and an error note when one had to be cut; a body
    that is not a chat completion (an HTML page from a proxy, a login form) fails the request."""
    if cut:
        note = f"the server sent more than {MAX_BODY_BYTES // 2**20} MiB — answer truncated"
        return [salvage_content(body)], note
    try:
        texts = [(c["message"].get("content") or "").strip() for c in json.loads(body)["choices"]]
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError):
        texts = []
    if not texts:
        shown = body[:80].decode("utf-8", "replace")
        raise RequestFailed(
            f"HTTP 200 but not a chat completion ({content_type or 'no content type'}: {shown!r}); "
            "is `server.base_url` an OpenAI-compatible /v1?"
        )
    long = max(len(t) for t in texts)
    note = f"answer of {long} characters truncated to {MAX_ANSWER_CHARS}" if long > MAX_ANSWER_CHARS else None
    return [t[:MAX_ANSWER_CHARS] for t in texts], note


class OpenAIBackend(Backend[Prepared]):
    """Chat completions against one or more base URLs (each ending in /v1)."""

    name = "openai"

    def __init__(
        self,
        base_urls: list[str],
        model: str,
        api_key: str | None = None,
        concurrency: int = 4,
        timeout: float = 120.0,
        retries: int = 3,
        image_format: str = "png",
        backoff: float = 0.5,
        video_as: str = "frames",
        template_kwargs: dict[str, Any] | None = None,
    ):
        self.base_urls = [u.rstrip("/") for u in base_urls]
        self.model, self.api_key = model, api_key
        self.concurrency, self.timeout, self.retries = max(1, concurrency), timeout, retries
        self.image_format, self.backoff, self.video_as = image_format, backoff, video_as
        self._next_url = itertools.cycle(self.base_urls)
        self.template_kwargs = template_kwargs or {}

    @classmethod
    def from_config(cls, model: ModelSpec, server: ServerSpec, engine: VLLMSpec) -> OpenAIBackend:
        if not server.base_url:
            raise InputError(
                "model.backend openai — needs `server.base_url` http://HOST:PORT/v1 (one per replica)"
            )
        backend = cls(
            list(server.base_url),
            model.model,
            server.key,
            server.concurrency,
            server.timeout,
            server.retries,
            server.image_format,
            video_as=server.video_as,
            template_kwargs=chat_template_kwargs(model.model),
        )
        served = backend.check()
        if model.adapter:  # vLLM serves each LoRA module under its own name: the request's `model`
            backend.model = served_name(model.adapter, served)
        return backend

    def _headers(self) -> dict[str, str]:
        return auth(self.api_key)

    def check(self) -> list[dict]:
        """GET /models on every base URL: fail early, with one clear line, if nothing answers."""
        return [m for url in self.base_urls for m in list_models(url, self.api_key, min(self.timeout, 10))]

    def _payload(self, r: VQARequest, gen: GenConfig, n: int, seed: int | None) -> dict[str, Any]:
        payload = {
            "model": self.model,
            "messages": to_openai(list(r.messages), self.image_format, self.video_as),
            "max_tokens": gen.max_new_tokens,
            "temperature": gen.temperature if gen.sampling else 0.0,
            "top_p": gen.top_p if gen.sampling else 1.0,
        }
        if n > 1:
            payload["n"] = n
        if seed is not None and gen.sampling:
            payload["seed"] = seed
        if self.template_kwargs:
            payload["chat_template_kwargs"] = self.template_kwargs
        return payload

    async def _complete(
        self, client: httpx.AsyncClient, r: VQARequest, gen: GenConfig, n: int, seed: int | None
    ) -> tuple[list[str], str | None]:
        """One chat completion (with retries on connection errors and 5xx): its choices' texts, and a note
        when an answer was cut to size."""
        for attempt in range(self.retries + 1):
            url = next(self._next_url)  # spread requests (and retries) over the replicas
            try:
                payload = self._payload(r, gen, n, seed)
                async with client.stream(
                    "POST", f"{url}/chat/completions", json=payload, headers=self._headers()
                ) as resp:
                    body, cut = await read_capped(resp)
                if resp.status_code >= 400:
                    raise HTTPStatusError(resp.status_code, body.decode("utf-8", "replace"))
                return parse_choices(body, cut, resp.headers.get("content-type", ""))
            except (httpx.TransportError, HTTPStatusError) as e:
                if isinstance(e, HTTPStatusError) and e.status < 500 or attempt == self.retries:
                    raise RequestFailed(f"{type(e).__name__}: {e}"[:300]) from None
                log.info("request %s: %s; retry %d", r.id, e, attempt + 1)
                await asyncio.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")

    async def _one(
        self, client: httpx.AsyncClient, sem: asyncio.Semaphore, r: VQARequest, gen: GenConfig
    ) -> Answer:
        async with sem:
            t0 = time.perf_counter()
            try:
                texts, note = await self._complete(client, r, gen, gen.samples, r.seed)
                for i in range(len(texts), gen.samples):  # the server ignored `n`: one request per sample
                    seed = None if r.seed is None else r.seed + i
                    more, more_note = await self._complete(client, r, gen, 1, seed)
                    texts, note = texts + more, note or more_note
            except RequestFailed as e:
                return Answer(r.id, "", error=str(e), seconds=time.perf_counter() - t0)
            samples = tuple(texts[: gen.samples]) if gen.samples > 1 else ()
            return Answer(r.id, texts[0], error=note, seconds=time.perf_counter() - t0, samples=samples)

    async def _all(self, requests: list[VQARequest], gen: GenConfig) -> list[Answer]:
        sem = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency * len(self.base_urls))
        async with httpx.AsyncClient(timeout=self.timeout, limits=limits) as client:
            return list(await asyncio.gather(*(self._one(client, sem, r, gen) for r in requests)))

    def generate(self, requests: list[VQARequest], gen: GenConfig) -> list[Answer]:
        return asyncio.run(self._all(requests, gen)) if requests else []
