"""Real generation through each tiny family, from a video file and a frame folder, as images and as video."""

from __future__ import annotations

import pytest
import torch

from mevqa.backends.base import Backend, VQARequest, load_backend
from mevqa.config import FrameConfig, GenConfig, ModelSpec, ServerSpec
from mevqa.errors import InputError, ModelError
from mevqa.inputs import question_message
from mevqa.models.families import FAMILIES, FAMILY_TABLE
from mevqa.prompts import Message, VideoPart, to_hf, to_openai
from mevqa.video import sample

Q = "What is the coarse expression class?"


@pytest.fixture(scope="module")
def idefics(backend_of):
    return backend_of("idefics3")


# every family in the table, once per input mode it takes
FAMILY_MODES = [(f.name, m) for f in FAMILY_TABLE.values() for m in ("frames", "video")[: 1 + f.video]]


def _ask(backend, clip_path, cfg, questions=(Q,), one_by_one=False):
    cf = sample(clip_path, cfg)
    reqs = [VQARequest(str(i), (question_message(cf, q, cfg),)) for i, q in enumerate(questions)]
    gen = GenConfig(max_new_tokens=8)
    return (
        [a for r in reqs for a in backend.generate([r], gen)] if one_by_one else backend.generate(reqs, gen)
    )


def test_backend_protocol(qwen):
    assert isinstance(qwen, Backend)


@pytest.mark.parametrize("source", ["mp4", "folder"])
@pytest.mark.parametrize("mode", ["frames", "video"])
def test_qwen_generates(qwen, clips, source, mode):
    (ans,) = _ask(qwen, clips[source], FrameConfig(frames=4, input=mode))
    assert ans.ok and ans.text and ans.seconds > 0


@pytest.mark.parametrize("source", ["mp4", "folder"])
def test_idefics3_generates_from_images(idefics, clips, source):
    (ans,) = _ask(idefics, clips[source], FrameConfig(frames=4))
    assert ans.ok and ans.text


def test_idefics3_refuses_video_input(idefics, clips):
    with pytest.raises(ModelError, match="images only"):
        _ask(idefics, clips["mp4"], FrameConfig(frames=4, input="video"))


def test_batched_equals_one_by_one(qwen, clips):
    qs = (Q, "What is the action unit?", "Is the action unit brow lowerer shown on the face?")
    batched = _ask(qwen, clips["mp4"], FrameConfig(frames=4), qs)
    single = _ask(qwen, clips["mp4"], FrameConfig(frames=4), qs, one_by_one=True)
    assert [a.text for a in batched] == [a.text for a in single]


def test_video_fps_reaches_temporal_ids(qwen, clips):
    """The video part carries the model-facing fps, not the camera's 200 fps (Qwen2.5-VL time ids)."""
    cfg = FrameConfig(frames=8, input="video")
    cf = sample(clips["mp4"], cfg)
    req = VQARequest("v", (question_message(cf, Q, cfg),))
    enc = qwen.encode([req])
    # second_per_grid = temporal_patch(2) / fps(2.0) = 1.0 s; 200 fps would give 0.01 and collapse ids.
    assert enc["second_per_grid_ts"].tolist() == [1.0]
    assert enc["video_grid_thw"][0, 0].item() == 4  # 8 frames / temporal patch 2


def test_message_renders_same_parts_for_hf_and_openai(clips):
    cf = sample(clips["mp4"], FrameConfig(frames=3))
    msg = Message.user(*cf.images(), Q)
    chat, images, videos = to_hf([msg])
    assert [c["type"] for c in chat[0]["content"]] == ["image", "image", "image", "text"]
    oa = to_openai([msg])
    assert [c["type"] for c in oa[0]["content"]] == ["image_url"] * 3 + ["text"]
    assert oa[0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    vid = Message.user(VideoPart(tuple(cf.images()), fps=2.0), Q)
    assert to_hf([vid])[2][0].fps == 2.0


def test_unknown_backend_and_misplaced_settings(tiny_qwen):
    with pytest.raises(InputError, match="choose one of transformers, openai, vllm"):
        load_backend(ModelSpec("x", backend="nope"))
    with pytest.raises(InputError, match="need --backend openai"):  # not silently ignored
        load_backend(ModelSpec(str(tiny_qwen)), ServerSpec(base_url=("http://127.0.0.1:9/v1",)))


@pytest.mark.parametrize("family,mode", FAMILY_MODES)
def test_shared_prefix_gives_the_same_answers(backend_of, clips, family, mode):
    """A clip's questions prefilled once (shared images + KV cache) answer exactly as when asked apart;
    a family whose cache cannot be shared (recurrent layers) answers them by the plain batched path."""
    from mevqa.inputs import visual_parts
    from mevqa.prompts import TEMPLATE_EXAMPLES

    backend = backend_of(family)
    cfg = FrameConfig(frames=4, input=mode)
    parts = visual_parts(sample(clips["mp4"], cfg), cfg)
    reqs = [VQARequest(str(i), (Message.user(*parts, q),)) for i, q in enumerate(TEMPLATE_EXAMPLES[:5])]
    gen = GenConfig(max_new_tokens=12)
    pixels = []  # the pixel values the vision tower encoded, call by call

    def count_vision(module, args, kwargs):
        pixels.append(next(t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)).numel())

    tower = backend.model.get_submodule(FAMILY_TABLE[family].vision_modules[0])
    hook = tower.register_forward_pre_hook(count_vision, with_kwargs=True)
    try:
        backend.generate(reqs[:1], gen)
        one_clip, pixels[:] = sum(pixels), []
        backend.share_prefix = True
        shared = [a.text for a in backend.generate(reqs, gen)]
        vision_pixels = sum(pixels)
        backend.share_prefix = False
        plain = [a.text for a in backend.generate(reqs, gen)]
    finally:
        backend.share_prefix = True
        hook.remove()
    assert shared == plain
    # the images went through the tower once for all five questions (unshared: once per question)
    assert vision_pixels == one_clip * (1 if FAMILY_TABLE[family].shared_prefix else len(reqs))


@pytest.mark.parametrize("family", FAMILIES)
def test_several_clips_in_one_batch_answer_as_apart(backend_of, clips, synthme, family):
    """Clips of different prefix lengths (4, 6 and 3 frames) batched together: each clip's images go
    through the model once, and every answer equals the one asked alone."""
    from mevqa.inputs import visual_parts
    from mevqa.prompts import TEMPLATE_EXAMPLES

    backend = backend_of(family)
    sources = [(clips["mp4"], 4), (clips["folder"], 6), (sorted((synthme / "frames").iterdir())[0], 3)]
    reqs = []
    for c, (path, n) in enumerate(sources):
        cfg = FrameConfig(frames=n)
        parts = visual_parts(sample(path, cfg), cfg)
        reqs += [
            VQARequest(f"{c}.{i}", (Message.user(*parts, q),)) for i, q in enumerate(TEMPLATE_EXAMPLES[:3])
        ]
    gen = GenConfig(max_new_tokens=10)
    calls = []
    tower = backend.model.get_submodule(FAMILY_TABLE[family].vision_modules[0])
    hook = tower.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        together = [a.text for a in backend.generate(reqs, gen)]
        vision_runs = sum(calls)
        apart = [a.text for r in reqs for a in backend.generate([r], gen)]
    finally:
        hook.remove()
    assert together == apart and all(together)
    # once per clip for nine questions; unshared, the batch's one plain call sees all the images at once
    assert vision_runs == (3 if FAMILY_TABLE[family].shared_prefix else 1)
