"""Frozen run settings, composed from small specs.

A run is described by values, not code: `ModelSpec` (which model, how loaded), `ServerSpec` (an
OpenAI-compatible server), `VLLMSpec` (vLLM's engine), `FrameConfig` (clip -> model input), `GenConfig`
(generation) and `LoraSpec` are each written once and *held* by `EvalConfig` and `TrainConfig`, never
copied field by field. YAML files use the same nesting (`frames: {input: flow, flow_with_oao: true}`),
and the CLI's flags are generated from these dataclasses (`mevqa/cli/_args.py`): a field added here is
reachable from YAML and from every command that holds its spec, with its type, choices, minimum and help
(the `Attributes:` docstring) checked in one place (`Settings.__post_init__`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import reprlib
import string
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, get_args

import yaml

from mevqa.errors import InputError

# Choices are types: the flag generator and the checks read them, and a type checker sees them
Sampling = Literal["uniform", "whole", "keyframes", "all"]
InputMode = Literal["frames", "video", "oao", "flow", "diff"]
FlowMethod = Literal["farneback", "tvl1"]
BackendName = Literal["transformers", "openai", "vllm"]
PromptStrategy = Literal["plain", "labels", "hierarchical"]
Method = Literal["lora", "qlora", "full"]
FaceMode = Literal["none", "crop"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
SAMPLINGS: tuple[str, ...] = get_args(Sampling)
INPUT_MODES: tuple[str, ...] = get_args(InputMode)
FLOW_METHODS: tuple[str, ...] = get_args(FlowMethod)
BACKEND_NAMES: tuple[str, ...] = get_args(BackendName)
PROMPT_STRATEGIES: tuple[str, ...] = get_args(PromptStrategy)
FACE_MODES: tuple[str, ...] = get_args(FaceMode)
# MEGC questions are under 200 characters; one of 256 KB held the app's model for minutes while every
# other user waited
MAX_QUESTION_CHARS = 2000
MAX_FRAMES = 1024  # frames one clip gives the model (FrameConfig.frames and max_frames)


def setting(default: Any = dataclasses.MISSING, **rules: Any) -> Any:
    """A field with validation rules: `min=N` and `max=N` (inclusive), `above=N` (exclusive),
    `required=True` (must be non-empty), `requires="field"` (that field of this spec must be non-empty),
    `pattern=True` (a clip pattern); `aliases=("--old-flag",)` for the CLI. Choices are `Literal` types.
    `Settings.__post_init__` enforces the rules (and refuses nan and inf for every float)."""
    if isinstance(default, Settings):
        return field(default_factory=lambda: default, metadata=rules)
    return field(default=default, metadata=rules)


class Settings:
    """Base of every spec: checks each value's type and rules when the dataclass is built.

    A YAML value of the wrong type (`frames: "8"`), a value below its minimum (`--batch-size 0`) or outside
    its choices is one `InputError` naming the key, whichever way it came in (YAML, flag, Python).
    """

    FLAG_PREFIX: ClassVar[str] = ""  # e.g. "lora_": LoraSpec.r is the flag --lora-r
    # The one field a scalar YAML section sets (`model: DIR` is `model: {model: DIR}`); None: a section
    # must be a mapping, so `gen: 64` is an error rather than whichever field happens to come first
    SCALAR: ClassVar[str | None] = None
    # A job's sections of rarely used knobs, each with the fields that keep a flag of their own: the
    # others come from --config or one `--<section>-args k=v,...` flag (lighteval's split), so the
    # command's --help stays short. E.g. {"server": ("base_url",)}: --base-url, and --server-args retries=5
    PACKED: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            _check(f.name, getattr(self, f.name), hints(type(self))[f.name], f.metadata)


@functools.cache
def hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


# A bad value is shown in its error at most this long: a value built from YAML aliases can be billions of
# elements once expanded, and a full repr of it would run until the machine gives up.
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80


def show(value: Any) -> str:
    """A short repr of `value` for an error message (cheap whatever its size)."""
    text = _REPR.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _type_name(t: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(t, str(t))


def _check(name: str, value: Any, t: Any, rules: typing.Mapping[str, Any]) -> None:
    args = typing.get_args(t)
    if value is None and type(None) in args:
        return
    base = next((a for a in args if a is not type(None)), t) if args and type(None) in args else t
    origin = typing.get_origin(base)
    if origin is Literal:
        if value not in typing.get_args(base):
            raise InputError(f"{name} = {show(value)} — choose one of {', '.join(map(str, get_args(base)))}")
        return
    if dataclasses.is_dataclass(base):
        ok = isinstance(value, base)
    elif origin is tuple:
        ok = isinstance(value, tuple) and all(isinstance(v, str) for v in value)
    elif base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, base)
    if not ok:
        want = "a list of strings" if origin is tuple else _type_name(base)
        raise InputError(f"{name} = {show(value)} — expected {want}")
    if base is float and not math.isfinite(value):  # nan passes every comparison below
        raise InputError(f"{name} = {show(value)} — must be a finite number")
    if "min" in rules and value < rules["min"]:
        raise InputError(f"{name} = {show(value)} — must be at least {rules['min']}")
    if "max" in rules and value > rules["max"]:
        raise InputError(f"{name} = {show(value)} — must be at most {rules['max']}")
    if "above" in rules and value <= rules["above"]:
        raise InputError(f"{name} = {show(value)} — must be above {rules['above']}")
    if rules.get("pattern") and value is not None:
        _check_pattern(name, value)
    if "requires" in rules:  # a spec whose field must be set here: a job needs ModelSpec.model
        _check(f"{name}.{rules['requires']}", getattr(value, rules["requires"]), str, {"required": True})
    if rules.get("required") and not value:
        raise InputError(f"{name} — required")


def _check_pattern(name: str, pattern: str) -> None:
    """A clip pattern names row fields: `{dataset}/{subject}/{filename}`, not `{0}` or `{image_id`."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
    except ValueError as e:
        raise InputError(f"{name} = {pattern!r} — not a pattern of {{field}} names ({e})") from None
    if not fields or not all(f.isidentifier() for f in fields):
        raise InputError(
            f"{name} = {pattern!r} — use row field names in braces, e.g. {{dataset}}/{{filename}}"
        )


