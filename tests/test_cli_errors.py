"""Every bad input gives one `error: ...` line naming the input, exit code 2, and no traceback."""

from __future__ import annotations

import shutil

import pytest
from conftest import run_cli

Q = "What is the coarse expression class?"


def _assert_clean_error(r, name):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and name in lines[0], lines[0]
    assert "Traceback" not in r.stderr


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, clips, tiny_qwen, tiny_idefics3):
    d = tmp_path_factory.mktemp("bad")
    (d / "notes.mp4").write_text("plain text, not a video\n")
    (d / "empty").mkdir()
    data = clips["mp4"].read_bytes()
    (d / "cut.mp4").write_bytes(data[: len(data) // 2])
    noproc = d / "no-processor"
    shutil.copytree(tiny_qwen, noproc)
    (noproc / "processor_config.json").unlink()
    from test_adapter import make_adapter

    make_adapter(tiny_idefics3, d / "other-base-lora")
    return d


@pytest.mark.parametrize(
    "clip,name",
    [
        ("missing.mp4", "missing.mp4"),
        ("notes.mp4", "notes.mp4"),
        ("cut.mp4", "cut.mp4"),
        ("empty", "empty"),
    ],
)
def test_bad_clip(bad_inputs, tiny_qwen, clip, name):
    _assert_clean_error(run_cli("ask", str(bad_inputs / clip), Q, "--model", str(tiny_qwen)), name)


def test_model_dir_without_processor(bad_inputs, clips):
    _assert_clean_error(
        run_cli("ask", str(clips["mp4"]), Q, "--model", str(bad_inputs / "no-processor")), "no-processor"
    )


def test_missing_model_dir(clips, tmp_path):
    _assert_clean_error(run_cli("ask", str(clips["mp4"]), Q, "--model", str(tmp_path / "nomodel")), "nomodel")


def test_adapter_base_mismatch(bad_inputs, clips, tiny_qwen):
    r = run_cli(
        "ask",
        str(clips["mp4"]),
        Q,
        "--model",
        str(tiny_qwen),
        "--adapter",
        str(bad_inputs / "other-base-lora"),
    )
    _assert_clean_error(r, "other-base-lora")


def test_adapter_folder_without_config(clips, tiny_qwen, tmp_path):
    _assert_clean_error(
        run_cli("ask", str(clips["mp4"]), Q, "--model", str(tiny_qwen), "--adapter", str(tmp_path)),
        str(tmp_path),
    )


def test_video_input_on_images_only_model(clips, tiny_idefics3):
    r = run_cli("ask", str(clips["mp4"]), Q, "--model", str(tiny_idefics3), "--input", "video")
    _assert_clean_error(r, "images only")


def test_help_lists_commands():
    r = run_cli("--help")
    assert r.returncode == 0 and "ask" in r.stdout and "models" in r.stdout
