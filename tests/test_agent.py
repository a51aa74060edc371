"""The agent: tools return real frames and flow numbers; the chain answers three levels; the check works."""

from __future__ import annotations

import csv
import json

from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, HumanMessage

from mevqa.agent import ChatSession, ClipContext, ask, consistency_flags, hierarchical
from mevqa.agent.lc import MevqaChatModel, server_chat_model, tool_agent, tools
from mevqa.config import FrameConfig, GenConfig
from mevqa.data.qa import parse_au_codes
from mevqa.facs import REGION_ROWS, REGIONS

GEN = GenConfig(max_new_tokens=12)


def annotated(synthme, aus_filter=None):
    with open(synthme / "annotations.csv") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if aus_filter is None or aus_filter(r)]


def ctx_for(synthme, row):
    return ClipContext(
        str(synthme / "frames" / row["clip"]),
        onset=int(row["onset"]),
        apex=int(row["apex"]),
        offset=int(row["offset"]),
    )


def test_chain_returns_all_three_levels(qwen, synthme):
    r = hierarchical(qwen, ctx_for(synthme, annotated(synthme)[0]), GEN)
    assert set(r) == {"coarse", "fine", "aus", "consistent", "flags", "steps"}
    assert [s["step"] for s in r["steps"]] == ["coarse", "fine", "aus"]
    assert all(s["answer"] for s in r["steps"]) and isinstance(r["aus"], list)
    assert r["consistent"] == (not r["flags"])


def test_consistency_flags():
    assert consistency_flags("positive", "happiness", {"lip corner puller", "cheek raiser"}) == []
    flags = consistency_flags("negative", "happiness", {"lip corner puller"})
    assert len(flags) == 1 and "positive" in flags[0]
    assert any("cue" in f for f in consistency_flags("negative", "anger", {"lip corner puller"}))
    assert any("not one of" in f for f in consistency_flags("sad", "sadness", set()))


def test_tools_give_real_frames_and_flow(qwen, synthme):
    hits = 0
    for row in annotated(synthme)[:6]:
        ctx = ctx_for(synthme, row)
        sample, flow, ref, ask_vlm, _spot = tools(ctx, qwen, GEN)
        out = sample.invoke({"type": "tool_call", "id": "1", "name": "sample_frames", "args": {"count": 4}})
        assert out.content == "4 frames (uniform)" and len(out.artifact) == 4
        assert out.artifact[0].size == (112, 112)
        flow_out = flow.invoke({"type": "tool_call", "id": "2", "name": "optical_flow", "args": {}})
        motion = json.loads(flow_out.content)
        assert flow_out.artifact.size == (112, 112)
        regions = {r for a in parse_au_codes(row["aus"]) for r in REGIONS[a.number]}
        hits += max(REGION_ROWS, key=motion.get) in regions
    assert hits >= 5, hits  # the most moving band is one the clip's AUs move, for (nearly) every clip
    assert "lip corner puller" in ref.invoke({"query": "lip corner"})
    assert ask_vlm.invoke({"question": "What is the coarse expression class?"})


class ScriptedToolModel(FakeMessagesListChatModel):
    """A chat model that plays a fixed script of tool calls (what a served model with a tool parser
    returns), so LangChain's real agent loop runs mevqa's real tools end to end."""

    def bind_tools(self, tools, **kwargs):
        return self


def test_tool_agent_runs_real_tools(qwen, synthme):
    script = [
        AIMessage(content="", tool_calls=[{"name": "optical_flow", "args": {}, "id": "c1"}]),
        AIMessage(
            content="",
            tool_calls=[
                {"name": "ask_vlm", "args": {"question": "What is the coarse expression class?"}, "id": "c2"}
            ],
        ),
        AIMessage(content="The mouth moves most; the model says so."),
    ]
    ctx = ctx_for(synthme, annotated(synthme)[0])
    result = tool_agent(ScriptedToolModel(responses=script), ctx, qwen, GEN, "What is the coarse class?")
    assert [c["tool"] for c in result["calls"]] == ["optical_flow", "ask_vlm"]
    assert json.loads(result["calls"][0]["result"]) == ctx.flow()[1]  # the real per-region motion
    vlm = ask(qwen, ctx.parts(), "What is the coarse expression class?", GEN)
    assert result["calls"][1]["result"] == vlm  # the real model's answer came back to the agent
    assert result["answer"] == "The mouth moves most; the model says so."


def test_chat_tools_command_uses_the_agent(qwen, synthme):
    script = [
        AIMessage(content="", tool_calls=[{"name": "au_reference", "args": {"query": "dimpler"}, "id": "a"}]),
        AIMessage(content="done"),
    ]
    ctx = ctx_for(synthme, annotated(synthme)[0])
    session = ChatSession(qwen, ctx, GEN, tool_llm=lambda: ScriptedToolModel(responses=script))
    out = session.command("/tools which AU is the dimpler?")
    assert out.startswith("mevqa> done") and "[au_reference]" in out and "dimples form" in out
    plain = ChatSession(qwen, ctx, GEN)
    assert "needs a served model" in plain.command("/tools hi")
    assert "unknown command '/qiut'" in plain.command("/qiut")


