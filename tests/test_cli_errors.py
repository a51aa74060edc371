"""Every bad input gives one `error: ...` line naming the input, exit code 2, and no traceback.

A property, not a list: one table of (command line, the text the line must name) run through the real
`mevqa` entry point in this process, plus a fuzz pass over the readers (JSONL rows, YAML values) and one
subprocess check that a user never sees a traceback.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import yaml
from helpers import cli, eval_cli, make_adapter, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mevqa.config import EvalConfig, from_dict
from mevqa.data.megc import read_jsonl
from mevqa.errors import InputError

Q = "What is the coarse expression class?"


def assert_clean_error(r, name):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and name in lines[0], lines[0]
    assert "Traceback" not in r.stderr + r.stdout


@pytest.fixture(scope="module")
def bad(tmp_path_factory, clips, tiny_qwen, tiny_idefics3, synthme):
    """Broken files of every kind the commands read."""
    d = tmp_path_factory.mktemp("bad")
    (d / "notes.mp4").write_text("plain text, not a video\n")
    (d / "empty").mkdir()
    data = clips["mp4"].read_bytes()
    (d / "cut.mp4").write_bytes(data[: len(data) // 2])
    os.mkfifo(d / "fifo.mp4")
    (d / "tiny").mkdir()
    from PIL import Image

    Image.new("RGB", (1, 1)).save(d / "tiny" / "img1.png")
    noproc = d / "no-processor"
    shutil.copytree(tiny_qwen, noproc)
    (noproc / "processor_config.json").unlink()
    make_adapter(tiny_idefics3, d / "other-base-lora")
    for name, cfg, rec in (("broken-cfg", "{not json", None), ("broken-rec", None, "a: [")):
        lora = make_adapter(tiny_qwen, d / name)
        if cfg:
            (lora / "adapter_config.json").write_text(cfg)
        if rec:
            (lora / "mevqa.yaml").write_text(rec)
    (d / "adapters" / "x").mkdir(parents=True)
    shutil.copytree(d / "other-base-lora", d / "adapters" / "x", dirs_exist_ok=True)
    (d / "adapters" / "x" / "metrics.json").write_text("{oops")
    row = {"id": "a", "dataset": "synthme", "image_id": "x", "subject": "1", "filename": "x"}
    for name, text in {
        "int-question.jsonl": json.dumps({**row, "question": 5}),
        "null-question.jsonl": json.dumps({**row, "question": None}),
        "null-video.jsonl": json.dumps({"video_id": "v", "video": None, "question": Q, "answer": ""}),
        "nested.jsonl": '{"id": "a", "question": ' + "[" * 100000 + "]" * 100000 + "}",
    }.items():
        (d / name).write_text(text + "\n")
    (d / "latin1.jsonl").write_bytes(
        json.dumps({**row, "question": "é"}).encode().replace(b"\\u00e9", b"\xe9")
    )
    (d / "frames-str.yaml").write_text('frames: "8"\n')
    from test_hostile_inputs import alias_bomb, bomb_png

    bomb_png(d / "bomb" / "img1.png", 30000, 30000)  # PIL raises its DecompressionBombError at open
    bomb_png(d / "bomb13k" / "img1.png", 13000, 13000)  # PIL only warns, and decoding takes 500 MB a frame
    for name, text in {
        "alias-bomb.yaml": alias_bomb(),
        "int-key.yaml": "1: 2\n",
        "null-key.yaml": "~: 2\n",
        "int-key-nested.yaml": "frames: {1: 2}\n",
        "deep.yaml": "[" * 100000 + "]" * 100000 + "\n",
        "deep-map.yaml": "frames: " + "{a: " * 40 + "1" + "}" * 40 + "\n",
    }.items():
        (d / name).write_text(text)
    (d / "run-parts").mkdir()
    (d / "run-parts" / "predictions.rank0.jsonl").write_bytes(b'{"id": "a", "answer": "caf\xe9"}\n')
    half = make_adapter(tiny_qwen, d / "half-lora")  # killed while saving: no mevqa.yaml, checkpoints
    (half / "checkpoints" / "step-5").mkdir(parents=True)
    (d / "batch-x.yaml").write_text("batch_size: x\n")
    (d / "afile").write_text("")
    (d / "sheet.xlsx").write_text("not a spreadsheet")
    no_answers = [{**r, "answer": ""} for r in read_jsonl(synthme / "test.jsonl")]
    (d / "gold-empty.jsonl").write_text("".join(json.dumps(r) + "\n" for r in no_answers))
    dup = read_jsonl(synthme / "test.jsonl")
    (d / "dup.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dup + dup[:1]))
    (d / "fifo-frames").mkdir()  # a pipe named like a frame held `ask` until it was killed
    Image.new("RGB", (32, 32)).save(d / "fifo-frames" / "img1.png")
    os.mkfifo(d / "fifo-frames" / "img2.png")
    (d / "in-out").mkdir()  # --data inside --out: eval replaced the questions with its answers
    shutil.copy(synthme / "test.jsonl", d / "in-out" / "predictions.jsonl")
    return d


def _cases(d, clips, tiny_qwen, synthme):
    """(command line, text the error line names)."""
    test, train = str(synthme / "test.jsonl"), str(synthme / "train.jsonl")
    ask = ["ask", str(clips["mp4"]), Q, "--model", str(tiny_qwen)]
    ev = ["eval", "--data", test, "--root", str(synthme), "--model", str(tiny_qwen), "--out", str(d / "run")]
    tr = [
        "train",
        "--data",
        train,
        "--root",
        str(synthme),
        "--model",
        str(tiny_qwen),
        "--out",
        str(d / "lora"),
    ]
    return [
        (["ask", str(d / "missing.mp4"), Q, "--model", str(tiny_qwen)], "missing.mp4"),
        (["ask", str(d / "notes.mp4"), Q, "--model", str(tiny_qwen)], "notes.mp4"),
        (["ask", str(d / "cut.mp4"), Q, "--model", str(tiny_qwen)], "cut.mp4"),
        (["ask", str(d / "empty"), Q, "--model", str(tiny_qwen)], "empty"),
        (["ask", str(d / "fifo.mp4"), Q, "--model", str(tiny_qwen)], "fifo.mp4"),
        (["chat", str(d / "tiny"), "--model", str(tiny_qwen)], "1x1 pixels"),
        (["ask", str(clips["mp4"]), Q, "--model", str(d / "no-processor")], "no-processor"),
        (["ask", str(clips["mp4"]), Q, "--model", str(d / "nomodel")], "nomodel"),
        ([*ask, "--adapter", str(d / "other-base-lora")], "other-base-lora"),
        ([*ask, "--adapter", str(d / "empty")], "empty"),
        ([*ask, "--adapter", str(d / "broken-cfg")], "adapter_config.json"),
        ([*ask, "--adapter", str(d / "broken-rec")], "mevqa.yaml"),
        (["ask", str(clips["mp4"]), Q, "--model", str(d / "../tiny"), "--frames", "0"], "frames"),
        (["ask", str(clips["mp4"]), Q, "--model", str(tiny_qwen), "--backend", "nope"], "--backend"),
        (["adapters", "list", "--dir", str(d / "adapters")], "metrics.json"),
        *[
            (["data", cmd, str(d / f)], f)
            for cmd in ("validate", "stats")
            for f in (
                "int-question.jsonl",
                "null-question.jsonl",
                "latin1.jsonl",
                "nested.jsonl",
                "null-video.jsonl",
            )
        ],
        ([*ev[:2], str(d / "null-video.jsonl"), *ev[3:]], "null-video.jsonl"),
        ([*ev, "--config", str(d / "frames-str.yaml")], "frames"),
        ([*ev, "--config", str(d / "batch-x.yaml")], "batch_size"),
        ([*ev[:-1], str(d / "afile")], "afile"),
        ([*tr[:-1], str(d / "afile")], "afile"),
        ([*ev, "--limit", "0"], "limit"),
        ([*ev, "--limit", "-3"], "limit"),
        ([*ev, "--batch-size", "0"], "batch_size"),
        ([*ev, "--clip-pattern", "{0}"], "clip_pattern"),
        ([*ev, "--clip-pattern", "frames/{image_id"], "clip_pattern"),
        ([*tr, "--epochs", "0"], "epochs"),
        ([*tr, "--lr", "-1"], "lr"),
        ([*tr, "--lora-r", "0"], "lora.r (--lora-r) = 0"),
        (
            [
                "data",
                "convert",
                "--dataset",
                "casme2",
                "--annotations",
                str(d / "sheet.xlsx"),
                "--out",
                str(d / "o"),
            ],
            "sheet.xlsx",
        ),
        (["data", "synth", "--out", str(d / "s"), "--subjects", "0"], "subjects=0"),
        (["score", "--pred", test, "--gold", str(d / "gold-empty.jsonl")], "has no answers"),
        (["score", "--pred", str(d / "dup.jsonl"), "--gold", test], "duplicate id"),
        (["score", "--pred", test, "--gold", str(d / "dup.jsonl")], "duplicate id"),
        (["eval", "--out", str(d / "run")], "data"),
        (["ask", str(d / "bomb"), Q, "--model", str(tiny_qwen)], "bomb/img1.png"),
        (["ask", str(d / "bomb13k"), Q, "--model", str(tiny_qwen)], "bomb13k/img1.png"),
        ([*ev, "--config", str(d / "alias-bomb.yaml")], "alias-bomb.yaml"),
        ([*ev, "--config", str(d / "int-key.yaml")], "key 1"),
        ([*ev, "--config", str(d / "null-key.yaml")], "key None"),
        ([*ev, "--config", str(d / "int-key-nested.yaml")], "key frames.1"),
        ([*ev, "--config", str(d / "deep.yaml")], "nested more than"),
        ([*ev, "--config", str(d / "deep-map.yaml")], "nested more than"),
        ([*tr, "--config", str(d / "int-key.yaml")], "key 1"),
        (["score", "--pred", str(d / "latin1.jsonl"), "--gold", test], "latin1.jsonl"),
        (["score", "--pred", str(d / "run-parts" / "predictions.rank0.jsonl"), "--gold", test], "not UTF-8"),
        ([*ask, "--adapter", str(d / "half-lora")], "incomplete adapter"),
        ([*ev, "--adapter", str(d / "half-lora")], "incomplete adapter"),
        # one 256 KB question held the model for minutes: refused before the model loads
        (["ask", str(clips["mp4"]), "why? " * 500, "--model", str(tiny_qwen)], "2500 characters; at most"),
        ([*ask, "--max-question-chars", "0"], "max_question_chars"),
        (["ask", str(clips["mp4"]), "  ", "--model", str(tiny_qwen)], "question — empty"),
        (["ask", str(clips["mp4"]), "\u200b\ufeff", "--model", str(tiny_qwen)], "question — empty"),
        ([*ev[:4], test, *ev[5:]], "is a file, not a folder"),  # --root given a file: not "no such folder"
        (["ask", str(clips["mp4"]), Q, "--model", "/no/such/model"], "no such directory"),  # not "repo id"
        (["ask", str(d / "fifo-frames"), Q, "--model", str(tiny_qwen)], "img2.png — not a regular file"),
        ([*ev, "--frames", "100000000"], "must be at most 1024"),  # spun picking the indices
        ([*ask, "--samples", "100000000"], "must be at most 64"),  # a MemoryError planning them
        ([*ask, "--max-new-tokens", "999999999999"], "must be at most 32768"),  # generated until killed
        ([*ask, "--folder-fps", "nan"], "folder_fps (--folder-fps) = nan — must be a finite number"),
        ([*ask, "--temperature", "nan"], "temperature"),  # was a warning line and an error line
        (["app", "--model", str(tiny_qwen), "--max-upload-mb", "inf"], "max_upload_mb"),  # a traceback
        (["app", "--model", str(tiny_qwen), "--max-upload-mb", "nan"], "max_upload_mb"),
        ([*ev[:2], str(d / "in-out" / "predictions.jsonl"), *ev[3:-1], str(d / "in-out")], "lies in `out`"),
        # a path with a newline and an escape sequence: still one line, nothing raw reaches the terminal
        (["ask", str(d / "a\nb\x1b[31m.mp4"), Q, "--model", str(tiny_qwen)], "a\\nb\\x1b[31m.mp4"),
        # transformers serve checks no key: "serving with a key" would be open to anyone
        (
            ["serve", "--model", str(tiny_qwen), "--engine", "transformers", "--api-key", "k", "--dry-run"],
            "no key",
        ),
    ]


def test_every_bad_input_is_one_line(bad, clips, tiny_qwen, synthme):
    failures = []
    for args, name in _cases(bad, clips, tiny_qwen, synthme):
        r = cli(*args)
        try:
            assert_clean_error(r, name)
        except AssertionError as e:
            failures.append(f"{' '.join(args[:2])} ... -> {e}")
    assert not failures, "\n".join(failures)
    assert not (bad / "run" / "predictions.jsonl").exists()  # nothing was started


def test_no_traceback_for_a_user_in_a_fresh_process(clips, tiny_qwen, tmp_path):
    r = run_cli("ask", str(tmp_path / "missing.mp4"), Q, "--model", str(tiny_qwen))
    assert_clean_error(r, "missing.mp4")
    r = run_cli("--help")
    assert r.returncode == 0 and "ask" in r.stdout and "models" in r.stdout


def test_video_input_on_images_only_model(clips, tiny_idefics3):
    r = cli("ask", clips["mp4"], Q, "--model", tiny_idefics3, "--input", "video")
    assert_clean_error(r, "images only")


def test_clip_pattern_to_a_video_file_and_video_rows(synthme, tiny_qwen, tmp_path):
    """Patterns and `video` fields that name a file (not a folder) resolve to it."""
    rows = read_jsonl(synthme / "test.jsonl")[:2]
    r = eval_cli(
        synthme / "test.jsonl",
        synthme,
        tiny_qwen,
        tmp_path / "a",
        "--clip-pattern",
        "videos/{image_id}.mp4",
        "--limit",
        "2",
    )
    assert r.returncode == 0 and "0 errors" in r.stdout, r.stdout + r.stderr
    test_rows = [
        {"video_id": f"v{i}", "video": f"{x['image_id']}.mp4", "question": x["question"], "answer": ""}
        for i, x in enumerate(rows)
    ]
    data = tmp_path / "t.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in test_rows))
    r = eval_cli(data, synthme / "videos", tiny_qwen, tmp_path / "b")
    assert r.returncode == 0 and "0 errors" in r.stdout, r.stdout + r.stderr


def test_onset_offset_are_used_by_uniform_sampling(clips, tiny_qwen):
    r = cli(
        "ask",
        clips["folder"],
        Q,
        "--model",
        tiny_qwen,
        "--json",
        "--frames",
        "3",
        "--onset",
        "11",
        "--offset",
        "31",
        "--max-new-tokens",
        "2",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["frames"] == [10, 20, 30]  # files img11..img31 = indices 10..30


# ---------------------------------------------------------------- fuzzing the readers
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)


@pytest.mark.slow  # 300 fuzzed rows: seconds, not milliseconds
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    row=st.dictionaries(
        st.sampled_from(
            ["id", "video_id", "question", "video", "subject", "answer", "image_id", "dataset", "filename"]
        ),
        json_values,
    )
)
def test_jsonl_reader_accepts_or_names_the_line(tmp_path_factory, row):
    path = tmp_path_factory.getbasetemp() / "fuzz.jsonl"
    path.write_text(json.dumps(row) + "\n")
    try:
        (r,) = read_jsonl(path)
    except InputError as e:
        assert str(e).startswith(f"{path}:1 — ")
        return
    assert isinstance(r["question"], str) and ("id" in r or "video_id" in r)


@pytest.mark.slow  # 300 fuzzed configs: seconds, not milliseconds
@settings(max_examples=300, deadline=None)
@given(
    values=st.dictionaries(
        st.sampled_from(
            ["batch_size", "limit", "prompt", "frames", "gen", "model", "server", "seed", "reuse", "nope"]
        ),
        json_values,
    )
)
def test_config_accepts_or_names_the_key(values):
    values = {"data": "d", "out": "o", "model": "m"} | values
    try:
        from_dict(EvalConfig, yaml.safe_load(yaml.safe_dump(values)), "c.yaml")
    except InputError as e:
        assert str(e).startswith("c.yaml: ")


@pytest.mark.slow  # a fresh process
def test_output_into_a_closed_pipe_is_no_traceback(megc_dir):
    """`mevqa ... | head`: the reader leaves early; the writer ends quietly (no BrokenPipeError trace)."""
    import os
    import subprocess
    import sys

    r_fd, w_fd = os.pipe()
    os.close(r_fd)  # the reader is gone before the first write
    p = subprocess.run(
        [sys.executable, "-m", "mevqa", "data", "stats", str(megc_dir / "train_casme2.jsonl")],
        stdout=w_fd,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )
    os.close(w_fd)
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr[-2000:]
    assert p.returncode == 141


def test_a_models_text_reaches_the_terminal_with_its_control_characters_escaped():
    """ask and chat print the model's text: its lines stay lines, an escape sequence (from a model or a
    served endpoint) is shown, not obeyed by the terminal."""
    from mevqa.cli import for_terminal, one_line

    text = "happy\n\tAU12\x1b[2J\x07"
    assert for_terminal(text) == "happy\n\tAU12\\x1b[2J\\x07"
    assert one_line(text) == "happy\\n\\tAU12\\x1b[2J\\x07"
