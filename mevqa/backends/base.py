"""The Backend seam: requests in, answers out, whatever runs the model.

`__init__` of a backend takes ready objects (a model and processor, an HTTP client, an engine);
`from_config(model, server, engine)` does the loading from the typed specs. A failed request becomes an
`Answer` with `error` set — never an empty string that would be scored as a wrong answer. Running out
of memory is not a failed request but a wrong setting: it stops the run (`ModelError`) with the batch
size to try.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from mevqa.config import BACKEND_NAMES, GenConfig, ModelSpec, ServerSpec, VLLMSpec
from mevqa.errors import InputError, MissingDependency, ModelError
from mevqa.prompts import Message


@dataclass(frozen=True)
class VQARequest:
    """One question about one clip, already rendered as chat messages.

    Attributes:
        id: row id (echoed in the answer).
        messages: the conversation so far, ending with the user's question.
        adapter: adapter for backends that serve several (vLLM multi-LoRA); None = as loaded.
        seed: sampling seed for this question (sampled answers are reproducible per question).
    """

    id: str
    messages: tuple[Message, ...]
    adapter: str | None = None
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


@runtime_checkable
class Backend(Protocol):
    """What runs the model. `generate` answers one batch (the caller sizes it)."""

    name: str

    def generate(self, requests: list[VQARequest], gen: GenConfig) -> list[Answer]:
        """Answer every request, in order; failures are answers with `error` set."""
        ...

    def prepare(self, requests: list[VQARequest], gen: GenConfig) -> Any:
        """The CPU half of `generate` (rendering, preprocessing), run ahead while the previous batch
        generates; by default nothing is done ahead."""
        return requests

    def run(self, prepared: Any, gen: GenConfig) -> list[Answer]:
        """The model half: answers for what `prepare` returned."""
        return self.generate(prepared, gen)

    def stream(self, request: VQARequest, gen: GenConfig) -> Iterator[str]:
        """Yield the answer as it grows (chat UIs); by default, the whole answer at once."""
        (ans,) = self.generate([request], gen)
        if ans.error:
            raise RuntimeError(ans.error)
        yield ans.text


def out_of_memory(e: BaseException) -> bool:
    """A CUDA out-of-memory (torch.OutOfMemoryError), the CPU allocator's failure or Python's MemoryError."""
    text = str(e).lower()
    return isinstance(e, MemoryError) or any(m in text for m in ("out of memory", "can't allocate memory"))


def oom_error(questions: int) -> ModelError:
    """Out of memory is a setting to change, not a failed answer: the run stops and says what to try."""
    return ModelError(
        f"out of memory answering {questions} questions at once — lower --batch-size "
        f"(try {max(1, questions // 2)}) or --frames"
    )


# name -> "module:Class"; imported only when chosen, so optional packages stay optional.
BACKENDS: dict[str, str] = {
    "transformers": "mevqa.backends.hf:TransformersBackend",
    "openai": "mevqa.backends.openai_server:OpenAIBackend",
    "vllm": "mevqa.backends.vllm_offline:VLLMBackend",
}
assert tuple(BACKENDS) == BACKEND_NAMES


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
            f"--base-url and the other server settings — need --backend openai, not {model.backend}"
        )
    if model.backend != "vllm" and engine != VLLMSpec():
        raise InputError(
            f"vLLM engine settings (--tensor-parallel-size, ...) — need --backend vllm, not {model.backend}"
        )
    module, cls = BACKENDS[model.backend].split(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise MissingDependency(
            f"--backend {model.backend} — needs {e.name}: pip install 'mevqa[{model.backend}]'"
        ) from None
    return getattr(mod, cls).from_config(model, server, engine)
