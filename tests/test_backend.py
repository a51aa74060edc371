"""Real generation through each tiny family, from a video file and a frame folder, as images and as video."""

from __future__ import annotations

import pytest
import torch
from helpers import drain

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
    msgs = [question_message(cf, q, cfg) for q in questions]
    reqs = [VQARequest(str(i), (m,), prefix_key="clip") for i, m in enumerate(msgs)]
    gen = GenConfig(max_new_tokens=8)
    return (
        [a for r in reqs for a in backend.generate([r], gen)] if one_by_one else backend.generate(reqs, gen)
    )


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
    with pytest.raises(InputError, match="need `model.backend` openai"):  # not silently ignored
        load_backend(ModelSpec(str(tiny_qwen)), ServerSpec(base_url=("http://127.0.0.1:9/v1",)))


@pytest.mark.parametrize("family,mode", FAMILY_MODES)
def test_shared_prefix_gives_the_same_answers(backend_of, clips, family, mode):
    """A clip's questions prefilled once (shared images + KV cache) answer exactly as when asked apart;
    a family whose cache cannot be shared (recurrent layers) answers them by the plain batched path."""
    from mevqa.backends.hf import TransformersBackend
    from mevqa.inputs import visual_parts
    from mevqa.prompts import TEMPLATE_EXAMPLES

    backend = backend_of(family)  # the session's, which shares the prefix; a variant that does not:
    plain = TransformersBackend(backend.model, backend.processor, backend.model_id, share_prefix=False)
    cfg = FrameConfig(frames=4, input=mode)
    parts = visual_parts(sample(clips["mp4"], cfg), cfg)
    reqs = [
        VQARequest(str(i), (Message.user(*parts, q),), prefix_key="clip")
        for i, q in enumerate(TEMPLATE_EXAMPLES[:5])
    ]
    gen = GenConfig(max_new_tokens=12)
    pixels = []  # the pixel values the vision tower encoded, call by call

    def count_vision(module, args, kwargs):
        pixels.append(next(t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)).numel())

    tower = backend.model.get_submodule(FAMILY_TABLE[family].vision_modules[0])
    hook = tower.register_forward_pre_hook(count_vision, with_kwargs=True)
    try:
        backend.generate(reqs[:1], gen)
        one_clip, pixels[:] = sum(pixels), []
        shared = [a.text for a in backend.generate(reqs, gen)]
        vision_pixels = sum(pixels)
        apart = [a.text for a in plain.generate(reqs, gen)]
    finally:
        hook.remove()
    assert shared == apart
    # the images went through the tower once for all five questions (unshared: once per question)
    assert vision_pixels == one_clip * (1 if FAMILY_TABLE[family].shared_prefix else len(reqs))


def _requests(sources: list, questions: int, seeded: bool = False) -> list[VQARequest]:
    """`questions` template questions about each (clip, frames) of `sources`, each clip's under its own
    prefix key; `seeded`: each question with its own seed."""
    from mevqa.inputs import visual_parts
    from mevqa.prompts import TEMPLATE_EXAMPLES

    reqs = []
    for c, (path, n) in enumerate(sources):
        cfg = FrameConfig(frames=n)
        parts = visual_parts(sample(path, cfg), cfg)
        for i, q in enumerate(TEMPLATE_EXAMPLES[:questions]):
            seed = 1000 * c + i if seeded else None
            reqs.append(VQARequest(f"{c}.{i}", (Message.user(*parts, q),), prefix_key=c, seed=seed))
    return reqs


def _together_and_apart(backend, family: str, reqs: list, gen: GenConfig) -> tuple[list, int, list]:
    """The answers of `reqs` in one batch, how many times the vision tower ran for it, and the answers of
    each request asked alone."""
    calls = []
    tower = backend.model.get_submodule(FAMILY_TABLE[family].vision_modules[0])
    hook = tower.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        together = [a.text for a in backend.generate(reqs, gen)]
        vision_runs = sum(calls)
        apart = [a.text for r in reqs for a in backend.generate([r], gen)]
    finally:
        hook.remove()
    return together, vision_runs, apart