def test_help_answers_the_command_list(qwen, synthme):
    """`/help` was listed among the commands, and answered "unknown command '/help'"."""
    from mevqa.agent import CHAT_COMMANDS, chat_help

    out = ChatSession(qwen, ctx_for(synthme, annotated(synthme)[0]), GEN).command("/help")
    assert out == chat_help() and "unknown" not in out
    for c in CHAT_COMMANDS:
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(c.names[0]))
        assert c.help in line and all(n in line for n in c.names) and c.arg in line
    assert len(out.splitlines()) == len(CHAT_COMMANDS) + 1  # a heading, then one line a command


def test_chat_model_generates_and_streams(qwen, synthme):
    images = ctx_for(synthme, annotated(synthme)[0]).images()
    llm = MevqaChatModel(backend=qwen, gen=GEN)
    from mevqa.prompts import Message, to_openai

    (msg,) = to_openai([Message.user(*images, "What is the coarse expression class?")])
    whole = llm.invoke([HumanMessage(content=msg["content"])]).content
    streamed = "".join(chunk.content for chunk in llm.stream([HumanMessage(content=msg["content"])]))
    assert whole and streamed.strip() == whole


def test_chat_in_a_terminal(tiny_qwen, synthme):
    import subprocess
    import sys

    clip = str(synthme / "frames" / annotated(synthme)[0]["clip"])
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mevqa",
            "chat",
            clip,
            "--model",
            str(tiny_qwen),
            "--frames",
            "4",
            "--max-new-tokens",
            "6",
            "--input",
            "flow",
            "--flow-with-oao",
        ],
        input="What is the coarse expression class?\nWhy?\n/flow\n/qiut\n/help\n/agent\n/quit\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    answers = [ln for ln in r.stdout.splitlines() if "mevqa> " in ln]
    assert len(answers) == 2 and '"brows"' in r.stdout and "unknown command '/qiut'" in r.stdout
    assert '"coarse":' in r.stdout and '"consistent":' in r.stdout
    assert (
        "unknown command '/help'" not in r.stdout and r.stdout.count("/tools QUESTION") == 2
    )  # banner, /help


def test_chat_keeps_history(qwen, synthme):
    session = ChatSession(qwen, ctx_for(synthme, annotated(synthme)[0]), GEN)
    assert session.send("What is the coarse expression class?").ok
    req = session.request("And the fine-grained class?")
    assert [m.role for m in req.messages] == ["user", "assistant", "user"]
    assert len(req.messages[0].parts) == 9 and req.messages[2].parts == ("And the fine-grained class?",)


def test_chat_flow_with_oao_is_not_ignored(tiny_qwen, synthme):
    """`mevqa chat --input flow --flow-with-oao` shows onset/apex/offset + flow (4 images), as ask does."""
    from mevqa.cli import build_parser
    from mevqa.cli.ask import _settings

    clip = str(synthme / "frames" / annotated(synthme)[0]["clip"])
    cfg = _settings(
        build_parser().parse_args(
            ["chat", clip, "--model", str(tiny_qwen), "--input", "flow", "--flow-with-oao"]
        ),
        "chat",
    )
    assert len(ClipContext(clip, cfg.frames).parts()) == 4


def test_chatopenai_against_a_real_server_matches_in_process(served_qwen, tiny_qwen, qwen, synthme):
    """The agent's ChatOpenAI path (what a vLLM deployment uses) asks the same question the same way."""
    images = ctx_for(synthme, annotated(synthme)[0]).images()
    remote = server_chat_model(served_qwen.url, str(tiny_qwen), max_tokens=12)
    local = MevqaChatModel(backend=qwen, gen=GEN)
    from mevqa.prompts import Message, to_openai

    (msg,) = to_openai([Message.user(*images, "What is the coarse expression class?")])
    answers = [m.invoke([HumanMessage(content=msg["content"])]).content.strip() for m in (remote, local)]
    assert answers[0] == answers[1] != ""


def test_a_clip_keeps_the_frames_of_its_last_two_settings(clips):
    """The app's frame slider decodes once per position: only the last two stay in memory."""
    ctx = ClipContext(str(clips["folder"]), FrameConfig(frames=2))
    for n in (2, 3, 4, 3):
        assert len(ctx.parts(FrameConfig(frames=n))) == n
    assert [k.frames for k in ctx._cache if isinstance(k, FrameConfig)] == [4, 3]
    ctx.forget()
    assert not ctx._cache
