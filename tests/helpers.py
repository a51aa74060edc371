"""Helpers the tests import (`from helpers import cli`): clips, in-process and subprocess CLI runs,
adapters, a real `transformers serve`. Fixtures live in conftest.py."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

N_FRAMES = 48
SIZE = (128, 112)  # width, height


def clip_frames(n: int = N_FRAMES, seed: int = 0) -> list[np.ndarray]:
    """Textured frames (so the codec has real work) with a blob that grows, peaks at frame 30 and fades."""
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.integers(0, 255, (SIZE[1], SIZE[0], 3), dtype=np.uint8), (5, 5), 0)
    frames = []
    for i in range(n):
        f = base.copy()
        r = 4 + int(14 * max(0.0, 1 - abs(i - 30) / 12))
        cv2.circle(f, (64, 56), r, (20, 20, 230), -1)
        frames.append(f)
    return frames


def write_mp4(path: Path, frames: list[np.ndarray], fps: float = 200.0) -> Path:
    from mevqa.io import write_mp4 as write

    return write(path, frames, fps)


def write_folder(path: Path, frames: list[np.ndarray]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames, start=1):  # CASME II style: img1.jpg ... img48.jpg, not zero-padded
        cv2.imwrite(str(path / f"img{i}.jpg"), f)
    return path


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `python -m mevqa ARGS` in a fresh interpreter, as a user would (kills, no-traceback checks)."""
    return subprocess.run(
        [sys.executable, "-m", "mevqa", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def cli(*args: str) -> Result:
    """`mevqa ARGS` in this process (what `run_cli` checks, without re-paying start-up and imports)."""
    from mevqa.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse: --help, usage errors
            code = e.code if isinstance(e.code, int) else 2
    return Result(code, out.getvalue(), err.getvalue())


def eval_cli(data, root, model, out, *extra) -> Result:
    return cli(
        *(["eval", "--data", data, "--root", root, "--model", model, "--out", out]),
        "--max-new-tokens",
        "12",
        *extra,
    )


def train_args(synthme: Path, model: Path, out: Path, *extra) -> list[str]:
    """`mevqa train` on SynthME, small and quick: 2 frames, lr 5e-3, no tracker."""
    args = ["train", "--data", synthme / "train.jsonl", "--root", synthme, "--model", model, "--out", out]
    return [
        str(a)
        for a in (*args, "--frames", "2", "--grad-accum", "1", "--lr", "0.005", "--report-to", "none", *extra)
    ]


def served_eval_args(synthme: Path, model: Path, out: Path, url: str, *extra) -> list[str]:
    """`mevqa eval` of SynthME's train file through a server, one request at a time, never stopping on
    errors: what the server-death tests run."""
    args = ["eval", "--data", synthme / "train.jsonl", "--root", synthme, "--model", model, "--out", out]
    server = [
        "--backend",
        "openai",
        "--base-url",
        url,
        "--server-args",
        "concurrency=1,retries=1",
        "--batch-size",
        "1",
    ]
    return [str(a) for a in (*args, *server, "--max-errors", "0", *extra)]


def make_adapter(base: Path, out: Path, r: int = 8, recipe: dict | None = None, seed: int = 0) -> Path:
    """A LoRA adapter on `base`'s language model with random B (a real, non-zero change); `recipe` is
    written as its mevqa.yaml."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_pretrained(base)
    targets = r".*(language_model|text_model).*\.(q_proj|k_proj|v_proj|o_proj)"
    lora = LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(out)
    if recipe is not None:
        (out / "mevqa.yaml").write_text(yaml.safe_dump(recipe))
    return out


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


MEGC_DIR = Path(__file__).resolve().parents[1] / "eval" / "megc"  # the real MEGC files, in the repo


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TransformersServer:
    """`transformers serve MODEL` on 127.0.0.1: a real OpenAI-compatible server process."""

    def __init__(self, model: Path, port: int, cache: Path):
        self.model, self.port, self.cache = model, port, cache
        self.url = f"http://127.0.0.1:{port}/v1"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> TransformersServer:
        exe = Path(sys.executable).with_name("transformers")
        self.cache.mkdir(parents=True, exist_ok=True)  # /v1/models scans the HF cache, which must exist
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(self.cache)}
        self.proc = subprocess.Popen(
            [str(exe), "serve", str(self.model), "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if wait_for_models(self.url, self.proc, timeout):
            return self
        self.stop()
        raise RuntimeError("transformers serve did not come up")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def drain(stream, timeout: float = 60) -> dict:
    """Consume a stream on a thread of its own: {"items": [...]} or {"error": e}; a stream that never
    ends fails the test, not the suite."""
    out = {}

    def run():
        try:
            out["items"] = list(stream)
        except Exception as e:
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "the stream never ended"
    return out


def wait_for_models(url: str, proc: subprocess.Popen, timeout: float) -> bool:
    """Poll a server's GET /models until it answers 200 (True), its process exits or time runs out."""
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                return True
        except httpx.TransportError:
            time.sleep(0.5)
    return False
