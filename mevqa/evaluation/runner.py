"""`mevqa eval`: answer every question of a MEGC file, resumably, clip by clip.

Questions are grouped by clip: each clip is decoded, sampled and preprocessed once for all its
questions (the test sets ask five per clip), and a clip's questions go to the backend together so
it can share the vision encoding and prompt prefix. Predictions are appended and flushed row by row
with a settings fingerprint; a rerun skips what is already answered with the same settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mevqa import __version__
from mevqa.backends.base import Answer, Backend, VQARequest
from mevqa.config import FrameConfig, GenConfig
from mevqa.data.megc import (
    clip_key,
    is_test_rows,
    read_jsonl,
    resolve_clip,
    row_id,
    write_jsonl,
)
from mevqa.errors import InputError, MevqaError
from mevqa.inputs import load_clip, visual_parts
from mevqa.prompts import PROMPT_STRATEGIES, Q_COARSE, Message, Part, prompt_fingerprint, render_question

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    """Everything `mevqa eval` needs; YAML files (`--config`) use the same keys."""

    data: str
    out: str
    model: str
    root: str | None = None
    adapter: str | None = None
    backend: str = "transformers"
    input: str = "frames"
    frames: int = 8
    sampling: str = "uniform"
    prompt: str = "plain"
    batch_size: int = 8
    max_new_tokens: int = 48
    limit: int | None = None
    clip_pattern: str | None = None
    label_set: str = "gt"
    seed: int = 0
    device: str = "auto"
    reuse: bool = True
    overwrite: bool = False
    base_url: list[str] | None = None  # --backend openai: one URL per replica
    api_key: str | None = None
    concurrency: int = 4
    image_format: str = "png"
    retries: int = 3
    video_as: str = "frames"

    def backend_kwargs(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "adapter": self.adapter,
            "device": self.device,
            "base_url": self.base_url,
            "api_key": self.api_key,
            "concurrency": self.concurrency,
            "image_format": self.image_format,
            "retries": self.retries,
            "video_as": self.video_as,
        }

    def __post_init__(self) -> None:
        if self.prompt not in PROMPT_STRATEGIES:
            raise InputError(f"--prompt {self.prompt!r} — choose one of {', '.join(PROMPT_STRATEGIES)}")

    def frame_config(self) -> FrameConfig:
        return FrameConfig(frames=self.frames, sampling=self.sampling, input=self.input)

    def gen_config(self) -> GenConfig:
        return GenConfig(max_new_tokens=self.max_new_tokens, batch_size=self.batch_size)


def settings(cfg: EvalConfig, backend: Backend) -> dict[str, Any]:
    """What determines an answer (not how fast it comes): the resume fingerprint is a hash of this."""
    from mevqa.models.loading import adapter_hash, config_hash

    local = Path(cfg.model).exists()
    return {
        "model": cfg.model,
        "model_config_hash": config_hash(cfg.model) if local else None,
        "adapter": cfg.adapter,
        "adapter_hash": adapter_hash(cfg.adapter) if cfg.adapter else None,
        "backend": getattr(backend, "name", cfg.backend),
        "frames": dataclasses.asdict(cfg.frame_config()),
        "prompt": cfg.prompt,
        "prompt_fingerprint": prompt_fingerprint(cfg.prompt),
        "generation": dataclasses.asdict(dataclasses.replace(cfg.gen_config(), batch_size=0)),
        "root": str(Path(cfg.root).resolve()) if cfg.root else None,
        "clip_pattern": cfg.clip_pattern,
        "image_format": cfg.image_format if cfg.backend == "openai" else None,
        "video_as": cfg.video_as if cfg.backend == "openai" and cfg.input == "video" else None,
    }


def fingerprint(s: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(s, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- predictions file
def load_done(path: Path, fp: str) -> dict[str, dict]:
    """Rows already answered (no error) with fingerprint `fp`; a torn last line from a kill is skipped."""
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s: skipping a partial line (an interrupted write)", path)
                continue
            if row.get("fingerprint") == fp and not row.get("error"):
                done[row_id(row)] = row
    return done


class PredictionWriter:
    """Appends one JSON line per answer and flushes, so a SIGKILL loses at most the line being written."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = path.open("a", encoding="utf-8")

    def write(self, row: dict) -> None:
        self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def prediction_row(row: dict, ans: Answer, fp: str) -> dict:
    out = {
        **row,
        "answer": ans.text.strip().split("\n")[0].strip() if ans.ok else "",
        "raw": ans.text,
        "error": ans.error,
        "seconds": round(ans.seconds, 4),
        "fingerprint": fp,
    }
    if str(row.get("answer", "")).strip():
        out["gold"] = row["answer"]
    return out