# ---------------------------------------------------------------- the specs
@dataclass(frozen=True)
class CheckpointSpec(Settings):
    """Which checkpoint, and how its weights load: what training and answering share.

    Attributes:
        model: model folder or Hub id (e.g. Qwen/Qwen2.5-VL-7B-Instruct); backend openai: its served name.
        device: cpu, cuda, cuda:1 ... (auto: cuda when available).
        dtype: weights dtype; auto: bf16 on a GPU, fp32 on CPU.
        trust_remote_code: allow the checkpoint's own Python code.
        quant_type: 4-bit data type, nf4 or fp4 (with load_in_4bit or method qlora).
        double_quant: also quantize the 4-bit scales (about 0.4 bit per weight less).
    """

    SCALAR: ClassVar[str | None] = "model"
    model: str = setting("")
    _: dataclasses.KW_ONLY  # ModelSpec(path, adapter) would otherwise set the device
    device: str = "auto"
    dtype: Dtype = "auto"
    trust_remote_code: bool = False
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True


@dataclass(frozen=True)
class ModelSpec(CheckpointSpec):
    """A checkpoint and how it answers: in this process, through a server, with an adapter, in 4-bit.

    Attributes:
        adapter: PEFT LoRA adapter folder; with backend openai, its served name or its folder.
        backend: transformers (in this process), openai (a server: vLLM, transformers serve) or vllm
            (vLLM's engine in this process).
        load_in_4bit: load the base in 4-bit (bitsandbytes) to save memory; adapters still apply.
    """

    adapter: str | None = None
    backend: BackendName = "transformers"
    load_in_4bit: bool = False

    @classmethod
    def of(cls, checkpoint: CheckpointSpec, **inference: Any) -> ModelSpec:
        """`checkpoint` answering with the given inference settings (adapter, backend, load_in_4bit)."""
        shared = {f.name: getattr(checkpoint, f.name) for f in dataclasses.fields(CheckpointSpec)}
        return cls(**shared, **inference)


@dataclass(frozen=True)
class ServerSpec(Settings):
    """An OpenAI-compatible server (used with --backend openai).

    Attributes:
        base_url: server URL ending in /v1, e.g. http://127.0.0.1:8000/v1; repeat for replicas.
        api_key: key for --base-url (default: $MEVQA_API_KEY).
        concurrency: requests in flight per call.
        retries: retries on connection errors and 5xx, never on 4xx.
        image_format: frame encoding over HTTP: png (lossless; a micro-movement is a few pixels) or jpeg.
        video_as: --input video over HTTP: frames (image_url parts) or video_url (one mp4, vLLM).
        timeout: seconds to wait for one answer.
    """

    base_url: tuple[str, ...] = ()
    api_key: str | None = None
    concurrency: int = setting(4, min=1)
    retries: int = setting(3, min=0)
    image_format: Literal["png", "jpeg"] = "png"
    video_as: Literal["frames", "video_url"] = "frames"
    timeout: float = setting(120.0, above=0)

    @property
    def key(self) -> str | None:
        """The API key: api_key, else $MEVQA_API_KEY (the documented way: a flag's value shows in `ps`)."""
        return self.api_key or os.environ.get("MEVQA_API_KEY")


