"""Serving: the openai backend against a real `transformers serve`, faults, and `mevqa serve --dry-run`."""

from __future__ import annotations

import json
import re
import shlex
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import cli, free_port, make_adapter

from mevqa.backends.base import VQARequest, load_backend
from mevqa.config import GenConfig, ModelSpec, ServerSpec
from mevqa.data.megc import read_jsonl, row_id
from mevqa.models.loading import config_hash
from mevqa.prompts import Message
from mevqa.serve import SERVER_MODULE

Q = "What is the coarse expression class?"


def test_ask_through_server_matches_in_process(served_qwen, tiny_qwen, synthme):
    clip = str(sorted((synthme / "frames").iterdir())[0])
    args = ["ask", clip, Q, "--model", str(tiny_qwen), "--json", "--frames", "4"]
    local = cli(*args)
    remote = cli(
        *args,
        "--backend",
        "openai",
        "--base-url",
        served_qwen.url,
    )
    assert local.returncode == 0 and remote.returncode == 0, remote.stderr
    assert unspecial(json.loads(remote.stdout)["answer"]) == json.loads(local.stdout)["answer"] != ""


def test_eval_through_server_concurrent_matches_in_process(served_qwen, tiny_qwen, synthme, tmp_path):
    common = [
        "eval",
        "--data",
        str(synthme / "test.jsonl"),
        "--root",
        str(synthme),
        "--model",
        str(tiny_qwen),
        "--max-new-tokens",
        "10",
        "--frames",
        "4",
    ]
    local = cli(*common, "--out", str(tmp_path / "local"))
    remote = cli(
        *common,
        "--out",
        str(tmp_path / "remote"),
        "--backend",
        "openai",
        "--base-url",
        served_qwen.url,
        "--server-args",
        "concurrency=4",
        "--batch-size",
        "8",
    )
    assert local.returncode == 0 and remote.returncode == 0, remote.stderr
    a = {row_id(r): r["answer"] for r in read_jsonl(tmp_path / "local" / "predictions.jsonl")}
    b = {row_id(r): unspecial(r["answer"]) for r in read_jsonl(tmp_path / "remote" / "predictions.jsonl")}
    assert a == b and all(a.values())


def unspecial(text: str) -> str:
    """transformers serve leaves special tokens (<|vision_start|>...) in the text this random model
    emits; the in-process backend and vLLM strip them."""
    return re.sub(r"<\|[a-z_]+\|>", "", text)


def test_nothing_listening_is_a_clear_error(tiny_qwen, synthme):
    clip = str(sorted((synthme / "frames").iterdir())[0])
    r = cli(
        "ask",
        clip,
        Q,
        "--model",
        tiny_qwen,
        "--backend",
        "openai",
        "--base-url",
        f"http://127.0.0.1:{free_port()}/v1",
    )
    assert r.returncode == 2 and "nothing answers" in r.stderr and len(r.stderr.strip().splitlines()) == 1


class _Counting(BaseHTTPRequestHandler):
    status = 400
    posts = 0

    def do_GET(self):  # /v1/models
        self._send(200, {"object": "list", "data": [{"id": "m"}]})

    def do_POST(self):
        type(self).posts += 1
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._send(type(self).status, {"error": {"message": "nope"}})

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status,posts", [(400, 1), (422, 1), (503, 3)])
def test_retry_policy(status, posts):
    handler = type("H", (_Counting,), {"status": status, "posts": 0})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_port}/v1"
        backend = load_backend(ModelSpec("m", backend="openai"), ServerSpec(base_url=(url,), retries=2))
        backend.backoff = 0.01
        (ans,) = backend.generate([VQARequest("x", (Message.user("hi"),))], GenConfig(max_new_tokens=4))
    finally:
        httpd.shutdown()
    assert not ans.ok and f"HTTP {status}" in ans.error
    assert handler.posts == posts  # 4xx: never retried; 5xx: 1 + 2 retries