# ---------------------------------------------------------------- answering
def _groups(rows: list[dict]) -> list[list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(clip_key(r), []).append(r)
    return list(groups.values())


def _keyframes(row: dict) -> tuple[int | None, int | None, int | None]:
    return row.get("onset_frame"), row.get("apex_frame"), row.get("offset_frame")


class Answerer:
    """Turns clip groups into answers with one backend, one frame config and one prompt strategy."""

    def __init__(self, cfg: EvalConfig, backend: Backend):
        self.cfg, self.backend = cfg, backend
        self.fcfg, self.gen = cfg.frame_config(), cfg.gen_config()
        self._cached: tuple[str, list[Part]] | None = None

    def _parts(self, row: dict) -> list[Part]:
        """The clip's images (decoded, sampled, flow computed); with reuse, kept for its other questions.

        The same image objects then go into every question's message, which is what lets the backend
        see that the questions share their visual prefix.
        """
        key = clip_key(row)
        if self.cfg.reuse and self._cached and self._cached[0] == key:
            return self._cached[1]
        path = resolve_clip(row, self.cfg.root or ".", self.cfg.clip_pattern)
        parts = visual_parts(load_clip(path, self.fcfg, *_keyframes(row)), self.fcfg)
        self._cached = (key, parts)
        return parts

    def _requests(self, group: list[dict], coarse: str | None = None) -> list[VQARequest]:
        parts = self._parts(group[0])
        return [
            VQARequest(
                row_id(r), (Message.user(*parts, render_question(r["question"], self.cfg.prompt, coarse)),)
            )
            for r in group
        ]

    def answer(self, groups: list[list[dict]]) -> list[tuple[dict, Answer]]:
        """Answers for several clips' questions, batched together; a clip that fails is error rows."""
        reqs, rows, failed = [], [], []
        for g in groups:
            try:
                coarse = self._coarse(g) if self.cfg.prompt == "hierarchical" else None
                reqs += self._requests(g, coarse)
                rows += g
            except MevqaError as e:
                failed += [(r, Answer(row_id(r), "", error=str(e))) for r in g]
        return failed + list(zip(rows, self.backend.generate(reqs, self.gen) if reqs else []))

    def _coarse(self, group: list[dict]) -> str | None:
        """Hierarchical stage 1: the clip's coarse class, asked first so later answers can follow it."""
        from mevqa.evaluation.parse import parse_label

        probe = {**group[0], "question": Q_COARSE, "id": f"{row_id(group[0])}#coarse"}
        probe.pop("video_id", None)
        (ans,) = self.backend.generate(self._requests([probe]), dataclasses.replace(self.gen, batch_size=1))
        return parse_label(ans.text, "coarse") if ans.ok else None

    def answer_one_by_one(self, group: list[dict]) -> Iterator[tuple[dict, Answer]]:
        """No reuse: decode and ask per question (the baseline the clip-reuse benchmark compares with)."""
        for r in group:
            yield from self.answer([[r]])


def _batches(groups: list[list[dict]], size: int) -> Iterator[list[list[dict]]]:
    """Whole clips per batch (a clip's questions stay together), about `size` questions each."""
    batch: list[list[dict]] = []
    for g in groups:
        if batch and sum(map(len, batch)) + len(g) > max(size, len(g)):
            yield batch
            batch = []
        batch.append(g)
    if batch:
        yield batch


def answer_all(
    cfg: EvalConfig,
    backend: Backend,
    rows: list[dict],
    writer: PredictionWriter,
    fp: str,
    progress: bool = True,
) -> int:
    """Answer `rows` (the pending ones) with a progress bar; returns how many got an error."""
    answerer, errors = Answerer(cfg, backend), 0
    groups = _groups(rows)
    with tqdm(total=len(rows), unit="q", desc="answering", dynamic_ncols=True, disable=not progress) as bar:
        if cfg.reuse:
            steps = (answerer.answer(batch) for batch in _batches(groups, cfg.batch_size))
        else:
            steps = (list(answerer.answer_one_by_one(g)) for g in groups)
        for results in steps:
            for row, ans in results:
                writer.write(prediction_row(row, ans, fp))
                errors += not ans.ok
            bar.update(len(results))
    return errors


# ---------------------------------------------------------------- the whole run
def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """Answer, write predictions / submissions / metrics / report; returns a summary for the CLI."""
    from mevqa.backends.base import load_backend

    rows = read_jsonl(cfg.data)[: cfg.limit] if cfg.limit else read_jsonl(cfg.data)
    if cfg.root and not Path(cfg.root).is_dir():
        raise InputError(f"--root {cfg.root} — no such folder")
    t0 = time.perf_counter()
    backend = load_backend(cfg.backend, **cfg.backend_kwargs())
    sett = settings(cfg, backend)
    fp = fingerprint(sett)
    out = Path(cfg.out)
    pred_path = out / "predictions.jsonl"
    if cfg.overwrite and pred_path.exists():
        pred_path.unlink()
    done = load_done(pred_path, fp)
    pending = [r for r in rows if row_id(r) not in done]
    log.info("%d questions, %d already answered with these settings", len(rows), len(rows) - len(pending))
    writer = PredictionWriter(pred_path)
    try:
        answer_all(cfg, backend, pending, writer, fp)
    finally:
        writer.close()
    wall = time.perf_counter() - t0
    return finish(cfg, rows, pred_path, fp, sett, wall, len(pending))


def finish(
    cfg: EvalConfig, rows: list[dict], pred_path: Path, fp: str, sett: dict, wall: float, answered_now: int
) -> dict[str, Any]:
    """Compact predictions to one row per question, then submissions, metrics and report."""
    from mevqa.evaluation.report import write_outputs

    latest: dict[str, dict] = {}
    for line in pred_path.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r.get("fingerprint") == fp:
            latest[row_id(r)] = r
    preds = [latest[row_id(r)] for r in rows if row_id(r) in latest]
    write_jsonl(pred_path, preds)
    run = {
        "mevqa_version": __version__,
        "fingerprint": fp,
        "seed": cfg.seed,
        "device": _device(cfg.device),
        "python": platform.python_version(),
        "wall_seconds": round(wall, 2),
        "answered_this_run": answered_now,
        "questions_per_second": round(answered_now / wall, 3) if wall > 0 and answered_now else None,
        "host": platform.node(),
        "pid": os.getpid(),
    }
    return write_outputs(cfg, rows, preds, sett, run, test=is_test_rows(rows))


def _device(device: str) -> str:
    from mevqa.models.loading import pick_device

    return pick_device(device)