@dataclass(frozen=True)
class VLLMSpec(Settings):
    """vLLM's engine (`--backend vllm` in this process, and `mevqa serve`).

    Attributes:
        tensor_parallel_size: GPUs per model replica.
        gpu_memory_utilization: share of GPU memory vLLM may take (GPU only: on vLLM's CPU backend the
            same flag is a share of all RAM, so there the KV cache is sized instead, see kv_cache_gib).
        max_images: images per prompt the engine accepts.
        max_model_len: context length (default: the model's).
        enforce_eager: no CUDA graphs / compilation (starts faster; the answers are the same).
        max_lora_rank: largest LoRA rank to serve (default: the adapters' own, rounded up).
        kv_cache_gib: KV cache size in GiB (default: on CPU, what max_model_len x max_num_seqs tokens of
            the base need, or $VLLM_CPU_KVCACHE_SPACE; on GPU, gpu_memory_utilization decides).
        max_num_seqs: sequences vLLM runs at once (default: vLLM's, 128 on CPU).
    """

    tensor_parallel_size: int = setting(1, min=1)
    gpu_memory_utilization: float = setting(0.9, above=0)
    max_images: int = setting(16, min=1)
    max_model_len: int | None = setting(None, min=16)
    enforce_eager: bool = False
    max_lora_rank: int | None = setting(None, min=1)
    kv_cache_gib: float | None = setting(None, above=0)
    max_num_seqs: int | None = setting(None, min=1)


@dataclass(frozen=True)
class FaceConfig(Settings):
    """How a face is found, tracked and aligned in a video (mevqa/face.py: dlib's detector + 68 landmarks).

    Attributes:
        mode: crop (find, align and crop the face first: uncropped videos) or none (a face crop already,
            as the MEGC datasets ship clips).
        size: side of the aligned square face crop, in pixels.
        eye_distance: distance between the eye centres in the crop, as a share of its side.
        detect_every: seconds between full detections (landmarks follow the face in between).
        max_gap: seconds a lost face keeps its last box before frames count as faceless.
        smooth: landmark smoothing over time, 0 (none) to just below 1 (heavy): an exponential average.
        detect_width: frames are shrunk to this width for detection (speed; landmarks use full size).
    """

    FLAG_PREFIX: ClassVar[str] = "face_"
    mode: FaceMode = setting("none", aliases=("--face",))
    size: int = setting(224, min=32)
    eye_distance: float = setting(0.36, above=0)
    detect_every: float = setting(1.0, above=0)
    max_gap: float = setting(0.5, min=0)
    smooth: float = setting(0.6, min=0)
    detect_width: int = setting(320, min=64)


@dataclass(frozen=True)
class SpotConfig(Settings):
    """The training-free spotter (mevqa/spot.py): flow of the aligned face between frames i-k and i,
    in the landmark regions, head motion removed, smoothed; peaks above a threshold become intervals.

    Attributes:
        face: the face stage (FaceConfig); the spotter always tracks and aligns the face unless --face none.
        interval: seconds between the two frames whose flow is measured (k = interval x fps).
        analysis_fps: videos faster than this are analysed at this rate (frame numbers stay the video's).
        smooth: seconds of temporal smoothing of the motion signal.
        threshold: peak threshold in robust standard deviations above the signal's median (1.4826 x MAD):
            relative to each video's own signal, so a noisy camera does not flood the output.
        min_duration: shortest interval kept, in seconds.
        max_duration: longest interval kept, in seconds (longer motion is not an expression: talking, a turn).
        micro_max: intervals up to this many seconds are micro-expressions, longer ones macro.
        blink: an event whose eye regions moved this many times more than brows, nose and mouth is a blink
            and is dropped (the datasets do not annotate blinks); `--tune` picks it per face.
        hold: longest pause, in seconds, between a movement and its return (opposite flow) that still
            makes them one event.
        flow_size: side of the aligned face the flow is computed on, in pixels (smaller is faster).
    """

    face: FaceConfig = setting(FaceConfig(mode="crop"))
    interval: float = setting(0.2, above=0)
    analysis_fps: float = setting(50.0, above=0)
    smooth: float = setting(0.1, min=0)
    threshold: float = setting(5.0, above=0)
    min_duration: float = setting(0.1, min=0)
    max_duration: float = setting(4.0, above=0)
    micro_max: float = setting(0.5, above=0)
    blink: float = setting(1.2, above=0)
    hold: float = setting(1.0, min=0)
    flow_size: int = setting(112, min=16)