def test_vllm_backend_without_vllm_is_one_clear_line(tiny_qwen, synthme):
    try:
        import vllm  # noqa: F401

        pytest.skip("vllm is installed in this environment")
    except ImportError:
        pass
    clip = str(sorted((synthme / "frames").iterdir())[0])
    r = cli("ask", clip, Q, "--model", tiny_qwen, "--backend", "vllm")
    assert r.returncode == 2 and "make vllm" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- mevqa serve --dry-run
def oao_adapter(base, out, r, base_name=None, **recipe):
    return make_adapter(
        base, out, r, {"base_model": str(base_name or base), "frames": {"input": "oao"}, **recipe}
    )


@pytest.fixture(scope="module")
def adapters_dir(tiny_qwen, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    for r in (8, 16, 40):
        oao_adapter(tiny_qwen, root / f"lora-r{r}", r)
    return root


def served(cmd: list[str]) -> str:
    """The model a printed server command serves (`vllm serve M` or `python -m ... --model M`)."""
    return cmd[cmd.index("--model") + 1] if SERVER_MODULE in cmd else cmd[2]


def test_dry_run_builds_a_vllm_command(adapters_dir, tiny_qwen):
    r = cli(
        "serve",
        "--model",
        tiny_qwen,
        "--adapters-dir",
        adapters_dir,
        "--dry-run",
        "--port",
        "8011",
        "--api-key",
        "sekrit",
        "--tensor-parallel-size",
        "2",
    )
    assert r.returncode == 0, r.stderr
    assert "sekrit" not in r.stdout and "VLLM_API_KEY" in r.stdout  # never on argv, where `ps` shows it
    cmd = shlex.split(r.stdout.split("  #")[0])
    assert served(cmd) == str(tiny_qwen) and "serve" in cmd[:5] or SERVER_MODULE in cmd
    assert cmd[cmd.index("--max-lora-rank") + 1] == "64"  # smallest vLLM rank covering 40
    assert cmd[cmd.index("--max-loras") + 1] == "3" and "--enable-lora" in cmd
    mods = cmd[cmd.index("--lora-modules") + 1 : cmd.index("--max-lora-rank")]
    assert sorted(m.split("=")[0] for m in mods) == ["lora-r16", "lora-r40", "lora-r8"]
    # base-model requests may send the default 8 frames, whatever the adapters were trained on
    assert json.loads(cmd[cmd.index("--limit-mm-per-prompt") + 1]) == {"image": 16, "video": 1}
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "2" and "--enable-prefix-caching" in cmd


@pytest.mark.parametrize(
    "flags,warned",
    [
        ([], False),
        (["--host", "0.0.0.0"], True),
        (["--host", "::1"], False),
        (["--host", "0.0.0.0", "--api-key", "k"], False),
    ],
)
def test_serving_beyond_this_machine_without_a_key_warns(tiny_qwen, flags, warned):
    r = cli("serve", "--model", tiny_qwen, "--dry-run", *flags)
    assert r.returncode == 0, r.stderr
    assert ("anyone who can reach port" in r.stderr) == warned, r.stderr


def test_dry_run_refuses_bad_adapters(adapters_dir, tiny_qwen, tiny_idefics3, tmp_path):
    other = oao_adapter(tiny_qwen, tmp_path / "other", 8, base_name="Qwen/Qwen2.5-VL-7B-Instruct")
    r = cli("serve", "--model", tiny_qwen, "--adapter", f"other={other}", "--dry-run")
    assert r.returncode == 2 and "trained on Qwen/Qwen2.5-VL-7B-Instruct" in r.stderr
    for bad in ("../../etc", "..", "x/../../y=/tmp"):
        r = cli("serve", "--model", tiny_qwen, "--adapters-dir", adapters_dir, "--adapter", bad, "--dry-run")
        assert r.returncode == 2 and r.stderr.startswith("error: "), (bad, r.stderr)
    r = cli(
        "serve",
        "--model",
        tiny_qwen,
        "--adapter",
        f"lora-r8={adapters_dir / 'lora-r8'}",
        "--engine",
        "transformers",
        "--dry-run",
    )
    assert r.returncode == 2 and "merge one first" in r.stderr
    r = cli("serve", "--model", tiny_qwen, "--engine", "transformers", "--dry-run", "--port", "9")
    assert r.returncode == 0 and r.stdout.split()[:3] == ["transformers", "serve", str(tiny_qwen)]


def test_serve_compares_base_hashes_not_names(tiny_qwen, tiny_idefics3, tmp_path, monkeypatch):
    """A relative base recorded elsewhere is not another model's name: the config hashes decide."""
    monkeypatch.chdir(tmp_path)
    same = oao_adapter(
        tiny_qwen, tmp_path / "same", 8, base_name="m", base_config_hash=config_hash(tiny_qwen)
    )
    (tmp_path / "m").mkdir()  # a different "m" in this working directory
    r = cli("serve", "--model", tiny_qwen.resolve(), "--adapter", f"a={same}", "--dry-run")
    assert r.returncode == 0, r.stderr
    other = oao_adapter(
        tiny_qwen, tmp_path / "o", 8, base_name=str(tiny_qwen), base_config_hash=config_hash(tiny_idefics3)
    )
    r = cli("serve", "--model", tiny_qwen, "--adapter", f"o={other}", "--dry-run")
    assert r.returncode == 2 and "config hash" in r.stderr


def test_video_url_part_is_a_decodable_mp4(clips, tmp_path):
    import base64

    import decord

    from mevqa.config import FrameConfig
    from mevqa.inputs import load_clip, visual_parts
    from mevqa.prompts import to_openai

    cfg = FrameConfig(frames=6, input="video")
    parts = visual_parts(load_clip(clips["mp4"], cfg), cfg)
    (msg,) = to_openai([Message.user(*parts, Q)], video_as="video_url")
    kinds = [c["type"] for c in msg["content"]]
    assert kinds == ["video_url", "text"]
    url = msg["content"][0]["video_url"]["url"]
    assert url.startswith("data:video/mp4;base64,")
    path = tmp_path / "v.mp4"
    path.write_bytes(base64.b64decode(url.split(",", 1)[1]))
    vr = decord.VideoReader(str(path))
    assert len(vr) == 6 and vr.get_avg_fps() == pytest.approx(2.0)  # the model-facing fps, not 200
    (frames_msg,) = to_openai([Message.user(*parts, Q)])
    assert [c["type"] for c in frames_msg["content"]] == ["image_url"] * 6 + ["text"]


def test_vllm_prompt_uses_the_same_template_and_fps(tiny_qwen, clips):
    """The offline vLLM backend's prompt building, without an engine (test_vllm.py runs a real one)."""
    from mevqa.backends.vllm_offline import VLLMBackend, multi_modal_data
    from mevqa.config import FrameConfig
    from mevqa.inputs import load_clip, visual_parts
    from mevqa.models.loading import load_processor

    proc = load_processor(str(tiny_qwen))
    be = VLLMBackend(llm=None, processor=proc, model_id=str(tiny_qwen))
    for mode in ("frames", "video"):
        cfg = FrameConfig(frames=4, input=mode)
        parts = visual_parts(load_clip(clips["mp4"], cfg), cfg)
        p = be.prompt(VQARequest("v", (Message.user(*parts, Q),)))
        assert p["prompt"].endswith("<|im_start|>assistant\n") and Q in p["prompt"]
        if mode == "frames":
            assert p["prompt"].count("<|image_pad|>") == 4 and len(p["multi_modal_data"]["image"]) == 4
        else:
            frames, meta = p["multi_modal_data"]["video"]
            assert frames.shape[0] == 4 and meta["fps"] == 2.0 and p["mm_processor_kwargs"]["fps"] == 2.0
            assert p["prompt"].count("<|video_pad|>") == 1
    assert multi_modal_data([], []) == ({}, {})


def test_samples_through_a_server_that_ignores_n(served_qwen, tiny_qwen, synthme):
    """transformers serve answers `n` with one choice: the backend asks once per remaining sample."""
    clip = str(sorted((synthme / "frames").iterdir())[0])
    r = cli(
        "ask",
        clip,
        Q,
        "--model",
        tiny_qwen,
        "--json",
        "--samples",
        "3",
        "--temperature",
        "1.5",
        "--backend",
        "openai",
        "--base-url",
        served_qwen.url,
    )
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["samples"]) == 3
