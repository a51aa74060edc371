"""Inputs from the reliability probe: files that claim more than they hold (pixel bombs, YAML alias bombs),
edits the resume fingerprint must see, output folders two runs or a user share, half-written adapters and
predictions files in another encoding. Each fails in seconds, on one line, or becomes an error row."""

from __future__ import annotations

import io
import shutil
import struct
import time
import zlib
from pathlib import Path

import pytest
from helpers import cli, eval_cli, make_adapter, train_args
from PIL import Image

from mevqa.config import EvalConfig, from_dict, safe_yaml
from mevqa.data.megc import read_jsonl, row_id
from mevqa.errors import InputError, ModelError
from mevqa.io import FolderLock
from mevqa.models.adapters import recipe
from mevqa.models.loading import PROCESSING_FILES, processing_fingerprint
from mevqa.video import open_clip


def bomb_png(path: Path, width: int, height: int) -> Path:
    """A real 1x1 PNG (~70 bytes) whose IHDR chunk claims `width` x `height` (CRC fixed up)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR: length 8..12, type 12..16, data 16..29
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


def alias_bomb(key: str = "batch_size", levels: int = 9, width: int = 9) -> str:
    """A "billion laughs" as the value of `key`: a list whose items are each `width` aliases of the one
    before (9 x 9: 9**9 strings once expanded, as a repr of it in an error message would)."""
    lines = [f"  - &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"  - &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return f"{key}:\n" + "\n".join(lines) + "\n"


# ---------------------------------------------------------------- 1. pixel bombs
@pytest.mark.parametrize("side", [30000, 13000])  # PIL's own DecompressionBombError; PIL only warns
def test_a_frame_claiming_too_many_pixels_is_refused_from_its_header(tmp_path, side):
    bomb_png(tmp_path / "c" / "img1.png", side, side)
    assert (tmp_path / "c" / "img1.png").stat().st_size < 200
    with pytest.raises(InputError, match=r"img1\.png — .*at most 16\.8 MP"):
        open_clip(tmp_path / "c")


def test_a_bomb_later_in_the_folder_is_refused_when_read(tmp_path, clips):
    shutil.copytree(clips["folder"], tmp_path / "c")
    (tmp_path / "c" / "img40.jpg").unlink()
    bomb_png(tmp_path / "c" / "img40.png", 13000, 13000)
    clip = open_clip(tmp_path / "c")
    with pytest.raises(InputError, match=r"img40\.png — frames are 13000x13000 pixels"):
        clip.read([0, 39])


def test_a_video_is_refused_from_its_container_header(clips, monkeypatch):
    import mevqa.video as video

    monkeypatch.setattr(video, "MAX_PIXELS", 100 * 100)  # the 128x112 clip is over this cap
    with pytest.raises(InputError, match=r"clip\.mp4 — frames are 128x112 pixels"):
        open_clip(clips["mp4"])


def test_eval_turns_a_pixel_bomb_clip_into_error_rows(synthme, tiny_qwen, tmp_path):
    root = tmp_path / "clips"
    shutil.copytree(synthme / "frames", root / "frames")
    rows = read_jsonl(synthme / "test.jsonl")
    bombed = rows[0]["filename"]
    (root / "frames" / bombed / "img1.jpg").unlink()
    bomb_png(root / "frames" / bombed / "img1.png", 30000, 30000)
    n = next(i for i, r in enumerate(rows) if r["filename"] != bombed) + 1  # the clip and one more question
    for _ in range(2):  # and the rerun retries it, the same way
        r = eval_cli(synthme / "test.jsonl", root, tiny_qwen, tmp_path / "run", "--limit", str(n))
        assert r.returncode == 1 and f"{n - 1} errors" in r.stdout, r.stdout + r.stderr
    errs = [p for p in read_jsonl(tmp_path / "run" / "predictions.jsonl") if p["error"]]
    assert len(errs) == n - 1 and all("img1.png" in p["error"] and "MP" in p["error"] for p in errs)


# ---------------------------------------------------------------- 2, 3. YAML
def test_alias_bomb_config_fails_fast(synthme, tiny_qwen, tmp_path):
    (tmp_path / "bomb.yaml").write_text(alias_bomb())
    t0 = time.perf_counter()
    bomb = tmp_path / "bomb.yaml"
    r = eval_cli(synthme / "test.jsonl", synthme, tiny_qwen, tmp_path / "run", "--config", bomb)
    assert r.returncode == 2 and "bomb.yaml" in r.stderr and "expands to more than" in r.stderr, r.stderr
    assert time.perf_counter() - t0 < 5
    assert len(r.stderr.strip().splitlines()) == 1


def test_alias_bomb_in_an_adapters_recipe_fails_fast(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "mevqa.yaml").write_text(alias_bomb())
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="mevqa.yaml — unreadable"):
        recipe(tmp_path)
    assert time.perf_counter() - t0 < 2


def test_small_aliases_still_load_and_cycles_are_refused():
    assert safe_yaml("a: &x {r: 8}\nb: *x\n") == {"a": {"r": 8}, "b": {"r": 8}}
    assert safe_yaml("") is None
    with pytest.raises(Exception, match="levels deep"):
        safe_yaml("a: &x [*x]\n")


def test_an_error_shows_a_short_repr_of_a_huge_value():
    """Even a value the YAML check did not stop (built in Python) is shown cut, not expanded."""
    huge: list = ["lol"] * 9
    for _ in range(8):
        huge = [huge] * 9
    t0 = time.perf_counter()
    with pytest.raises(InputError) as e:
        from_dict(EvalConfig, {"data": "d", "out": "o", "model": "m", "batch_size": huge})
    assert time.perf_counter() - t0 < 1 and len(str(e.value)) < 200 and "batch_size" in str(e.value)


# ---------------------------------------------------------------- 4. fingerprint
def test_processing_fingerprint_sees_every_processing_file(tiny_qwen, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(tiny_qwen, model)
    seen = {processing_fingerprint(model)}
    for name in PROCESSING_FILES:
        f = model / name
        f.write_bytes(f.read_bytes() + b" " if f.exists() else b"{}")
        seen.add(processing_fingerprint(model))
    assert len(seen) == len(PROCESSING_FILES) + 1


def test_an_edited_chat_template_recomputes_every_answer(synthme, tiny_qwen, tmp_path):
    model, out = tmp_path / "model", tmp_path / "run"
    shutil.copytree(tiny_qwen, model)
    r = eval_cli(synthme / "test.jsonl", synthme, model, out, "--limit", "3")
    assert r.returncode == 0 and "3 answered this run" in r.stdout, r.stdout + r.stderr
    with (model / "chat_template.jinja").open("a") as f:
        f.write("{# edited #}")
    r = eval_cli(synthme / "test.jsonl", synthme, model, out, "--limit", "3")
    assert r.returncode == 0 and "3 answered this run" in r.stdout, r.stdout + r.stderr


# ---------------------------------------------------------------- 5. train --out
def test_a_second_train_on_one_out_is_refused(synthme, tiny_qwen, tmp_path):
    out = tmp_path / "lora"
    lock = FolderLock(out, "mevqa train")  # the first run, still training
    try:
        r = cli(*train_args(synthme, tiny_qwen, out, "--max-steps", "1"))
    finally:
        lock.release()
    assert r.returncode == 2 and "in use by mevqa train, pid" in r.stderr, r.stderr
    assert not (out / "adapter_config.json").exists()


def test_train_refuses_a_users_folder_unless_overwrite(synthme, tiny_qwen, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("my notes\n")
    (out / "metrics.json").write_text('{"mine": 1}\n')
    r = cli(*train_args(synthme, tiny_qwen, out, "--max-steps", "1"))
    assert r.returncode == 2 and "README.md" in r.stderr and "--overwrite" in r.stderr, r.stderr
    assert (out / "README.md").read_text() == "my notes\n" and not (out / "adapter_config.json").exists()
    r = cli(*train_args(synthme, tiny_qwen, out, "--max-steps", "1", "--overwrite"))
    assert r.returncode == 0, r.stderr
    assert (out / "mevqa.yaml").is_file() and not (out / ".lock").exists()


# ---------------------------------------------------------------- 6. half-written adapters, temp files
def test_a_half_written_adapter_is_refused_and_a_plain_peft_one_is_not(tiny_qwen, tmp_path):
    plain = make_adapter(tiny_qwen, tmp_path / "plain")
    assert recipe(plain) == {}
    half = make_adapter(tiny_qwen, tmp_path / "half")
    (half / "checkpoints" / "step-5").mkdir(parents=True)  # what mevqa train leaves before its mevqa.yaml
    with pytest.raises(ModelError, match="incomplete adapter .* rerun mevqa train --resume"):
        recipe(half)
    killed = make_adapter(tiny_qwen, tmp_path / "killed")
    (killed / ".lock").write_text("mevqa train, pid 1 on host")  # killed before its first checkpoint
    with pytest.raises(ModelError, match="incomplete adapter"):
        recipe(killed)


def test_holding_a_folder_removes_temp_files_of_killed_writes(tmp_path):
    stale = [tmp_path / ".predictions.jsonl.ab3_x9zq.tmp", tmp_path / ".step-3.k2j4h5g6"]
    stale[0].write_text('{"half": ')
    stale[1].mkdir()
    keep = [tmp_path / ".gitignore", tmp_path / "predictions.jsonl", tmp_path / "x.ab3_x9zq.tmp"]
    for k in keep:
        k.write_text("")
    FolderLock(tmp_path).release()
    assert not any(p.exists() for p in stale) and all(k.exists() for k in keep)


# ---------------------------------------------------------------- 7. predictions in another encoding
def test_resume_reads_past_non_utf8_lines(synthme, tiny_qwen, tmp_path):
    out = tmp_path / "run"
    assert eval_cli(synthme / "test.jsonl", synthme, tiny_qwen, out, "--limit", "3").returncode == 0
    pred = out / "predictions.jsonl"
    lines = pred.read_bytes().splitlines(keepends=True)
    pred.write_bytes(b"".join(lines[:2]) + lines[2].replace(b'"answer"', b'"answ\xe9r"'))
    part = out / "predictions.rank1.jsonl"  # a part file a killed two-process run left
    part.write_bytes(b'{"id": "x", "answer": "caf\xe9"}\n')
    r = eval_cli(synthme / "test.jsonl", synthme, tiny_qwen, out, "--limit", "3")
    assert r.returncode == 0 and "1 answered this run" in r.stdout, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and not part.exists()
    ids = [row_id(x) for x in read_jsonl(pred)]  # compacted: UTF-8 again, each question once
    assert ids[:3] == [row_id(x) for x in read_jsonl(synthme / "test.jsonl")[:3]]
