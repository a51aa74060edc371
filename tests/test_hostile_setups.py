"""Reliability round 3, the machine around the inputs: an adapter from another base handed to `serve`, vLLM's
CPU backend sizing its KV cache, an OpenAI-compatible server that answers HTML or 50 MB, and `train` on a
read-only or full disk. Real files, real sockets, real processes; no mocks."""

from __future__ import annotations

import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import cli, served_eval_args, train_args
from test_cli_errors import assert_clean_error

from mevqa.backends.base import VQARequest
from mevqa.backends.openai_server import MAX_ANSWER_CHARS, OpenAIBackend
from mevqa.config import GenConfig, VLLMSpec
from mevqa.data.megc import read_jsonl
from mevqa.errors import InputError
from mevqa.models.shapes import safetensors_header
from mevqa.prompts import Message
from mevqa.serve import ServePlan, explain_exit, vllm_on_cpu, vllm_python

VLLM_PY = vllm_python()
ON_CPU = vllm_on_cpu(VLLM_PY) if VLLM_PY else False


# ---------------------------------------------------------------- an adapter of another base, for serve
@pytest.fixture(scope="module")
def plain_adapter(synthme, tiny_qwen, tmp_path_factory):
    """What `mevqa train` wrote on the tiny base, as a plain PEFT folder (no mevqa.yaml naming its base)."""
    root = tmp_path_factory.mktemp("plain")
    r = cli(*train_args(synthme, tiny_qwen, root / "trained", "--max-steps", "1"))
    assert r.returncode == 0, r.stderr
    (root / "plain").mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(root / "trained" / name, root / "plain" / name)
    return root


@pytest.fixture(scope="module")
def wide_base(tmp_path_factory):
    """The same architecture with hidden size 768 (`mevqa models tiny --size small`)."""
    out = tmp_path_factory.mktemp("wide") / "small"
    r = cli("models", "tiny", "--size", "small", "--out", out)
    assert r.returncode == 0, r.stderr
    return out


def test_serve_refuses_a_plain_adapter_of_another_hidden_size(plain_adapter, wide_base, tiny_qwen):
    r = cli("serve", "--model", wide_base, "--adapter", f"plain={plain_adapter / 'plain'}", "--dry-run")
    assert_clean_error(r, "adapter plain")
    assert "size 64, the base's hidden_size is 768" in r.stderr, r.stderr
    r = cli("serve", "--model", wide_base, "--adapter", f"t={plain_adapter / 'trained'}", "--dry-run")
    assert_clean_error(r, "config hash")  # with its mevqa.yaml: the recorded base's config hash
    r = cli("serve", "--model", tiny_qwen, "--adapter", f"plain={plain_adapter / 'plain'}", "--dry-run")
    assert r.returncode == 0, r.stderr  # on its own base it fits


def test_a_corrupt_safetensors_header_is_one_error(tmp_path):
    cases = {"huge.safetensors": (2**62).to_bytes(8, "little"), "short.safetensors": b"\x05"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InputError, match=name):
            safetensors_header(tmp_path / name)