@dataclass(frozen=True)
class FrameConfig(Settings):
    """How a clip becomes model input.

    Attributes:
        frames: how many frames uniform (and whole) sampling takes.
        sampling: uniform (evenly spaced between the row's onset and offset, or over the clip without
            them), whole (over the whole clip, onset and offset ignored, as other harnesses sample),
            keyframes (onset/apex/offset) or all (every frame, up to max_frames).
        input: frames (N images), video (one video part), oao (onset/apex/offset images), flow
            (optical-flow image onset -> apex) or diff (apex - onset).
        max_frames: cap for --sampling all.
        folder_fps: frame rate of a frame folder (CASME II and SAMM were filmed at 200 fps).
        video_fps: the frame rate the *model* is told for a video part. Qwen2.5-VL spaces temporal ids
            by 1/fps; it was trained on ~2 fps samples, and 200 fps collapses all frames onto one id.
        flow_with_oao: with --input flow, show onset, apex and offset before the flow image.
        flow_method: optical flow for --input flow: farneback or tvl1 (OpenCV contrib's DualTVL1).
        face: the face stage (FaceConfig): --face crop aligns and crops the face before sampling.
    """

    # at most MAX_FRAMES a clip: a VLM takes tens, and --frames 100000000 spun on picking the indices
    frames: int = setting(8, min=1, max=MAX_FRAMES)
    sampling: Sampling = "uniform"
    input: InputMode = "frames"
    max_frames: int = setting(64, min=1, max=MAX_FRAMES)
    folder_fps: float = setting(200.0, above=0, aliases=("--fps",))
    video_fps: float = setting(2.0, above=0)
    flow_with_oao: bool = False
    flow_method: FlowMethod = "farneback"
    face: FaceConfig = setting(FaceConfig())

    @property
    def images(self) -> int:
        """Images one prompt holds in this mode (what a server must accept per request; inputs.py makes
        them): video frames go as one video part, not images."""
        keyframe = {"oao": 3, "diff": 1, "flow": 4 if self.flow_with_oao else 1}
        return 0 if self.input == "video" else keyframe.get(self.input, self.frames)


@dataclass(frozen=True)
class GenConfig(Settings):
    """How answers are generated; greedy by default so answers are reproducible.

    Attributes:
        max_new_tokens: answer length cap, in tokens.
        do_sample: sample instead of greedy decoding (implied by --samples above 1).
        temperature: sampling temperature.
        top_p: nucleus sampling mass.
        samples: answers drawn per question; above 1 the answer is the majority label (self-consistency).
    """

    max_new_tokens: int = setting(48, min=1, max=32768)  # a ceiling: 999999999999 generated until killed
    do_sample: bool = False
    temperature: float = setting(1.0, above=0)
    top_p: float = setting(1.0, above=0)
    samples: int = setting(1, min=1, max=64)  # 100000000 samples ran out of memory planning them

    @property
    def sampling(self) -> bool:
        return self.do_sample or self.samples > 1


@dataclass(frozen=True)
class LoraSpec(Settings):
    """The LoRA adapter trained by --method lora / qlora.

    Attributes:
        r: LoRA rank.
        alpha: LoRA alpha (scale = alpha / r).
        dropout: dropout on the LoRA input.
        target_modules: regex of the module names to adapt (default: the language model's projections,
            as mevqa/models/families.py names them for the base's architecture).
        vision: also adapt the vision tower (vLLM ignores it unless its tower-LoRA option is on).
        projector: also adapt the vision-language projector.
    """

    FLAG_PREFIX: ClassVar[str] = "lora_"
    r: int = setting(16, min=1)
    alpha: int = setting(32, min=1)
    dropout: float = setting(0.05, min=0)
    target_modules: str = ""
    vision: bool = False
    projector: bool = False


