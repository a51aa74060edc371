"""`mevqa serve`: build (and run) the `vllm serve` command for a base model and its LoRA adapters.

`--engine transformers` runs `transformers serve` instead, for CPU-only users (a merged model, no LoRA).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mevqa.errors import InputError, ModelError

# The max_lora_rank values vLLM accepts (vllm/config/lora.py).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# images per prompt each input mode sends (frames: the recorded frame count)
IMAGES_PER_MODE = {"oao": 3, "flow": 1, "diff": 1, "video": 0}


def vllm_lora_rank(rank: int) -> int:
    """The smallest rank vLLM allows that covers `rank`."""
    for r in VLLM_LORA_RANKS:
        if r >= rank:
            return r
    raise InputError(f"LoRA rank {rank} — larger than vLLM's maximum {VLLM_LORA_RANKS[-1]}")


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
    tensor_parallel_size: int = 1
    api_key: str | None = None

    def limits(self) -> dict[str, int]:
        images = max((a.images for a in self.adapters), default=16)
        video = int(any(a.input == "video" for a in self.adapters)) if self.adapters else 1
        return {"image": max(images, 1), "video": video}

    def vllm_command(self) -> list[str]:
        cmd = [
            "vllm",
            "serve",
            self.model,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--tensor-parallel-size",
            str(self.tensor_parallel_size),
            "--limit-mm-per-prompt",
            json.dumps(self.limits(), separators=(",", ":")),
            "--enable-prefix-caching",
        ]
        if self.adapters:
            cmd += [
                "--enable-lora",
                "--lora-modules",
                *(f"{a.name}={a.path}" for a in self.adapters),
                "--max-lora-rank",
                str(vllm_lora_rank(max(a.rank for a in self.adapters))),
                "--max-loras",
                str(len(self.adapters)),
            ]
        if self.api_key:
            cmd += ["--api-key", self.api_key]
        return cmd

    def transformers_command(self) -> list[str]:
        if self.adapters:
            raise InputError(
                "--engine transformers — serves no LoRA adapters; merge one first "
                "(`mevqa adapters merge NAME --out DIR`) and serve DIR as --model"
            )
        return ["transformers", "serve", self.model, "--host", self.host, "--port", str(self.port)]


def _same_base(recorded: str | None, model: str) -> bool:
    if not recorded:
        return True  # nothing recorded: vLLM will check shapes when it loads the adapter
    if recorded == model:
        return True
    a, b = Path(recorded), Path(model)
    return a.exists() and b.exists() and a.resolve() == b.resolve()


def load_adapter(name: str, path: Path, model: str) -> ServeAdapter:
    """Validate one adapter for serving under `name`: a safe name, a PEFT folder, the same base."""
    from mevqa.train.adapters import adapter_rank, recipe

    if not NAME_RE.fullmatch(name) or ".." in name:
        raise InputError(
            f"adapter name {name!r} — use letters, digits, '.', '_' or '-' (it becomes the API model name)"
        )
    if not (path / "adapter_config.json").is_file():
        raise InputError(f"adapter {name} — {path} has no adapter_config.json")
    rec = recipe(path)
    base = rec.get("base_model") or json.loads((path / "adapter_config.json").read_text()).get(
        "base_model_name_or_path"
    )
    if not _same_base(base, model):
        raise ModelError(f"adapter {name} — trained on {base}, not on --model {model}")
    mode = rec.get("input", "frames")
    images = IMAGES_PER_MODE.get(mode, int(rec.get("frames") or 8))
    if mode == "flow" and rec.get("flow_with_oao"):
        images = 4
    return ServeAdapter(name, path.resolve(), adapter_rank(path) or 16, base, mode, images)


def plan(model: str, adapters: list[str], adapters_dir: str | None, **kw) -> ServePlan:
    """`--adapter NAME=PATH` (or a bare NAME under --adapters-dir) and/or every adapter in --adapters-dir."""
    from mevqa.train.adapters import list_adapters, resolve_adapter

    found: list[ServeAdapter] = []
    for spec in adapters:
        name, _, path = spec.partition("=")
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


def wait_ready(proc: subprocess.Popen, url: str, api_key: str | None, timeout: float) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
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


def run(p: ServePlan, engine: str, dry_run: bool, timeout: float = 900) -> int:
    cmd = p.vllm_command() if engine == "vllm" else p.transformers_command()
    if dry_run:
        print(shlex.join(cmd))
        return 0
    print(shlex.join(cmd), file=sys.stderr)
    env = None
    if engine == "transformers":
        import os

        # `transformers serve` lists /v1/models by scanning the HF cache, which must exist
        hub = Path(os.environ.get("HF_HUB_CACHE", Path.home() / ".cache" / "huggingface" / "hub"))
        hub.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HF_HUB_CACHE": str(hub)}
    try:
        proc = subprocess.Popen(cmd, env=env)
    except FileNotFoundError:
        hint = (
            "pip install 'mevqa[vllm]' on a GPU machine"
            if engine == "vllm"
            else "pip install 'transformers[serving]'"
        )
        raise InputError(f"--engine {engine} — `{cmd[0]}` is not installed ({hint})") from None
    try:
        wait_ready(proc, f"http://{p.host}:{p.port}/v1/models", p.api_key, timeout)
        print(
            f"serving on http://{p.host}:{p.port}/v1 — models: {p.model}"
            + "".join(f", {a.name}" for a in p.adapters),
            file=sys.stderr,
        )
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
