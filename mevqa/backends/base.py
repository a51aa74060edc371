"""The Backend seam: requests in, answers out, whatever runs the model.

`__init__` of a backend takes ready objects (a model and processor, an HTTP client, an engine);
`from_config(model, server, engine)` does the loading from the typed specs. A failed request becomes an
`Answer` with `error` set — never an empty string that would be scored as a wrong answer. Running out
of memory is not a failed request but a wrong setting: it stops the run (`ModelError`) with the batch
size to try.
"""

from __future__ import annotations

import abc
import importlib
import sys
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar, cast

from mevqa import process
from mevqa.config import GenConfig, ModelSpec, ServerSpec, VLLMSpec
from mevqa.errors import InputError, MissingDependency, ModelError
from mevqa.models import families
from mevqa.models.shapes import base_config
from mevqa.prompts import Message


@dataclass(frozen=True)
class VQARequest:
    """One question about one clip, already rendered as chat messages.

    One adapter per backend: the backend answers with the adapter it was loaded with (`ModelSpec.adapter`);
    a request does not choose one. To compare adapters, run one eval per adapter against one `mevqa serve`
    (it serves every adapter under its own name), so each run keeps its own predictions and fingerprint.

    Attributes:
        id: row id (echoed in the answer).
        messages: the conversation so far, ending with the user's question.
        prefix_key: requests with the same key show the model the same images after the same turns (only
            the text of their last message differs), so a backend may compute that shared prefix once (the
            eval runner uses the clip's key). None: the request shares nothing with the others (the
            samples of one request still share their prefix).
        seed: sampling seed for this question: a sampled answer depends on the request and its seed only,
            not on the batch it is answered in.
    """

    id: str
    messages: tuple[Message, ...]
    prefix_key: Hashable | None = None
    seed: int | None = None


@dataclass(frozen=True)
class Answer:
    """The model's answer to one request; `samples` holds every draw when `GenConfig.samples` > 1."""

    id: str
    text: str
    error: str | None = None
    seconds: float = 0.0
    samples: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Prepared:
    """What `Backend.prepare` hands to `Backend.run`: the batch's requests, plus whatever a backend did
    ahead of the model (a subclass of its own)."""

    requests: list[VQARequest]


P = TypeVar("P", bound=Prepared)


class Backend(abc.ABC, Generic[P]):
    """What runs the model. `generate` answers one batch (the caller sizes it).

    `prepare` / `run` split `generate` in a CPU half and a model half, so a caller can prepare the next
    batch while one runs; `P` is what the first hands to the second (`Prepared`, or a backend's subclass
    of it: `TransformersBackend` is a `Backend[PlannedBatch]`)."""

    name: ClassVar[str]

    @abc.abstractmethod
    def generate(self, requests: list[VQARequest], gen: GenConfig) -> list[Answer]:
        """Answer every request, in order; failures are answers with `error` set."""

    def prepare(self, requests: list[VQARequest], gen: GenConfig) -> P:
        """The CPU half of `generate` (rendering, preprocessing), run ahead while the previous batch
        generates; by default nothing is done ahead (a `Backend[Prepared]`)."""
        return cast(P, Prepared(requests))

    def run(self, prepared: P, gen: GenConfig) -> list[Answer]:
        """The model half: answers for what `prepare` returned."""
        return self.generate(prepared.requests, gen)

    def stream(self, request: VQARequest, gen: GenConfig) -> Iterator[str]:
        """Yield the answer as it grows (chat UIs); by default, the whole answer at once."""
        (ans,) = self.generate([request], gen)
        if ans.error:
            raise RuntimeError(ans.error)
        yield ans.text


# out of memory without a type of its own (see out_of_memory)
UNTYPED_OOM = ("can't allocate memory", "CUDA error: out of memory")