# ---------------------------------------------------------------- the jobs
# What the answering commands (ask, chat, eval, app) take from --config or `--<section>-args k=v,...`
# rather than flags of their own: server and vLLM engine knobs, the face tracker's, 4-bit details
ANSWERING_PACKED: dict[str, tuple[str, ...]] = {
    "model": ("model", "adapter", "backend", "device", "dtype", "trust_remote_code", "load_in_4bit"),
    "server": ("base_url",),
    "vllm": (),
    "frames": ("frames", "sampling", "input", "folder_fps", "flow_with_oao", "face"),
    "frames.face": ("mode",),
    "gen": ("max_new_tokens", "do_sample", "temperature", "samples"),
}


@dataclass(frozen=True)
class AnsweringSpec(Settings):
    """What asking a model about clips takes, for one clip (ask, chat, the app) or a file of questions (eval).

    Attributes:
        prompt: plain, labels (the label set appended) or hierarchical (coarse first, then given).
        seed: seed for sampled answers.
        spot_recipe: spotter settings for long videos (the spot_recipe.yaml of `mevqa spot --tune`).
        threads: torch CPU threads (default: one per core); recorded in the run record.
    """

    PACKED: ClassVar[dict[str, tuple[str, ...]]] = ANSWERING_PACKED
    model: ModelSpec = setting(ModelSpec(), requires="model")
    frames: FrameConfig = setting(FrameConfig())
    gen: GenConfig = setting(GenConfig())
    server: ServerSpec = setting(ServerSpec())
    vllm: VLLMSpec = setting(VLLMSpec())
    prompt: PromptStrategy = "plain"
    seed: int = 0
    spot_recipe: str | None = None
    threads: int | None = setting(None, min=1)


@dataclass(frozen=True)
class AskConfig(AnsweringSpec):
    """`mevqa ask` and `mevqa chat`: one clip, one model.

    Attributes:
        onset: onset frame (a folder's file number; a video's index).
        apex: apex frame (default: the frame farthest from onset).
        offset: offset frame.
        event: ask about the N-th event `mevqa spot` finds (1 = the first): its onset, apex, offset.
        spot_recipe: spotter settings for event (the spot_recipe.yaml of `mevqa spot --tune`).
        max_question_chars: longest question accepted (characters).
    """

    onset: int | None = setting(None, min=0)
    apex: int | None = setting(None, min=0)
    offset: int | None = setting(None, min=0)
    event: int | None = setting(None, min=1)
    max_question_chars: int = setting(MAX_QUESTION_CHARS, min=1)


@dataclass(frozen=True)
class UploadLimits(Settings):
    """What the users of `mevqa app` may cost it (the model settings are an AskConfig). A real ME clip is a
    few hundred frames of at most ~2k x 1k pixels.

    Attributes:
        max_upload_mb: the largest upload, in MB.
        max_unpacked_mb: a zip's frames uncompressed, in total, in MB.
        max_members: frames in a zip.
        max_side: a frame's width or height, in pixels.
        max_video_frames: frames in a video.
        max_disk_mb: every session's uploads and Gradio's cache together, in MB.
        idle_minutes: a session untouched this long loses its uploads (API clients never say they left).
        decode_megapixels: frame pixels decoded at once over all users; a clip above it decodes alone.
    """

    max_upload_mb: float = setting(50.0, above=0)
    max_unpacked_mb: float = setting(500.0, above=0)
    max_members: int = setting(2000, min=1)
    max_side: int = setting(4096, min=1)
    max_video_frames: int = setting(20000, min=1)
    max_disk_mb: float = setting(4096.0, above=0)
    idle_minutes: float = setting(30.0, above=0)
    # one 16-frame 4096x4096 clip (+ its 3 flow frames) took ~3 GB while decoding; four at once killed the app
    decode_megapixels: float = setting(4096 * 4096 * 19 / 1e6, above=0)


@dataclass(frozen=True)
class AppConfig(AskConfig):
    """`mevqa app`: the model settings of ask and chat, and what the app's users may cost it.

    Attributes:
        limits: upload, disk and decoding limits (UploadLimits); the ones an operator usually sizes are
            flags, the others `--limits-args k=v,...`.
    """

    PACKED: ClassVar[dict[str, tuple[str, ...]]] = {
        **ANSWERING_PACKED,
        "limits": ("max_upload_mb", "max_disk_mb", "idle_minutes"),
    }
    limits: UploadLimits = setting(UploadLimits())


