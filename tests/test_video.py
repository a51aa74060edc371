"""Clip reading: selectors are pure, and sparse reads equal a full decode at the same indices."""

from __future__ import annotations

import av
import decord
import numpy as np
import pytest
from helpers import N_FRAMES, SIZE, clip_frames, write_folder
from PIL import Image

from mevqa.config import FrameConfig
from mevqa.errors import InputError
from mevqa.video import all_frames, estimate_apex, keyframes, open_clip, sample, uniform


def test_uniform_keeps_ends_and_count():
    assert uniform(100, 8) == [0, 14, 28, 42, 57, 71, 85, 99]
    assert uniform(5, 8) == [0, 1, 2, 3, 4]  # never invents frames
    assert uniform(100, 3, 10, 20) == [10, 15, 20]
    assert uniform(0, 8) == []


def test_keyframes_and_all():
    assert keyframes(100, 10, 40, 70) == [10, 40, 70]
    assert keyframes(100) == [0, 49, 99]
    assert all_frames(10, 64) == list(range(10))
    assert all_frames(1000, 64) == uniform(1000, 64)


def test_folder_sorts_numerically(tmp_path):
    frames = clip_frames(12)
    write_folder(tmp_path / "c", frames)
    clip = open_clip(tmp_path / "c")
    assert [p.name for p in clip.files][:3] == ["img1.jpg", "img2.jpg", "img3.jpg"]
    assert clip.files[9].name == "img10.jpg"


def _full_decode_decord(path):
    vr = decord.VideoReader(str(path))
    return vr.get_batch(list(range(len(vr)))).asnumpy()


def test_video_sparse_equals_full_decode(clips):
    cf = sample(clips["mp4"], FrameConfig(frames=8))
    full = _full_decode_decord(clips["mp4"])
    assert cf.indices == uniform(N_FRAMES, 8)
    for i, frame in zip(cf.indices, cf.frames):
        np.testing.assert_array_equal(frame, full[i])
    assert cf.num_frames == N_FRAMES == len(full)
    assert cf.fps == pytest.approx(200.0)
    assert cf.size == SIZE
    assert cf.timestamps == pytest.approx([i / 200.0 for i in cf.indices])


def test_video_frame_count_matches_pyav(clips):
    with av.open(str(clips["mp4"])) as c:
        n = sum(1 for _ in c.decode(video=0))
    assert open_clip(clips["mp4"]).num_frames == n


def test_folder_sparse_equals_full_read(clips):
    cf = sample(clips["folder"], FrameConfig(frames=5, folder_fps=200))
    files = sorted(clips["folder"].iterdir(), key=lambda p: int(p.stem[3:]))
    for i, frame in zip(cf.indices, cf.frames):
        np.testing.assert_array_equal(frame, np.asarray(Image.open(files[i]).convert("RGB")))
    assert cf.size == SIZE and cf.num_frames == N_FRAMES


def test_folder_reads_only_selected_files(clips, monkeypatch):
    import mevqa.video as video

    opened = []
    real = video._read_image
    monkeypatch.setattr(video, "_read_image", lambda p: opened.append(p.name) or real(p))
    sample(clips["folder"], FrameConfig(frames=4))
    # one read to learn the size, then exactly the four selected frames
    assert len(opened) == 1 + 4


def test_apex_estimated_as_farthest_from_onset(clips):
    clip = open_clip(clips["mp4"])
    apex = estimate_apex(clip, 0, N_FRAMES - 1, probes=N_FRAMES)
    assert abs(apex - 30) <= 2  # the blob is largest at frame 30
    cf = sample(clips["mp4"], FrameConfig(sampling="keyframes"), onset=0, offset=N_FRAMES - 1)
    assert cf.indices[0] == 0 and cf.indices[2] == N_FRAMES - 1 and abs(cf.indices[1] - 30) <= 3


def test_big_frames_are_analysed_shrunk_small_ones_untouched(tmp_path):
    """Flow and the apex search work on at most 1024 px a side (a 4096x4096 pair held 2 GB and took
    15 s at full size); the apex found is the one found at full size, and small frames are left alone."""
    from mevqa.inputs import load_clip, visual_parts
    from mevqa.io import write_mp4
    from mevqa.video import ANALYSIS_MAX_SIDE, shrink

    small = np.zeros((480, 640, 3), np.uint8)
    assert shrink(small) is small
    frames = [np.full((1536, 2048, 3), 60, np.uint8) for _ in range(12)]
    for i, f in enumerate(frames):  # a bright square that grows to frame 7 and shrinks back
        r = 40 * min(i, 14 - i)
        f[700 - r : 700 + r, 1000 - r : 1000 + r] = 220
    path = write_mp4(tmp_path / "big.mp4", frames, 30)
    clip = open_clip(path)
    assert estimate_apex(clip, 0, 11, probes=11) == 7
    cfg = FrameConfig(input="flow", flow_with_oao=True)
    onset, apex, offset, flow = visual_parts(load_clip(path, cfg), cfg)
    assert onset.size == (2048, 1536)  # the model still gets the frames as decoded ...
    assert flow.size == (ANALYSIS_MAX_SIDE, 768)  # ... and the flow drawn at the analysis size


@pytest.mark.parametrize("make", ["missing", "text", "empty_dir", "truncated"])
def test_bad_clips_raise_input_error(tmp_path, clips, make):
    if make == "missing":
        path = tmp_path / "nope.mp4"
    elif make == "text":
        path = tmp_path / "notes.mp4"
        path.write_text("this is not a video\n")
    elif make == "empty_dir":
        path = tmp_path / "empty"
        path.mkdir()
    else:
        path = tmp_path / "cut.mp4"
        data = clips["mp4"].read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=str(path.name)):
        sample(path, FrameConfig())


def test_keyframes_offset_outside_clip_is_an_error(clips):
    with pytest.raises(InputError, match="outside"):
        sample(clips["mp4"], FrameConfig(sampling="keyframes"), onset=0, offset=500)


@pytest.mark.parametrize("mode", ["frames", "video", "oao", "flow", "diff"])
@pytest.mark.parametrize("with_oao", [False, True])
def test_images_per_prompt_is_what_inputs_send(mode, with_oao, clips):
    """`FrameConfig.images` (what `mevqa serve` lets a prompt hold) counts what inputs.py really sends."""
    from mevqa.inputs import load_clip, visual_parts
    from mevqa.prompts import VideoPart

    cfg = FrameConfig(frames=4, input=mode, flow_with_oao=with_oao)
    parts = visual_parts(load_clip(clips["folder"], cfg, 10, 30, 40), cfg)
    assert sum(not isinstance(p, VideoPart) for p in parts) == cfg.images
