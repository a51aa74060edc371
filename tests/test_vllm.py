"""Real vLLM in the loop: `mevqa serve` starts vLLM's OpenAI server from vLLM's own environment (the CPU
build here, `make vllm`), and what it answers is what the in-process transformers backend answers.

One server per module (base + two adapters: one named with NAME=PATH, one trained by `mevqa train` and
served under its folder's name), loopback only. Greedy answers through vLLM equal the in-process ones;
the offline `--backend vllm` engine equals the server; SIGTERM to `mevqa serve` stops every process it
started; a server that dies mid-eval leaves error rows that a rerun completes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import cli, eval_cli, free_port, make_adapter, served_eval_args, train_args, wait_for_models

from mevqa.data.megc import read_jsonl, row_id
from mevqa.models.loading import config_hash
from mevqa.serve import vllm_python

VLLM_PY = vllm_python()
pytestmark = pytest.mark.skipif(
    VLLM_PY is None, reason="no vLLM environment: build it with `make vllm` (scripts/vllm-env.sh)"
)
# what this 2-core CPU needs: a small KV cache, float32 (the tiny model's dtype), no compilation
ENGINE = ["--dtype", "float32", "--max-model-len", "2048", "--enforce-eager", "--max-images", "8"]
# the same for an in-process `--backend vllm` eval, where the engine's knobs are one --vllm-args flag
EVAL_ENGINE = ["--dtype", "float32", "--vllm-args", "max_model_len=2048,enforce_eager=true,max_images=8"]


def vllm_env(cache: Path) -> dict[str, str]:
    """vLLM's compile caches in a temporary folder, and no KV-cache size of ours: on CPU mevqa sizes it from
    the model (what the tests below check), as it does for users."""
    env = {**os.environ, "VLLM_CACHE_ROOT": str(cache)}
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)
    return env


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (vLLM's API server, engine core and workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def alive(pids: set[int]) -> set[int]:
    out = set()
    for p in pids:
        try:
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.add(p)
    return out


class VLLMServer:
    """`mevqa serve` (which runs vLLM's server) as a user starts it."""

    def __init__(self, model: Path, adapters: list[str], work: Path, engine: list[str] = ENGINE):
        self.model, self.adapters, self.work, self.engine = model, adapters, work, engine
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 400) -> VLLMServer:
        # -v: vLLM's start-up output too goes to serve.log (without it, only to mevqa's own log file)
        args = ["-v", "serve", "--model", str(self.model), "--port", str(self.port), *self.engine]
        for a in self.adapters:
            args += ["--adapter", a]
        env = vllm_env(self.work / "vllm-cache")
        self.log = (self.work / "serve.log").open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mevqa", *args], env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        if wait_for_models(self.url, self.proc, timeout):
            return self
        self.stop()
        raise RuntimeError(f"vLLM did not come up: {(self.work / 'serve.log').read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=120)
        self.log.close()


@pytest.fixture(scope="module")
def adapters(tiny_qwen, synthme, tmp_path_factory):
    """A random LoRA (served as NAME=PATH) and one `mevqa train` trained on 2 frames (served as PATH)."""
    root = tmp_path_factory.mktemp("vllm-adapters")
    rand = make_adapter(
        tiny_qwen,
        root / "rand-lora",
        8,
        {"base_model": str(tiny_qwen), "base_config_hash": config_hash(tiny_qwen)},
    )
    r = cli(*train_args(synthme, tiny_qwen, root / "trained-lora", "--max-steps", "20", "--batch-size", "4"))
    assert r.returncode == 0, r.stderr
    r = cli(
        *train_args(
            synthme, tiny_qwen, root / "q-lora", "--max-steps", "10", "--batch-size", "4", "--method", "qlora"
        )
    )
    assert r.returncode == 0, r.stderr
    return {"rand": rand, "trained": root / "trained-lora", "qlora": root / "q-lora"}


@pytest.fixture(scope="module")
def server(tiny_qwen, adapters, tmp_path_factory):
    s = VLLMServer(
        tiny_qwen,
        [f"rand={adapters['rand']}", str(adapters["trained"]), f"qlora={adapters['qlora']}"],
        tmp_path_factory.mktemp("vllm"),
    ).start()
    yield s
    s.stop()


def as_tokens(text: str) -> str:
    """The same tokens decode to the same text except at a cut-off mid UTF-8 character: transformers
    prints U+FFFD for the partial bytes, vLLM's detokenizer holds them back."""
    return text.rstrip("\ufffd")


def evaluate(synthme, tiny_qwen, out, *extra):
    r = eval_cli(synthme / "test.jsonl", synthme, tiny_qwen, out, "--max-new-tokens", "8", *extra)
    assert r.returncode == 0, r.stdout + r.stderr
    preds = {row_id(p): p["answer"] for p in read_jsonl(Path(out) / "predictions.jsonl")}
    return preds, json.loads((Path(out) / "metrics.json").read_text())["overall"]


@pytest.mark.parametrize("adapter", [None, "rand", "trained", "qlora"])
def test_vllm_answers_equal_in_process(server, adapters, synthme, tiny_qwen, tmp_path, adapter):
    """Base, adapters asked by their NAME, a trained adapter asked by its folder, and a QLoRA adapter on the
    unquantized base (its usual deployment): the same answers and label scores as in-process (8 frames for
    the base, although the trained adapters recorded 2: the server's image limit covers base requests)."""
    local_args = ["--adapter", str(adapters[adapter])] if adapter else []
    remote_args = (
        ["--adapter", str(adapters[adapter]) if adapter == "trained" else adapter] if adapter else []
    )
    local, m_local = evaluate(synthme, tiny_qwen, tmp_path / "local", *local_args)
    remote, m_remote = evaluate(
        synthme,
        tiny_qwen,
        tmp_path / "remote",
        "--backend",
        "openai",
        "--base-url",
        server.url,
        "--server-args",
        "concurrency=4",
        *remote_args,
    )
    differ = {k: (local[k], remote[k]) for k in local if as_tokens(local[k]) != as_tokens(remote[k])}
    assert not differ, differ
    labels = ("coarse_uf1", "coarse_uar", "fine_uf1", "fine_uar", "au_f1", "au_presence_acc", "au_side_acc")
    assert {k: m_local[k] for k in labels} == {k: m_remote[k] for k in labels}


def test_offline_vllm_engine_equals_the_server(server, adapters, synthme, tiny_qwen, tmp_path):
    remote, _ = evaluate(
        synthme,
        tiny_qwen,
        tmp_path / "remote",
        "--backend",
        "openai",
        "--base-url",
        server.url,
        "--adapter",
        str(adapters["trained"]),
    )
    env = vllm_env(tmp_path / "cache")
    out = tmp_path / "offline"
    r = subprocess.run(
        [
            VLLM_PY,
            "-m",
            "mevqa",
            "eval",
            "--data",
            str(synthme / "test.jsonl"),
            "--root",
            str(synthme),
            "--model",
            str(tiny_qwen),
            "--out",
            str(out),
            "--max-new-tokens",
            "8",
            "--adapter",
            str(adapters["trained"]),
            "--backend",
            "vllm",
            *EVAL_ENGINE,
            "-v",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    offline = {row_id(p): p["answer"] for p in read_jsonl(out / "predictions.jsonl")}
    assert offline == remote  # the same engine and detokenizer: exactly equal
    # on CPU the in-process engine reserves what the model needs (2048 tokens x 256 seqs), not 0.9 of RAM
    assert "Explicitly set (0.25/" in r.stdout + r.stderr, (r.stdout + r.stderr)[-3000:]


def test_the_server_sized_its_kv_cache_and_an_eval_runs_beside_it(server, synthme, tiny_qwen, tmp_path):
    """No KV setting of the user's: `mevqa serve` reserved what the tiny model needs (not 0.9 of all RAM),
    and an in-process eval beside it neither starves it nor gets it killed."""
    beside = eval_cli(synthme / "test.jsonl", synthme, tiny_qwen, tmp_path / "local", "--limit", "4")
    assert beside.returncode == 0, beside.stdout + beside.stderr
    r = cli(*served_eval_args(synthme, tiny_qwen, tmp_path / "remote", server.url), "--limit", "4")
    assert r.returncode == 0 and "0 errors" in r.stdout, r.stdout + r.stderr
    assert server.proc.poll() is None
    log = (server.work / "serve.log").read_text()
    assert "--kv-cache-memory-bytes 134217728" in log and "--gpu-memory-utilization" not in log, log[-3000:]
    assert "Explicitly set (0.12/" in log, log[-3000:]  # vLLM's own report of the KV cache it made


def test_unknown_adapter_is_one_clear_error(server, synthme, tiny_qwen, tmp_path):
    r = eval_cli(
        synthme / "test.jsonl",
        synthme,
        tiny_qwen,
        tmp_path / "x",
        "--backend",
        "openai",
        "--base-url",
        server.url,
        "--adapter",
        "nope",
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "not served here" in lines[0] and "rand" in lines[0]


def test_server_death_mid_eval_then_sigterm_stops_all_and_rerun_completes(
    server, synthme, tiny_qwen, tmp_path
):
    """Runs last: SIGTERM to `mevqa serve` mid-eval stops vLLM's every process; the eval's remaining rows
    are error rows (exit 1); with the server back, the same command completes them."""
    out = tmp_path / "run"
    args = served_eval_args(synthme, tiny_qwen, out, server.url, "--max-new-tokens", "16")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mevqa", *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    pred = out / "predictions.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not pred.exists() or len(pred.read_text().splitlines()) < 4):
        time.sleep(0.05)
    family = descendants(server.proc.pid)
    assert len(family) >= 2, family  # vLLM's API server and its engine core at least
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=120) is not None
    deadline = time.time() + 60
    while alive(family) and time.time() < deadline:
        time.sleep(0.5)
    assert not alive(family), f"left running after SIGTERM: {alive(family)}"
    stdout, _ = proc.communicate(timeout=600)
    total = len(read_jsonl(synthme / "train.jsonl"))
    rows = read_jsonl(pred)
    errors = [x for x in rows if x["error"]]
    assert proc.returncode == 1 and len(rows) == total and 0 < len(errors) < total, stdout
    assert any("Connect" in x["error"] for x in errors), errors  # the server gone, named as such
    server.start()
    r = cli(*args)
    assert r.returncode == 0 and f"{len(errors)} answered this run" in r.stdout and ", 0 errors" in r.stdout
    final = read_jsonl(pred)
    assert len({row_id(x) for x in final}) == len(final) == total and not any(x["error"] for x in final)