@dataclass(frozen=True)
class SpotJob(Settings):
    """`mevqa spot`: find expression intervals in long videos, resumably (one pass a video).

    Attributes:
        out: output folder: intervals.jsonl / intervals.csv, and per video its signal and timeline PNG.
        spot: the spotter's settings (SpotConfig).
        data: long-video annotation sheet (CSV/XLSX): spot its videos and score against it.
        root: folder holding the videos of --data (VIDEO.mp4, VIDEO/ frame folders, or SUBJECT/VIDEO...).
        fps: the videos' frame rate (default: a video file's own; a frame folder's is --folder-fps).
        folder_fps: frame rate of a frame folder (SAMM long videos: 200).
        tune: choose the interval, threshold, hold and blink ratio that maximise spotting F1 on --data; writes
            OUT/spot_recipe.yaml, which --config takes.
        overwrite: discard earlier results in --out.
    """

    out: str = setting("", required=True)
    spot: SpotConfig = setting(SpotConfig())
    data: str | None = None
    root: str | None = None
    fps: float | None = setting(None, above=0)
    folder_fps: float = setting(200.0, above=0)
    tune: bool = False
    overwrite: bool = False


@dataclass(frozen=True)
class DataSpec(Settings):
    """Where the questions and their clips are: what eval, train and `data validate` share.

    Attributes:
        data: MEGC-style JSONL of questions (with answers to train on or score against, or a test file).
        root: folder holding the clips.
        clip_pattern: clip path under root, e.g. {dataset}/{subject}/{filename} or videos/{image_id}.mp4.
    """

    data: str = setting("", required=True)
    root: str | None = None
    clip_pattern: str | None = setting(None, pattern=True)


@dataclass(frozen=True)
class EvalConfig(AnsweringSpec, DataSpec):
    """`mevqa eval`: answer every question of a MEGC file, resumably, and score it.

    Attributes:
        task: vqa (short clips: a MEGC JSONL), str (ME-STR: --data is a long-video annotation sheet; spot,
            then the emotion of each interval; STRS) or lvqa (ME-LVQA: --data is a question file; spot, then
            the AUs of each event; counts, AU inventory, event types). See eval/PROTOCOL.md.
        data: MEGC JSONL (train-style with answers, or a test file to answer); with --task str a sheet.
        out: output folder (predictions, metrics, report, submission files).
        prompt: plain, labels (append the label set) or hierarchical (coarse first; the rest given it).
        batch_size: questions per batch (whole clips; a clip's questions stay together).
        limit: only the first N questions (the answers already in --out for other questions are kept).
        label_set: UF1/UAR classes: gt (ground truth) or union (with the predictions).
        seed: random seed for sampled answers (--samples, --do-sample).
        reuse: decode each clip once for all its questions (--no-reuse: per question, a benchmark baseline).
        overwrite: discard earlier predictions in --out.
        max_errors: stop after this many failed answers in a row (0: never stop).
        spot_recipe: spotter settings for --task str|lvqa (the spot_recipe.yaml of `mevqa spot --tune`).
        plots: confusion-matrix PNGs (coarse, fine) where the gold answers hold two classes or more.
    """

    task: Literal["vqa", "str", "lvqa"] = "vqa"
    out: str = setting("", required=True)
    batch_size: int = setting(8, min=1)
    limit: int | None = setting(None, min=1)
    label_set: Literal["gt", "union"] = "gt"
    reuse: bool = True
    overwrite: bool = False
    max_errors: int = setting(20, min=0)
    plots: bool = True