@pytest.mark.parametrize("family", FAMILIES)
def test_several_clips_in_one_batch_answer_as_apart(backend_of, clips, synthme, family):
    """Clips of different prefix lengths (4, 6 and 3 frames) batched together: each clip's images go
    through the model once, and every answer equals the one asked alone."""
    backend = backend_of(family)
    sources = [(clips["mp4"], 4), (clips["folder"], 6), (sorted((synthme / "frames").iterdir())[0], 3)]
    reqs = _requests(sources, 3)
    gen = GenConfig(max_new_tokens=10)
    together, vision_runs, apart = _together_and_apart(backend, family, reqs, gen)
    assert together == apart and all(together)
    # once per clip for nine questions; unshared, the batch's one plain call sees all the images at once
    assert vision_runs == (3 if FAMILY_TABLE[family].shared_prefix else 1)


@pytest.mark.parametrize("family", [f for f in FAMILIES if FAMILY_TABLE[f].shared_prefix])
def test_clips_of_one_prefix_length_are_prefilled_in_one_forward(backend_of, synthme, family):
    """Three SynthME clips (the same size and frames: prefixes of one length) prefilled together: the vision
    tower runs once for the three, and every answer equals the one asked alone."""
    backend = backend_of(family)
    reqs = _requests([(p, 4) for p in sorted((synthme / "frames").iterdir())[:3]], 2)
    gen = GenConfig(max_new_tokens=8)
    together, vision_runs, apart = _together_and_apart(backend, family, reqs, gen)
    assert together == apart and all(together)
    assert vision_runs == 1


# ---------------------------------------------------------------- the contract: seeds, keys, failures
def _clip_requests(clips, synthme, questions=3):
    """Three clips' questions, each clip's under its own prefix key, each question with its own seed."""
    sources = [clips["mp4"], clips["folder"], sorted((synthme / "frames").iterdir())[0]]
    return _requests([(p, 3) for p in sources], questions, seeded=True)


@pytest.mark.parametrize("samples", [1, 3])
def test_a_sampled_answer_does_not_depend_on_its_batch(qwen, clips, synthme, samples):
    """The same seeded questions, asked one at a time and four at a time in another order (so each batch
    mixes other clips and other questions): the same answers, every sample."""
    reqs = _clip_requests(clips, synthme)
    gen = GenConfig(max_new_tokens=8, do_sample=True, temperature=1.5, samples=samples)
    alone = {a.id: (a.text, a.samples) for r in reqs for a in qwen.generate([r], gen)}
    shuffled = reqs[::-1][::2] + reqs[::-1][1::2]
    fours = {
        a.id: (a.text, a.samples)
        for k in range(0, len(reqs), 4)
        for a in qwen.generate(shuffled[k : k + 4], gen)
    }
    assert fours == alone
    assert len({text for text, _ in alone.values()}) > 1  # sampled, not one greedy answer
    if samples > 1:
        assert any(len(set(s)) > 1 for _, s in alone.values())


def test_answering_leaves_torchs_global_rng_alone(qwen, clips, synthme):
    """Greedy or sampled, answering never reseeds torch's global RNG: held-out scoring inside training
    must not change the next LoRA dropout draws."""
    reqs = _clip_requests(clips, synthme, questions=2)
    for gen in (GenConfig(max_new_tokens=4), GenConfig(max_new_tokens=4, do_sample=True, samples=2)):
        torch.manual_seed(123)
        expected = torch.rand(3)
        torch.manual_seed(123)
        qwen.generate(reqs, gen)
        assert torch.equal(torch.rand(3), expected), gen


def test_row_sampler_draws_each_row_from_its_own_seed():
    """The sampler alone, on made-up scores: a row's tokens are the same in any batch it is part of."""
    from mevqa.backends.hf import RowSampler

    scores = torch.randn(5, 50, generator=torch.Generator().manual_seed(0))
    ids = torch.zeros(5, 1, dtype=torch.long)

    def picks(rows, steps=6):
        sampler = RowSampler([10 + r for r in rows], temperature=1.3, top_p=0.9)
        return [sampler(ids[rows], scores[rows].clone()).argmax(-1).tolist() for _ in range(steps)]

    together = picks([0, 1, 2, 3, 4])
    for r in range(5):
        assert [step[0] for step in picks([r])] == [step[r] for step in together]
    one_hot = RowSampler([1])(ids[:1], scores[:1].clone())
    assert torch.isfinite(one_hot).sum() == 1  # generate's greedy pick can only take the drawn token


