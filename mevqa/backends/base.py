"""The Backend seam: requests in, answers out, whatever runs the model.

`__init__` of a backend takes ready objects (a model and processor, an HTTP client); `from_config`
does the loading. A failed request becomes an `Answer` with `error` set — never an empty string that
would be scored as a wrong answer.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from mevqa.config import GenConfig
from mevqa.errors import InputError, MissingDependency
from mevqa.prompts import Message


@dataclass(frozen=True)
class VQARequest:
    """One question about one clip, already rendered as chat messages.

    Attributes:
        id: row id (echoed in the answer).
        messages: the conversation so far, ending with the user's question.
        adapter: adapter name for backends that serve several (vLLM multi-LoRA); None = as loaded.
    """

    id: str
    messages: tuple[Message, ...]
    adapter: str | None = None


@dataclass(frozen=True)
class Answer:
    id: str
    text: str
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


@runtime_checkable
class Backend(Protocol):
    name: str

    def generate(self, requests: list[VQARequest], gen: GenConfig) -> list[Answer]:
        """Answer every request, in order; failures are answers with `error` set."""
        ...


# name -> "module:Class"; imported only when chosen, so optional packages stay optional.
BACKENDS: dict[str, str] = {
    "transformers": "mevqa.backends.hf:TransformersBackend",
    "openai": "mevqa.backends.openai_server:OpenAIBackend",
    "vllm": "mevqa.backends.vllm_offline:VLLMBackend",
}


def load_backend(name: str, **kwargs: Any) -> Backend:
    """Instantiate backend `name` through its `from_config(**kwargs)`."""
    if name not in BACKENDS:
        raise InputError(f"--backend {name!r} — unknown backend; choose one of {', '.join(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise MissingDependency(
            f"--backend {name} — needs {e.name}; install it with `pip install 'mevqa[{name}]'`"
        ) from None
    return getattr(mod, cls).from_config(**kwargs)