@dataclass(frozen=True)
class TrainConfig(DataSpec):
    """`mevqa train`: a recipe; `adapters/recipes/*.yaml` use the same keys.

    Attributes:
        data: training JSONL (rows with answers).
        out: adapter folder to write, e.g. adapters/my-lora.
        eval_data: held-out JSONL, scored after every epoch (or every --eval-every steps).
        prompt: plain, labels or hierarchical (trained with the gold coarse class as the hint).
        method: lora, qlora (4-bit base, bitsandbytes) or full (every weight; small models).
        question_types: train only on these question types (coarse, fine, au_list, ...).
        lr: peak learning rate (cosine schedule with warm-up).
        epochs: passes over the data.
        max_steps: stop after N optimizer steps (overrides --epochs).
        batch_size: samples per device per micro-step.
        grad_accum: micro-steps per optimizer step.
        warmup_ratio: share of the steps spent warming up.
        weight_decay: AdamW weight decay.
        max_grad_norm: gradient clipping norm.
        grad_checkpointing: trade compute for memory.
        seed: seed for data order and LoRA init.
        save_every: checkpoint every N steps (0: never).
        log_every: progress-bar loss every N steps.
        eval_limit: held-out questions scored (default: all).
        eval_every: score held-out data every N steps (default: at the end of every epoch).
        resume: continue from the latest checkpoint in --out.
        overwrite: replace an adapter already in --out.
        report_to: experiment tracker: tensorboard (into --out/runs), wandb or none.
    """

    out: str = setting("", required=True)
    model: CheckpointSpec = setting(CheckpointSpec(), requires="model")
    frames: FrameConfig = setting(FrameConfig())
    gen: GenConfig = setting(GenConfig())
    lora: LoraSpec = setting(LoraSpec())
    eval_data: str | None = None
    prompt: PromptStrategy = "plain"
    method: Method = "lora"
    question_types: tuple[str, ...] | None = None
    lr: float = setting(1e-4, above=0)
    epochs: float = setting(3.0, above=0)
    max_steps: int | None = setting(None, min=1)
    batch_size: int = setting(1, min=1)
    grad_accum: int = setting(8, min=1)
    warmup_ratio: float = setting(0.03, min=0)
    weight_decay: float = setting(0.0, min=0)
    max_grad_norm: float = setting(1.0, above=0)
    grad_checkpointing: bool = False
    seed: int = 0
    save_every: int = setting(200, min=0)
    log_every: int = setting(10, min=1)
    eval_limit: int | None = setting(None, min=1)
    eval_every: int | None = setting(None, min=1)
    resume: bool = False
    overwrite: bool = False
    report_to: Literal["tensorboard", "wandb", "none"] = "tensorboard"

    def eval_config(self, data: str = "-", out: str = "-", **inference: Any) -> EvalConfig:
        """The eval settings that answer like this recipe (held-out scoring, cross-validation), with the
        checkpoint's inference settings (`adapter=...`)."""
        return EvalConfig(
            data=data,
            out=out,
            root=self.root,
            clip_pattern=self.clip_pattern,
            model=ModelSpec.of(self.model, **inference),
            frames=self.frames,
            gen=self.gen,
            prompt=self.prompt,
            seed=self.seed,
        )


# TrainConfig settings that `mevqa cv` decides per fold: not its flags (a YAML recipe's are overridden)
CV_PER_FOLD = ("eval_data", "eval_every", "eval_limit", "resume", "overwrite")


@dataclass(frozen=True)
class CVConfig(Settings):
    """`mevqa cv`: subject-independent cross-validation with a training recipe.

    Attributes:
        train: the training recipe of every fold (its data: the whole labelled set; its out: the
            cross-validation folder). Each fold trains on the other subjects and is scored on its own, so
            eval_data, eval_every, eval_limit, resume and overwrite are decided per fold; a finished fold
            is kept on a rerun.
        folds: loso (leave one subject out) or N (subject-grouped k-fold, balanced by question count).
        fold_seed: seed of the split (written to folds.json and reused on every rerun).
        eval_batch_size: questions per batch when a fold's held-out subjects are answered.
    """

    train: TrainConfig
    folds: str = "5"
    fold_seed: int = 0
    eval_batch_size: int = setting(8, min=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.folds != "loso" and not (self.folds.isdigit() and int(self.folds) >= 2):
            raise InputError(f"folds = {self.folds!r} — use loso or a number of folds of at least 2")

    @staticmethod
    def nest(values: dict[str, Any]) -> dict[str, Any]:
        """A flat training recipe (`adapters/recipes/*.yaml`) as cv settings: its keys go under `train`."""
        if "train" in values:
            return values
        own = {f.name for f in dataclasses.fields(CVConfig)}
        return {k: v for k, v in values.items() if k in own} | {
            "train": {k: v for k, v in values.items() if k not in own}
        }


# ---------------------------------------------------------------- dicts and YAML
T = TypeVar("T")


def from_dict(cls: type[T], values: Any, source: str = "config", path: str = "") -> T:
    """Build `cls` from nested `values`, naming any unknown key or bad value (with its YAML path).

    A section is a mapping; the one exception is a spec's `SCALAR` field: `model: DIR` is
    `model: {model: DIR}`.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = _section(cls, values, source, path)
    odd = [k for k in values if not isinstance(k, str)]  # YAML `1:` or `~:` keys are ints and None
    if odd:
        raise InputError(
            f"{source}: key {path}{show(odd[0])} — keys are setting names; valid keys: "
            f"{', '.join(path + n for n in fields)}"
        )
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise InputError(
            f"{source}: unknown key(s) {', '.join(path + u for u in unknown)} — valid keys: "
            f"{', '.join(path + n for n in fields)}"
        )
    kwargs = {}
    for k, v in values.items():
        t = hints(cls)[k]
        if dataclasses.is_dataclass(t):
            kwargs[k] = from_dict(t, _over_default(fields[k], v), source, f"{path}{k}.")
        else:
            kwargs[k] = tuple(v) if isinstance(v, list) else v
    try:
        return cls(**kwargs)
    except InputError as e:
        raise InputError(f"{source}: {path}{e}") from None


def _over_default(f: dataclasses.Field, values: Any) -> Any:
    """A spec given in part is laid over its field's default, not its class's: `spot: {face: {size: 160}}`
    keeps SpotConfig's face mode `crop` (FaceConfig's own default is `none`)."""
    if not isinstance(values, dict) or f.default_factory is dataclasses.MISSING:
        return values
    return merge(to_dict(f.default_factory()), values)


def to_dict(settings: Any) -> dict[str, Any]:
    """Plain nested dict (lists, not tuples): what YAML and JSON files record."""
    return json.loads(json.dumps(dataclasses.asdict(settings)))


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`, section by section (both already `expand`ed)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _section(cls: type, values: Any, source: str, path: str) -> Any:
    """`values` as the mapping of section `cls` (a scalar only where the spec names its SCALAR field)."""
    if isinstance(values, dict):
        return values
    if getattr(cls, "SCALAR", None):
        return {cls.SCALAR: values}  # type: ignore[attr-defined]
    keys = ", ".join(f.name for f in dataclasses.fields(cls))
    where = path.rstrip(".") or "settings"
    raise InputError(f"{source}: {where} = {show(values)} — a section of settings: give a mapping of {keys}")


def expand(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Scalar sections written out as mappings (`model: DIR` -> `model: {model: DIR}`), for `merge`."""
    out = dict(values)
    for k, v in values.items():
        t = hints(cls).get(k)
        if t is not None and dataclasses.is_dataclass(t) and (isinstance(v, dict) or t.SCALAR):
            out[k] = expand(t, v if isinstance(v, dict) else {t.SCALAR: v})
    return out