def _cut(src: Path, dst: Path, name: str) -> Path:
    """A copy of the folder `src` whose `name` lost its second half (a killed copy or save)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints"))
    data = (src / name).read_bytes()
    (dst / name).write_bytes(data[: len(data) // 2])
    return dst


def test_weights_cut_short_are_one_error_everywhere(plain_adapter, tiny_qwen, clips, tmp_path):
    """A model, adapter or checkpoint whose safetensors lost its tail: one line naming the file from ask,
    eval's loader, serve and train --resume (the loaders' own SafetensorError was a traceback)."""
    model = _cut(tiny_qwen, tmp_path / "model", "model.safetensors")
    r = cli("ask", clips["mp4"], "What?", "--model", model)
    assert_clean_error(r, "model.safetensors — incomplete")
    adapter = _cut(plain_adapter / "trained", tmp_path / "adapter", "adapter_model.safetensors")
    r = cli("ask", clips["mp4"], "What?", "--model", tiny_qwen, "--adapter", adapter)
    assert_clean_error(r, "adapter_model.safetensors — incomplete")
    r = cli("serve", "--model", tiny_qwen, "--adapter", f"a={adapter}", "--dry-run")
    assert_clean_error(r, "adapter_model.safetensors — incomplete")


# ---------------------------------------------------------------- vLLM's KV cache on CPU
def _kv_per_token(model) -> int:
    """2 (keys, values) x layers x key/value heads x head size x 4 bytes (float32), from config.json."""
    t = json.loads((model / "config.json").read_text())["text_config"]
    head = t["hidden_size"] // t["num_attention_heads"]
    return 2 * t["num_hidden_layers"] * t["num_key_value_heads"] * head * 4


def _dry_run(*args) -> list[str]:
    r = cli("serve", *args, "--dry-run")
    assert r.returncode == 0, r.stderr
    return shlex.split(r.stdout.split("  #")[0])


@pytest.mark.skipif(not ON_CPU, reason="needs vLLM's CPU build (make vllm)")
def test_serve_on_cpu_sizes_the_kv_cache_from_the_model(tiny_qwen, monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    cmd = _dry_run("--model", tiny_qwen, "--max-model-len", "2048")
    assert "--gpu-memory-utilization" not in cmd  # on CPU a share of all RAM, never what we want
    size = int(cmd[cmd.index("--kv-cache-memory-bytes") + 1])
    # 128: vLLM's max_num_seqs on CPU; 64 MiB: the floor
    assert size == max(2048 * 128 * _kv_per_token(tiny_qwen), 64 * 2**20), size
    cmd = _dry_run("--model", tiny_qwen, "--kv-cache-gib", "0.5", "--max-num-seqs", "4")
    assert cmd[cmd.index("--kv-cache-memory-bytes") + 1] == str(2**29) and "--max-num-seqs" in cmd
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # the user's own vLLM setting is kept
    cmd = _dry_run("--model", tiny_qwen)
    assert "--kv-cache-memory-bytes" not in cmd and "--gpu-memory-utilization" not in cmd


@pytest.mark.skipif(not ON_CPU, reason="needs vLLM's CPU build (make vllm)")
def test_serve_on_cpu_refuses_a_kv_cache_larger_than_free_memory(tiny_qwen):
    r = cli("serve", "--model", tiny_qwen, "--kv-cache-gib", "100000")
    assert_clean_error(r, "--kv-cache-gib")
    assert "GiB free" in r.stderr


def test_explicit_kv_cache_wins_over_vllms_env_and_gpu_keeps_its_share(tiny_qwen, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "3")
    p = ServePlan(str(tiny_qwen), engine=VLLMSpec(kv_cache_gib=0.25), cpu=True)
    assert "VLLM_CPU_KVCACHE_SPACE" not in p.env()  # vLLM would let the env var override the flag
    assert p.memory_args() == ["--kv-cache-memory-bytes", str(2**28)]
    gpu = ServePlan(str(tiny_qwen))
    assert gpu.memory_args() == ["--gpu-memory-utilization", "0.9"]


def test_a_vllm_memory_failure_at_start_is_one_line_saying_what_to_set(tiny_qwen):
    """vLLM's own words (vllm/v1/worker/cpu_worker.py) in the tail of a server that died."""
    tail = [
        "Traceback (most recent call last):\n",
        "ValueError: Available memory on node 0 (20.12/23.54 GiB) on startup is less than desired CPU memory "
        "utilization (0.9, 21.19 GiB). On the CPU backend, the `--gpu-memory-utilization` flag ...\n",
        "",
    ]
    p = ServePlan(str(tiny_qwen), cpu=True)
    line = explain_exit(tail, p, "the server exited with code 1")
    assert "\n" not in line and "--kv-cache-gib" in line and "20.12/23.54 GiB" in line, line
    assert explain_exit(["INFO ok\n"], p, "the server exited with code 1") == "the server exited with code 1"


# ---------------------------------------------------------------- train on a read-only or full disk
def test_train_into_a_folder_no_one_may_write_is_one_line(synthme, tiny_qwen, tmp_path):
    """Root ignores file modes, so as root the honest read-only place is /sys (EPERM for everyone)."""
    if os.geteuid() == 0:
        out = "/sys/mevqa-lora"
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        out = str(locked / "lora")
    r = cli(*train_args(synthme, tiny_qwen, out, "--max-steps", "1"))
    assert_clean_error(r, "cannot write")


def _fsize_limit() -> None:
    # ulimit -f: a write past 20 kB fails with EFBIG, the way a full disk fails with ENOSPC (Python ignores
    # SIGXFSZ, so the write returns the error instead of killing the process)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


def test_train_onto_a_full_disk_is_one_line(synthme, tiny_qwen, tmp_path):
    """The adapter's safetensors write fails inside safetensors' Rust code: its error wraps the errno."""
    args = train_args(synthme, tiny_qwen, tmp_path / "lora", "--max-steps", "1")
    r = subprocess.run(
        [sys.executable, "-m", "mevqa", *args],
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=_fsize_limit,  # noqa: PLW1509
    )
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]  # below training's progress bar
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert len(errors) == 1 and "File too large" in errors[0] and r.stderr.rstrip().endswith(errors[0])
    assert "lora" in r.stderr and not (tmp_path / "lora" / "adapter_config.json").exists()