def out_of_memory(e: BaseException) -> bool:
    """Whether `e` (or what it was raised from) is running out of memory: torch.OutOfMemoryError (CUDA's
    caching allocator) or MemoryError (Python, numpy, PIL).

    Two failures carry no type of their own and are told by their text: torch's CPU allocator raises a
    plain RuntimeError ("DefaultCPUAllocator: can't allocate memory", torch 2.14), and a CUDA call outside
    the caching allocator (cuBLAS or cuDNN workspaces) raises "CUDA error: out of memory" as a
    RuntimeError (torch.AcceleratorError).
    """
    torch = sys.modules.get("torch")  # never imported for it: a served model (--backend openai) has none
    oom_types: tuple[type[BaseException], ...] = (MemoryError,) + ((torch.OutOfMemoryError,) if torch else ())
    seen: BaseException | None = e
    for _ in range(8):  # what it was raised from, a few links deep
        if seen is None:
            return False
        if isinstance(seen, oom_types):
            return True
        if isinstance(seen, RuntimeError) and any(m in str(seen) for m in UNTYPED_OOM):
            return True
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    return False


def oom_error(questions: int) -> ModelError:
    """Out of memory is a setting to change, not a failed answer: the run stops and says what to try."""
    return ModelError(
        f"out of memory answering {questions} questions at once — lower `batch_size` "
        f"(try {max(1, questions // 2)}) or `frames.frames`"
    )


def chat_template_kwargs(model: str) -> dict[str, Any]:
    """The chat-template variables of the family of `model` (a folder or a Hub id in the local cache), read
    from its config.json; none when the config cannot be read here or the family is not in the table."""
    try:
        config = base_config(model)
    except InputError:
        return {}
    return families.chat_template_kwargs(str(config.get("model_type", ""))) if config else {}


# The one table of backends: name -> "module:Class", imported only when chosen, so optional packages stay
# optional. (The settings spell the same names for `--backend`'s choices, `config.BACKEND_NAMES`: config
# sits below this layer and cannot import it; tests/test_backend.py checks that the two agree.)
BACKENDS: dict[str, str] = {
    "transformers": "mevqa.backends.hf:TransformersBackend",
    "openai": "mevqa.backends.openai_server:OpenAIBackend",
    "vllm": "mevqa.backends.vllm_offline:VLLMBackend",
}
BACKEND_NAMES: tuple[str, ...] = tuple(BACKENDS)


def set_threads(n: int | None) -> None:
    """Pin torch's CPU threads (`--threads`); None leaves torch's default (one per core). A served model
    (--backend openai) imports no torch for it."""
    if n:
        import torch

        torch.set_num_threads(n)


def load_backend(
    model: ModelSpec, server: ServerSpec | None = None, engine: VLLMSpec | None = None
) -> Backend:
    """The backend `model.backend`, built by its `from_config(model, server, engine)`.

    Each backend reads the specs that concern it; settings given for another backend (a --base-url
    with the transformers backend) are refused rather than silently ignored.
    """
    server, engine = server or ServerSpec(), engine or VLLMSpec()
    if model.backend != "openai" and server != ServerSpec():
        raise InputError(
            f"server settings (`server.base_url`, ...) — need `model.backend` openai, not {model.backend}"
        )
    if model.backend != "vllm" and engine != VLLMSpec():
        raise InputError(f"vLLM engine settings (vllm.*) — need `model.backend` vllm, not {model.backend}")
    module, cls = BACKENDS[model.backend].split(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise MissingDependency(
            f"model.backend {model.backend} — needs {e.name}: pip install 'mevqa[{model.backend}]'"
        ) from None
    backend = getattr(mod, cls).from_config(model, server, engine)
    process.started()
    return backend


def adapter_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """The frame settings and prompt an adapter recorded (`mevqa.yaml`): the defaults of every front end that
    answers with it (ask, chat, eval, the app). A served adapter NAME is traced to its folder through the
    server's model list. (Here, not in models/adapters.py beside `recorded_settings`: the trace asks a
    server.)"""
    import os

    from mevqa.models.adapters import recorded_settings  # transformers: only for a command that answers

    model, server = values.get("model", {}), values.get("server", {})
    adapter = model.get("adapter")
    if adapter and model.get("backend") == "openai" and server.get("base_url") and not os.path.isdir(adapter):
        from mevqa.backends.openai_server import served_folder

        key = ServerSpec(api_key=server.get("api_key")).key
        adapter = served_folder(server["base_url"][0], adapter, key) or adapter
    return recorded_settings(adapter)