# A settings file is a few levels deep and has tens of values; past these it is a mistake or an attack.
YAML_MAX_DEPTH = 32
YAML_MAX_NODES = 100_000  # counted with every alias expanded: "billion laughs" has 9**9 and more


def _expanded(node: yaml.Node, memo: dict[int, int], depth: int = 0) -> int:
    """How many nodes `node` stands for with every alias written out, counted over the shared graph (each
    node once, so the count costs no more than the file); an alias cycle counts as too deep."""
    if depth > YAML_MAX_DEPTH:
        raise yaml.YAMLError(f"nested more than {YAML_MAX_DEPTH} levels deep (or an alias refers to itself)")
    if id(node) not in memo:
        children = node.value if isinstance(node, yaml.SequenceNode) else []
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        memo[id(node)] = 1 + sum(_expanded(c, memo, depth + 1) for c in children)
    if memo[id(node)] > YAML_MAX_NODES:
        raise yaml.YAMLError(f"expands to more than {YAML_MAX_NODES} values (aliases of aliases?)")
    return memo[id(node)]


def safe_yaml(text: str) -> Any:
    """`yaml.safe_load`, refusing a document too deep or too large once its aliases are expanded (before
    any Python value is built from it): every error is a `yaml.YAMLError`."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded(node, {})
        return loader.construct_document(node)
    except RecursionError:  # the parser recurses once per level: `[[[[...` thousands deep
        raise yaml.YAMLError(f"nested more than {YAML_MAX_DEPTH} levels deep") from None
    finally:
        loader.dispose()


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping is a user error."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} — config file not found")
    try:
        data = safe_yaml(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise InputError(f"{path} — not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} — expected a mapping of settings, got {type(data).__name__}")
    return data


@functools.cache
def attribute_docs(cls: type) -> dict[str, str]:
    """`name: text` entries of the `Attributes:` sections of `cls` and its bases (the flags' help); a class
    documents a field again to say more about it in its own job."""
    out: dict[str, str] = {}
    for c in reversed(cls.__mro__):
        out |= _own_docs(c.__dict__.get("__doc__"))
    return out


def _own_docs(doc: str | None) -> dict[str, str]:
    parts = (doc or "").split("Attributes:", 1)
    out: dict[str, str] = {}
    name = None
    for line in parts[1].splitlines() if len(parts) > 1 else []:
        m = re.match(r"^\s{8}(\w+): (.*)$", line)
        if m:
            name = m.group(1)
            out[name] = m.group(2).strip()
        elif name and line.strip():
            out[name] += " " + line.strip()
    return out
