"""Session fixtures (tiny checkpoints of real architectures and real clips, all built offline) and the
two test tiers: `pytest -m "not slow"` (`make test-fast`) runs the pure tests, `pytest` runs them all."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # a stray download must fail loudly, here as for users offline
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from helpers import MEGC_DIR, TransformersServer, clip_frames, free_port, write_folder, write_mp4  # noqa: E402

from mevqa.config import ModelSpec  # noqa: E402

# ---------------------------------------------------------------- the fast tier
# A test that asks for one of these, directly or through another fixture, loads or builds a model, writes
# SynthME or long videos, or starts a server: it is marked `slow` without having to say so.
HEAVY_FIXTURES = frozenset(
    {
        "tiny_of",
        "backend_of",
        "tiny_qwen",
        "qwen",
        "tiny_idefics3",
        "synthme",
        "served_qwen",
        "wide_base",  # test_hostile_setups: `mevqa models tiny --size small`
        "long_videos",  # test_long: SynthME-long videos
        "photo",  # test_synth_long: long videos of a photo face
        "painted",  # test_synth_long: long videos of a painted face
    }
)
# Files whose every test is slow (processes, servers, browsers, vLLM, training): their tests are marked
# whatever fixtures they take, and the fast tier does not even import them.
HEAVY_FILES = frozenset(
    {
        "test_app.py",
        "test_distributed.py",
        "test_face.py",  # dlib's detector and landmark model, in all its tests but one
        "test_families.py",
        "test_qlora.py",
        "test_serve.py",
        "test_train.py",
        "test_vllm.py",
        "test_vllm_families.py",
    }
)
FAST = "not slow"  # the fast tier's -m expression (Makefile: test-fast)
FAST_CPU_SECONDS = 5  # the most CPU a fast test may use; the slowest today use 1.6 s


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
    # only a speed-up: every test of a heavy file is marked slow below, so `-m "not slow"` would
    # deselect them all anyway; not importing them spares the tier torch, bitsandbytes and vLLM imports
    if config.getoption("markexpr") == FAST and collection_path.name in HEAVY_FILES:
        return True
    return None


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if HEAVY_FIXTURES & set(item.fixturenames) or item.path.name in HEAVY_FILES:
            item.add_marker(pytest.mark.slow)


_in_process_only: list[str] = []  # the test now running (fixtures included), while it is a fast one
PROCESS_EVENTS = ("subprocess.Popen", "os.system", "os.posix_spawn", "os.exec", "os.fork")


def _refuse_processes(event: str, args: tuple) -> None:
    # fail closed: a test that starts a process (a CLI run, a server, a browser, a launcher) without being
    # marked slow fails, in both tiers, instead of quietly making the fast one slow
    if not _in_process_only or event not in PROCESS_EVENTS:
        return
    if event == "subprocess.Popen" and args[0] == "fc-list":
        return  # matplotlib asks fontconfig for the fonts once, when it builds its font cache
    raise RuntimeError(
        f"{_in_process_only[0]} starts a process ({event}) but is not marked slow: "
        "add @pytest.mark.slow (or take a fixture in conftest.HEAVY_FIXTURES)"
    )


sys.addaudithook(_refuse_processes)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    # fail closed on time too: a test not marked slow that computes for seconds fails in both tiers (CPU
    # time of the test's own thread, so a loaded machine or a server thread does not count against it)
    if item.get_closest_marker("slow") is not None:
        return (yield)
    start = time.thread_time()
    result = yield
    if (spent := time.thread_time() - start) > FAST_CPU_SECONDS:
        pytest.fail(f"{spent:.1f} s of CPU is not a fast test: mark it slow, or make it lighter")
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    # around setup too, so that a module or session fixture a fast test pulls in is held to it as well
    if item.get_closest_marker("slow") is None:
        _in_process_only.append(item.nodeid)
    try:
        return (yield)
    finally:
        _in_process_only.clear()


@pytest.fixture(scope="session")
def tiny_of(tmp_path_factory) -> Callable[[str], Path]:
    """`tiny_of(family)`: the family's tiny checkpoint, built once per session on first use."""
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            from mevqa.models.tiny import build_tiny  # torch + transformers: paid by the tests that build

            built[family] = build_tiny(family, tmp_path_factory.mktemp("models") / f"tiny-{family}", seed=0)
        return built[family]

    return get


@pytest.fixture(scope="session")
def backend_of(tiny_of) -> Callable[[str], Any]:
    """`backend_of(family)`: its tiny checkpoint loaded once per session (for tests that do not mutate it)."""
    loaded: dict[str, Any] = {}

    def get(family: str) -> Any:
        if family not in loaded:
            from mevqa.backends.base import load_backend

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
