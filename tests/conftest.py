"""Session fixtures: tiny checkpoints of real architectures and real clips, all built offline."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # a stray download must fail loudly, here as for users offline
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from helpers import MEGC_DIR, TransformersServer, clip_frames, free_port, write_folder, write_mp4  # noqa: E402

from mevqa.backends.base import load_backend  # noqa: E402
from mevqa.config import ModelSpec  # noqa: E402
from mevqa.models.tiny import build_tiny  # noqa: E402

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


@pytest.fixture(scope="session")
def served_qwen(tiny_qwen, tmp_path_factory):
    server = TransformersServer(tiny_qwen, free_port(), tmp_path_factory.mktemp("hfcache")).start()
    yield server
    server.stop()


def pytest_addoption(parser):
    parser.addoption("--update-snapshots", action="store_true", help="rewrite tests/snapshots/ from the code")
