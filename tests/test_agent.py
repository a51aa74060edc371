"""The agent: tools return real frames and flow numbers; the chain answers three levels; the check works."""

from __future__ import annotations

import csv

import pytest
from conftest import run_cli

from mevqa.agent import ClipContext, chat_model, consistency_flags, hierarchical, tools
from mevqa.backends.base import load_backend
from mevqa.data.qa import parse_au_codes
from mevqa.facs import REGIONS


@pytest.fixture(scope="module")
def llm(tiny_qwen):
    return chat_model(load_backend("transformers", model=str(tiny_qwen)))


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


def test_chain_returns_all_three_levels(llm, synthme):
    r = hierarchical(llm, ctx_for(synthme, annotated(synthme)[0]))
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


def test_tools_give_real_frames_and_flow(llm, synthme):
    for row in annotated(synthme)[:6]:
        ctx = ctx_for(synthme, row)
        sample, flow, ref, ask = tools(ctx, llm)
        out = sample.invoke({"type": "tool_call", "id": "1", "name": "sample_frames", "args": {"count": 4}})
        assert out.content == "4 frames (uniform)" and len(out.artifact) == 4
        assert out.artifact[0].size == (112, 112)
        flow_out = flow.invoke({"type": "tool_call", "id": "2", "name": "optical_flow", "args": {}})
        import json

        motion = json.loads(flow_out.content)
        assert flow_out.artifact.size == (112, 112)
        regions = {r for a in parse_au_codes(row["aus"]) for r in REGIONS[a.number]}
        assert max(("brows", "eyes", "nose", "mouth", "chin"), key=motion.get) in regions or len(regions) > 2
    assert "lip corner puller" in ref.invoke({"query": "lip corner"})
    assert ask.invoke({"question": "What is the coarse expression class?"})


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
        ],
        input="What is the coarse expression class?\nWhy?\n/flow\n/quit\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    answers = [ln for ln in r.stdout.splitlines() if "mevqa> " in ln]
    assert len(answers) == 2 and '"brows"' in r.stdout


def test_chat_keeps_history(tiny_qwen, synthme):
    from mevqa.agent import ChatSession

    session = ChatSession(
        load_backend("transformers", model=str(tiny_qwen)), ctx_for(synthme, annotated(synthme)[0])
    )
    session.send("What is the coarse expression class?")
    req = session.request("And the fine-grained class?")
    assert [m.role for m in req.messages] == ["user", "assistant", "user"]
    assert len(req.messages[0].parts) == 9 and req.messages[2].parts == ("And the fine-grained class?",)


def test_chat_bad_clip(tiny_qwen, tmp_path):
    r = run_cli("chat", str(tmp_path / "missing.mp4"), "--model", str(tiny_qwen))
    assert r.returncode == 2 and r.stderr.startswith("error: ")


def test_chatopenai_against_a_real_server_matches_in_process(served_qwen, tiny_qwen, llm, synthme):
    """The agent's ChatOpenAI path (what a vLLM deployment uses) asks the same question the same way."""
    from mevqa.agent import ask, server_chat_model

    images = ctx_for(synthme, annotated(synthme)[0]).images()
    remote = server_chat_model(served_qwen.url, str(tiny_qwen))
    remote.max_tokens = 12
    local = chat_model(llm.backend, llm.gen.__class__(max_new_tokens=12, batch_size=1))
    q = "What is the coarse expression class?"
    assert ask(remote, images, q) == ask(local, images, q) != ""