def test_requests_without_a_prefix_key_are_answered_apart(qwen, clips, synthme):
    """No key, no sharing: equal answers, but every question's images go through the vision tower."""
    keyed = _clip_requests(clips, synthme, questions=2)[:2]
    unkeyed = [VQARequest(r.id, r.messages) for r in keyed]
    gen = GenConfig(max_new_tokens=6)
    calls = []
    hook = qwen.model.get_submodule("model.visual").register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        shared = [a.text for a in qwen.generate(keyed, gen)]
        shared_calls, calls[:] = len(calls), []
        apart = [a.text for a in qwen.generate(unkeyed, gen)]
    finally:
        hook.remove()
    assert shared == apart and shared_calls == 1
    assert (
        qwen.prefill_size(qwen.prepare(keyed, gen)).tokens
        < qwen.prefill_size(qwen.prepare(unkeyed, gen)).tokens
    )


def test_a_failing_generate_ends_the_stream_and_the_next_request_is_served(qwen, monkeypatch):
    """A generate that raises in the stream's thread ends the stream with one clear error (no hang),
    and the backend then serves the next request."""

    from mevqa.errors import ModelError

    real = qwen.model.generate
    calls = []

    def fails_once(**kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore")
        return real(**kwargs)

    monkeypatch.setattr(qwen.model, "generate", fails_once)
    req = VQARequest("q", (Message.user("Describe the face."),))
    failed = drain(qwen.stream(req, GenConfig(max_new_tokens=6)))
    assert isinstance(failed.get("error"), ModelError)
    assert "RuntimeError: CUDA error: an illegal memory access" in str(failed["error"])
    served = drain(qwen.stream(req, GenConfig(max_new_tokens=6)))
    assert "error" not in served and served["items"], served


def test_out_of_memory_is_told_by_its_type():
    from mevqa.backends.base import out_of_memory

    try:
        torch.empty(2**62, dtype=torch.uint8)  # the CPU allocator: a plain RuntimeError, told by its text
    except RuntimeError as e:
        cpu = e
    assert out_of_memory(cpu)
    assert out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert out_of_memory(MemoryError())
    try:
        try:
            raise torch.OutOfMemoryError("no room")
        except RuntimeError as inner:
            raise ValueError("the engine failed") from inner
    except ValueError as e:
        assert out_of_memory(e)  # what it was raised from counts
    assert not out_of_memory(RuntimeError("shape mismatch: memory layout of the out tensor"))
    assert not out_of_memory(ValueError("out of memory, said a prompt"))


def test_vllm_out_of_memory_stops_the_run_like_transformers(monkeypatch, tiny_qwen):
    """The offline vLLM backend's failure policy, on an engine stand-in (test_vllm.py runs the real one):
    out of memory raises ModelError with the batch size to try; another failure is error rows."""
    from mevqa.backends.vllm_offline import VLLMBackend

    class Engine:
        error: Exception

        def generate(self, prompts, params, lora_request=None, use_tqdm=False):
            raise self.error

    engine = Engine()
    be = VLLMBackend(llm=engine, processor=None, model_id=str(tiny_qwen))
    monkeypatch.setattr(be, "prompt", lambda r: {"prompt": r.id})
    monkeypatch.setattr(be, "_params", lambda r, gen: None)
    reqs = [VQARequest(str(i), (Message.user(Q),)) for i in range(4)]
    engine.error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    with pytest.raises(ModelError, match=r"out of memory answering 4 questions at once .*\(try 2\)"):
        be.generate(reqs, GenConfig())
    engine.error = RuntimeError("the engine refused this prompt")
    answers = be.generate(reqs, GenConfig())
    assert [a.id for a in answers] == ["0", "1", "2", "3"] and all("refused" in a.error for a in answers)


def test_backend_is_an_abstract_class_with_one_table_of_names():
    from mevqa import config
    from mevqa.backends.base import BACKEND_NAMES, BACKENDS

    with pytest.raises(TypeError, match="abstract"):
        Backend()

    class NoGenerate(Backend):
        name = "x"

    with pytest.raises(TypeError, match="generate"):
        NoGenerate()
    assert BACKEND_NAMES == tuple(BACKENDS)
    assert set(config.BACKEND_NAMES) == set(BACKENDS)  # the settings' --backend choices
