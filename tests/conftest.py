"""Session fixtures: tiny checkpoints of real architectures and real clips, all built offline."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # a stray download must fail loudly, here as for users offline
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import contextlib  # noqa: E402
import io  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from mevqa.backends.base import load_backend  # noqa: E402
from mevqa.config import ModelSpec  # noqa: E402
from mevqa.models.tiny import build_tiny  # noqa: E402

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
    w = cv2.VideoWriter(
        str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frames[0].shape[1], frames[0].shape[0])
    )
    for f in frames:
        w.write(f)
    w.release()
    return path


def write_folder(path: Path, frames: list[np.ndarray]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames, start=1):  # CASME II style: img1.jpg ... img48.jpg, not zero-padded
        cv2.imwrite(str(path / f"img{i}.jpg"), f)
    return path


@pytest.fixture(scope="session")
def tiny_of(tmp_path_factory) -> Callable[[str], Path]:
    """`tiny_of(family)`: the family's tiny checkpoint, built once per session on first use."""
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny(family, tmp_path_factory.mktemp("models") / f"tiny-{family}", seed=0)
        return built[family]

    return get


@pytest.fixture(scope="session")
def backend_of(tiny_of) -> Callable[[str], Any]:
    """`backend_of(family)`: its tiny checkpoint loaded once per session (for tests that do not mutate it)."""
    loaded: dict[str, Any] = {}

    def get(family: str) -> Any:
        if family not in loaded:
            loaded[family] = load_backend(ModelSpec(str(tiny_of(family)), device="cpu"))
        return loaded[family]

    return get


@pytest.fixture(scope="session")
def tiny_qwen(tiny_of) -> Path:
    return tiny_of("qwen2_5_vl")


@pytest.fixture(scope="session")
def qwen(backend_of):
    """The tiny Qwen2.5-VL loaded once for the session (tests that do not mutate it)."""
    return backend_of("qwen2_5_vl")


@pytest.fixture(scope="session")
def tiny_idefics3(tiny_of) -> Path:
    return tiny_of("idefics3")


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clips")
    frames = clip_frames()
    return {
        "mp4": write_mp4(root / "clip.mp4", frames),
        "folder": write_folder(root / "sub01" / "EP01_1", frames),
    }


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
        "--concurrency",
        "1",
        "--batch-size",
        "1",
        "--retries",
        "1",
    ]
    return [str(a) for a in (*args, *server, "--max-errors", "0", *extra)]


def make_adapter(base: Path, out: Path, r: int = 8, recipe: dict | None = None, seed: int = 0) -> Path:
    """A LoRA adapter on `base`'s language model with random B (a real, non-zero change); `recipe` is
    written as its mevqa.yaml."""
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
    return torch.cuda.is_available()


MEGC_DIR = Path(__file__).resolve().parents[1] / "eval" / "megc"  # the real MEGC files, in the repo


@pytest.fixture(scope="session")
def megc_dir() -> Path:
    assert (MEGC_DIR / "train_casme2.jsonl").is_file(), f"the MEGC files belong in {MEGC_DIR}"
    return MEGC_DIR


@pytest.fixture(scope="session")
def synthme(tmp_path_factory) -> Path:
    """A small SynthME set: 4 subjects x 3 clips, 112 px, 200 fps, with videos."""
    from mevqa.data.synth import synthesize

    return synthesize(
        tmp_path_factory.mktemp("synthme") / "data",
        subjects=4,
        clips_per_subject=3,
        size=112,
        seed=7,
        video=True,
    )


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
        import time

        import httpx

        exe = Path(sys.executable).with_name("transformers")
        self.cache.mkdir(parents=True, exist_ok=True)  # /v1/models scans the HF cache, which must exist
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(self.cache)}
        self.proc = subprocess.Popen(
            [str(exe), "serve", str(self.model), "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("transformers serve did not come up")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def served_qwen(tiny_qwen, tmp_path_factory):
    server = TransformersServer(tiny_qwen, free_port(), tmp_path_factory.mktemp("hfcache")).start()
    yield server
    server.stop()


def pytest_addoption(parser):
    parser.addoption("--update-snapshots", action="store_true", help="rewrite tests/snapshots/ from the code")
