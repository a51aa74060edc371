"""Frozen run settings. CLI flags and YAML files both land here, so a run is described by values, not code."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mevqa.errors import InputError

SAMPLINGS = ("uniform", "keyframes", "all")
INPUT_MODES = ("frames", "video", "oao", "flow", "diff")


@dataclass(frozen=True)
class FrameConfig:
    """How a clip becomes model input.

    Attributes:
        frames: how many frames `uniform` samples.
        sampling: `uniform`, `keyframes` (onset/apex/offset) or `all` (every frame up to `max_frames`).
        input: `frames` (N images), `video` (one video part), `oao` (onset/apex/offset images),
            `flow` (optical-flow image onset -> apex) or `diff` (apex - onset); see `inputs.py`.
        max_frames: cap for `all`.
        folder_fps: frame rate assumed for a frame folder (CASME II and SAMM were filmed at 200 fps).
        video_fps: the frame rate the *model* is told for a video part. Qwen2.5-VL spaces temporal ids
            by 1/fps; it was trained on ~2 fps samples, and 200 fps collapses all frames onto one id.
        flow_with_oao: with `flow`, show onset, apex and offset before the flow image.
    """

    frames: int = 8
    sampling: str = "uniform"
    input: str = "frames"
    max_frames: int = 64
    folder_fps: float = 200.0
    video_fps: float = 2.0
    flow_with_oao: bool = False

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise InputError(f"sampling {self.sampling!r} — choose one of {', '.join(SAMPLINGS)}")
        if self.input not in INPUT_MODES:
            raise InputError(f"input {self.input!r} — choose one of {', '.join(INPUT_MODES)}")
        if self.frames < 1 or self.max_frames < 1:
            raise InputError(f"frames={self.frames}, max_frames={self.max_frames} — both must be at least 1")


@dataclass(frozen=True)
class GenConfig:
    """Generation settings; greedy by default so answers are reproducible."""

    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    batch_size: int = 4


T = TypeVar("T")


def from_dict(cls: type[T], values: dict[str, Any], source: str = "config") -> T:
    """Build dataclass `cls` from `values`, naming any unknown key instead of ignoring it."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise InputError(
            f"{source}: unknown key(s) {', '.join(unknown)} — valid keys: {', '.join(sorted(names))}"
        )
    return cls(**values)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping is a user error."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} — config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise InputError(f"{path} — not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} — expected a mapping of settings, got {type(data).__name__}")
    return data