# ---------------------------------------------------------------- a server that is not quite OpenAI
class NotQuiteOpenAI(BaseHTTPRequestHandler):
    """Lists a model like any server; answers chat completions with what `self.server.mode` says: an HTML
    page with status 200, a 50 MB answer (streamed, never held in memory), or a 100 000-character one."""

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, ctype: str, chunks, length: int) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        try:
            for c in chunks:
                self.wfile.write(c)
        except (BrokenPipeError, ConnectionResetError):  # the client stopped reading: what we test
            pass

    def do_GET(self) -> None:
        body = json.dumps({"data": [{"id": "m"}]}).encode()
        self._send(200, "application/json", [body], len(body))

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.server.mode == "html":
            body = b"<html><body><h1>Welcome to nginx!</h1></body></html>"
            return self._send(200, "text/html", [body], len(body))
        n = 50 * 2**20 if self.server.mode == "huge" else 100_000
        head, tail = b'{"choices": [{"message": {"role": "assistant", "content": "', b'"}}]}'
        chunk = b"x" * 2**20
        chunks = [head, *(chunk[: min(2**20, n - i)] for i in range(0, n, 2**20)), tail]
        self._send(200, "application/json", chunks, len(head) + n + len(tail))


@pytest.fixture
def odd_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), NotQuiteOpenAI)
    server.mode = "html"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def _ask(server, n: int = 2) -> list:
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    backend = OpenAIBackend([url], "m", retries=0)
    reqs = [VQARequest(str(i), (Message.user("What is the coarse expression class?"),)) for i in range(n)]
    return backend.generate(reqs, GenConfig(max_new_tokens=8))


def test_an_html_page_with_status_200_is_one_error_per_question(odd_server):
    answers = _ask(odd_server)
    assert [a.text for a in answers] == ["", ""]
    assert all("HTTP 200 but not a chat completion (text/html" in a.error for a in answers), answers


@pytest.mark.parametrize("mode", ["huge", "long"])
def test_an_oversized_answer_is_cut_and_noted(odd_server, mode):
    odd_server.mode = mode
    (a,) = _ask(odd_server, 1)
    assert a.text == "x" * MAX_ANSWER_CHARS and "truncated" in a.error, (len(a.text), a.error)


def test_eval_through_a_server_of_50_mb_answers_writes_a_small_file(odd_server, synthme, tiny_qwen, tmp_path):
    odd_server.mode = "huge"
    url = f"http://127.0.0.1:{odd_server.server_address[1]}/v1"
    args = served_eval_args(synthme, tiny_qwen, tmp_path / "run", url, "--limit", "3")
    r = cli(*args)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stdout + r.stderr
    preds = tmp_path / "run" / "predictions.jsonl"
    rows = read_jsonl(preds)
    assert len(rows) == 3 and all("truncated" in x["error"] for x in rows)
    assert preds.stat().st_size < 3 * (MAX_ANSWER_CHARS + 2000), preds.stat().st_size


@pytest.mark.skipif(not ON_CPU, reason="needs vLLM's CPU build (make vllm)")
def test_a_failing_vllm_start_is_one_line_and_its_traceback_goes_to_the_log(tiny_qwen):
    """A real vLLM refusing a setting: mevqa's one line names the log that holds vLLM's traceback."""
    from helpers import free_port, run_cli

    args = ["--max-model-len", "999999", "--kv-cache-gib", "0.1", "--dtype", "float32", "--enforce-eager"]
    r = run_cli("serve", "--model", tiny_qwen, "--port", str(free_port()), *args, timeout=400)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert last.startswith("error: the server exited with code") and "(its output: " in last, last
    log = Path(last.rsplit("(its output: ", 1)[1].rstrip(")"))
    assert "Traceback" in log.read_text() and "max_model_len" in log.read_text()
    log.unlink()


def test_the_offline_engine_sizes_its_kv_cache_on_cpu_too(tiny_qwen, monkeypatch):
    from mevqa.backends.vllm_offline import memory_kwargs
    from mevqa.config import ModelSpec

    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    spec = ModelSpec(str(tiny_qwen), dtype="float32")
    # 256: vLLM's max_num_seqs for vllm.LLM on CPU
    want = 2048 * 256 * _kv_per_token(tiny_qwen)
    assert memory_kwargs(spec, VLLMSpec(max_model_len=2048), True) == {"kv_cache_memory_bytes": want}
    assert memory_kwargs(spec, VLLMSpec(), False) == {"gpu_memory_utilization": 0.9}
    got = memory_kwargs(spec, VLLMSpec(kv_cache_gib=1, max_num_seqs=2), True)
    assert got == {"kv_cache_memory_bytes": 2**30, "max_num_seqs": 2}
