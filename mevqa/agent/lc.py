"""LangChain on top of mevqa: a chat model over any mevqa backend, the agent's tools, and LangChain's own
agent loop (`create_agent`) for served models that call tools. Imported only where used: LangChain is
the `app` extra.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from collections.abc import Iterator
from typing import Any

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.tools import BaseTool, tool
from PIL import Image

from mevqa.agent import ClipContext, ask, au_reference
from mevqa.backends.base import Backend, VQARequest
from mevqa.config import FrameConfig, GenConfig
from mevqa.errors import InputError, MissingDependency
from mevqa.prompts import Message

ROLES = {"human": "user", "ai": "assistant", "system": "system"}
SYSTEM = (
    "You answer questions about a face clip showing a micro-expression. Use the tools: look at the optical "
    "flow and sampled frames, check the AU reference, and ask the vision-language model. Answer briefly."
)


def to_message(m: BaseMessage) -> Message:
    """A LangChain message (text, or OpenAI-style content with data-URL images) as mevqa's Message."""
    if m.type not in ROLES:
        raise InputError(f"a {m.type!r} message — mevqa's chat model takes system, human and ai messages")
    if isinstance(m.content, str):
        return Message(ROLES[m.type], (m.content,))
    parts: list = []
    for block in m.content:
        if isinstance(block, str) or block.get("type") == "text":
            parts.append(block if isinstance(block, str) else block["text"])
        elif block.get("type") == "image_url":
            data = block["image_url"]["url"].split(",", 1)[1]
            parts.append(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
    return Message(ROLES[m.type], tuple(parts))


class MevqaChatModel(BaseChatModel):
    """Any mevqa backend (in-process transformers, vLLM, a server) as a LangChain chat model."""

    backend: Any
    gen: GenConfig = GenConfig()

    @property
    def _llm_type(self) -> str:
        return f"mevqa-{getattr(self.backend, 'name', 'backend')}"

    def _request(self, messages: list[BaseMessage]) -> VQARequest:
        return VQARequest("chat", tuple(to_message(m) for m in messages))

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        (ans,) = self.backend.generate([self._request(messages)], self.gen)
        if ans.error:
            raise RuntimeError(ans.error)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=ans.text))])

    def _stream(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> Iterator[ChatGenerationChunk]:
        seen = ""
        for text in self.backend.stream(self._request(messages), self.gen):
            delta, seen = text[len(seen) :], text
            if delta:
                yield ChatGenerationChunk(message=AIMessageChunk(content=delta))


def server_chat_model(base_url: str, model: str, api_key: str | None = None, max_tokens: int = 48) -> Any:
    """`ChatOpenAI` pointed at a vLLM / OpenAI-compatible server (model = base or adapter name)."""
    try:
        from langchain_openai import ChatOpenAI
    except ImportError:
        raise MissingDependency("the tool agent needs langchain-openai: pip install 'mevqa[app]'") from None
    return ChatOpenAI(
        base_url=base_url, model=model, api_key=api_key or "EMPTY", temperature=0, max_tokens=max_tokens
    )


def tools(ctx: ClipContext, backend: Backend, gen: GenConfig) -> list[BaseTool]:
    """LangChain tools bound to one clip and one VLM backend."""

    @tool(response_format="content_and_artifact")
    def sample_frames(strategy: str = "uniform", count: int = 8) -> tuple[str, list[Image.Image]]:
        """Sample frames from the clip: strategy uniform | whole | keyframes | all, and how many."""
        imgs = ctx.images(FrameConfig(frames=count, sampling=strategy))
        return f"{len(imgs)} frames ({strategy})", imgs

    @tool(response_format="content_and_artifact")
    def optical_flow() -> tuple[str, Image.Image]:
        """Optical flow from onset to apex: per-region motion in pixels (brows, eyes, nose, mouth, chin,
        and the subject's left vs right half), plus the colour-coded flow image."""
        image, motion = ctx.flow()
        return json.dumps(motion), image

    @tool("au_reference")
    def au_reference_tool(query: str = "") -> str:
        """FACS action-unit names, what each looks like, and which AUs signal which emotion."""
        return au_reference(query)

    @tool
    def ask_vlm(question: str, event: int = 0) -> str:
        """Ask the vision-language model a question about the clip's frames; event N > 0 asks about the
        N-th expression event that `spot` found (its onset to offset) instead of the whole video."""
        return ask(backend, (ctx.event(event) if event > 0 else ctx).parts(), question, gen)

    @tool
    def spot() -> str:
        """Find the expression events in a long video: for each, onset, apex and offset frame numbers,
        micro or macro, and a score; in time order (event 1 is the first)."""
        events = ctx.events()
        rows = [{"event": i + 1, **dataclasses.asdict(e)} for i, e in enumerate(events)]
        micro = sum(e.type == "micro" for e in events)
        return json.dumps({"events": len(events), "micro": micro, "macro": len(events) - micro, "list": rows})

    return [sample_frames, optical_flow, au_reference_tool, ask_vlm, spot]


def tool_agent(llm: Any, ctx: ClipContext, backend: Backend, gen: GenConfig, question: str) -> dict[str, Any]:
    """LangChain's agent loop: `llm` decides which tools to call until it answers `question`.

    Returns the final answer and every tool call with its result, in order.
    """
    from langchain.agents import create_agent

    agent = create_agent(model=llm, tools=tools(ctx, backend, gen), system_prompt=SYSTEM)
    messages = agent.invoke({"messages": [HumanMessage(content=question)]})["messages"]
    results = {m.tool_call_id: str(m.content) for m in messages if isinstance(m, ToolMessage)}
    calls = [
        {"tool": c["name"], "args": c["args"], "result": results.get(c["id"], "")}
        for m in messages
        if isinstance(m, AIMessage)
        for c in m.tool_calls
    ]
    return {"answer": str(messages[-1].content), "calls": calls}
