"""`mevqa eval`: answer every question of a MEGC file, resumably, clip by clip.

Questions are grouped by clip: each clip is decoded, sampled and preprocessed once for all its
questions (the test sets ask five per clip), and a clip's questions go to the backend together so
it can share the vision encoding and prompt prefix. While one batch generates, the next one is decoded
and preprocessed in a worker thread. Predictions are appended and flushed row by row with a settings
fingerprint; a rerun skips what is already answered with the same settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mevqa import __version__, process_seconds
from mevqa.backends.base import (
    Answer,
    Backend,
    VQARequest,
    load_backend,
    oom_error,
    out_of_memory,
    set_threads,
)
from mevqa.config import EvalConfig, to_dict
from mevqa.data.megc import clip_key, is_test_rows, read_jsonl, row_id, write_jsonl
from mevqa.dist import Shard
from mevqa.errors import InputError, MevqaError
from mevqa.evaluation.parse import ask_coarse, voted
from mevqa.evaluation.report import score_outputs, write_records
from mevqa.inputs import ClipParts
from mevqa.io import FolderLock, disk_errors
from mevqa.prompts import Message, prompt_fingerprint, render_question

log = logging.getLogger(__name__)


class AnswersFailed(MevqaError):
    """Too many answers in a row failed (a dead server, a broken model): the run stopped early."""

    exit_code = 1  # not the input's fault: rerun when the cause is fixed


def settings(cfg: EvalConfig, backend: Backend) -> dict[str, Any]:
    """What determines an answer (not how fast it comes): the resume fingerprint is a hash of this.

    The model's and adapter's *weights* are in it (not only their configs), so rebuilding, retraining or
    merging into the same folder never reuses the old model's answers; so are the bytes of its processor,
    tokenizer, chat-template and generation files (an edited template asks a different question).
    """
    m = cfg.model
    local = Path(m.model).exists()
    if local or m.adapter:  # they import torch and transformers, which a model served by name does not need
        from mevqa.models.adapters import adapter_fingerprint
        from mevqa.models.loading import config_hash, processing_fingerprint, weights_fingerprint
    return {
        "model": m.model,
        "model_config_hash": config_hash(m.model, m.trust_remote_code) if local else None,
        "model_weights": weights_fingerprint(m.model) if local else None,
        "model_processing": processing_fingerprint(m.model) if local else None,
        "adapter": m.adapter,
        "adapter_weights": adapter_fingerprint(m.adapter) if m.adapter else None,
        "load_in_4bit": m.load_in_4bit and {"quant_type": m.quant_type, "double_quant": m.double_quant},
        "backend": getattr(backend, "name", m.backend),
        "frames": to_dict(cfg.frames),
        "prompt": cfg.prompt,
        "prompt_fingerprint": prompt_fingerprint(cfg.prompt),
        "generation": to_dict(cfg.gen),
        "seed": cfg.seed if cfg.gen.sampling else None,
        "root": str(Path(cfg.root).resolve()) if cfg.root else None,
        "clip_pattern": cfg.clip_pattern,
        "image_format": cfg.server.image_format if m.backend == "openai" else None,
        "video_as": cfg.server.video_as if m.backend == "openai" and cfg.frames.input == "video" else None,
    }


def fingerprint(s: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(s, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- predictions file
def repair_tail(path: Path) -> None:
    """Cut a torn last line (a kill or a full disk mid-write) back to the last complete one."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        f.truncate(data.rfind(b"\n") + 1)
    log.warning("%s: removed a partial last line (an interrupted write)", path)


def read_predictions(path: Path) -> list[dict]:
    """Every complete row of a predictions file, in file order (later rows supersede earlier ones).

    A line that is not JSON or not UTF-8 (a torn write, a file edited in another encoding) is skipped:
    its question counts as unanswered and is asked again."""
    if not path.is_file():
        return []
    rows, bad = [], 0
    with disk_errors(path):
        lines = path.read_bytes().splitlines()
    for line in filter(bytes.strip, lines):
        try:
            rows.append(json.loads(line.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            bad += 1
    if bad:
        log.warning(
            "%s: skipping %d unreadable line(s) (not UTF-8 JSON); their questions are asked again", path, bad
        )
    return [r for r in rows if isinstance(r, dict)]


def load_done(path: Path, fp: str) -> dict[str, dict]:
    """Rows already answered (no error) with fingerprint `fp`."""
    return {row_id(r): r for r in read_predictions(path) if r.get("fingerprint") == fp and not r.get("error")}


class PredictionWriter:
    """Appends one JSON line per answer and flushes, so a SIGKILL loses at most the line being written."""

    def __init__(self, path: Path):
        self.path = path
        with disk_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            self._f = path.open("a", encoding="utf-8")

    def write(self, row: dict) -> None:
        with disk_errors(self.path):
            self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
            self._f.flush()

    def close(self) -> None:
        try:
            self._f.close()
        except OSError:  # the flush of a full disk: the rows that made it are whole lines
            pass


def prediction_row(row: dict, ans: Answer, fp: str) -> dict:
    out = {
        **row,
        "answer": ans.text.strip().split("\n")[0].strip() if ans.ok else "",
        "raw": ans.text,
        "error": ans.error,
        "seconds": round(ans.seconds, 4),
        "fingerprint": fp,
    }
    if ans.samples:
        out["samples"] = list(ans.samples)
    if str(row.get("answer", "")).strip():
        out["gold"] = row["answer"]
    return out


# ---------------------------------------------------------------- answering
def _groups(rows: list[dict]) -> list[list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(clip_key(r), []).append(r)
    return list(groups.values())


def _batches(groups: list[list[dict]], size: int) -> list[list[list[dict]]]:
    """Whole clips per batch (a clip's questions stay together), about `size` questions each."""
    batches: list[list[list[dict]]] = []
    batch: list[list[dict]] = []
    for g in groups:
        if batch and sum(map(len, batch)) + len(g) > max(size, len(g)):
            batches.append(batch)
            batch = []
        batch.append(g)
    return batches + [batch] if batch else batches


@dataclass
class Batch:
    """A batch ready for the model: its requests (backend-prepared) and the rows that already failed."""

    rows: list[dict]
    prepared: Any
    failed: list[tuple[dict, Answer]]


class Answerer:
    """Turns clip groups into answers with one backend, one frame config and one prompt strategy."""

    def __init__(self, cfg: EvalConfig, backend: Backend):
        self.cfg, self.backend = cfg, backend
        self.parts = ClipParts(cfg.root, cfg.frames, cfg.clip_pattern, cache=64 if cfg.reuse else 0)

    def _seed(self, row: dict) -> int:
        return int(hashlib.sha256(f"{self.cfg.seed}:{row_id(row)}".encode()).hexdigest()[:8], 16)

    def requests(self, group: list[dict], coarse: str | None = None) -> list[VQARequest]:
        """One request per question of a clip; they show the same images, so they carry the clip's key as
        their `prefix_key` (a backend may prefill the clip once for all of them)."""
        parts, key = self.parts(group[0]), clip_key(group[0])
        return [
            VQARequest(
                row_id(r),
                (Message.user(*parts, render_question(r["question"], self.cfg.prompt, coarse)),),
                prefix_key=key,
                seed=self._seed(r),
            )
            for r in group
        ]

    def prepare(self, groups: list[list[dict]]) -> Batch:
        """Decode and preprocess several clips' questions as one batch; a clip that fails is error rows."""
        reqs, rows, failed = [], [], []
        for g in groups:
            try:
                coarse = self._coarse(g) if self.cfg.prompt == "hierarchical" else None
                reqs += self.requests(g, coarse)
                rows += g
            except MevqaError as e:
                failed += [(r, Answer(row_id(r), "", error=str(e))) for r in g]
        try:
            return Batch(rows, self.backend.prepare(reqs, self.cfg.gen) if reqs else None, failed)
        except (MemoryError, RuntimeError) as e:  # the processor's arrays for a batch too large
            if out_of_memory(e):
                raise oom_error(len(reqs)) from None
            raise

    def run(self, batch: Batch) -> list[tuple[dict, Answer]]:
        answers = self.backend.run(batch.prepared, self.cfg.gen) if batch.rows else []
        return batch.failed + [(r, voted(r["question"], a)) for r, a in zip(batch.rows, answers)]

    def _coarse(self, group: list[dict]) -> str | None:
        probe = {**group[0], "id": f"{row_id(group[0])}#coarse"}
        probe.pop("video_id", None)
        return ask_coarse(self.backend, self.parts(group[0]), self.cfg.gen, self._seed(probe))


def batches_of(cfg: EvalConfig, rows: list[dict]) -> list[list[list[dict]]]:
    """The batches `answer_rows` sends: whole clips of about `batch_size` questions (one question each
    without reuse)."""
    groups = _groups(rows)
    return _batches(groups, cfg.batch_size) if cfg.reuse else [[[r]] for g in groups for r in g]


def answer_rows(cfg: EvalConfig, backend: Backend, rows: list[dict]) -> Iterator[tuple[dict, Answer]]:
    """Answers for `rows`, batch by batch, in clip order; the next batch is prepared while one runs.

    The public way to answer questions with a backend: `mevqa eval`, training's held-out scoring and the
    benchmarks all go through it. (Hierarchical prompts ask the model while preparing, so they are not
    prefetched: the model runs in one thread only.)
    """
    answerer = Answerer(cfg, backend)
    batches = batches_of(cfg, rows)
    if cfg.prompt == "hierarchical" or len(batches) < 2:
        for b in batches:
            yield from answerer.run(answerer.prepare(b))
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mevqa-prepare") as pool:
        ahead = pool.submit(answerer.prepare, batches[0])
        for nxt in [*batches[1:], None]:
            current = ahead.result()
            if nxt is not None:
                ahead = pool.submit(answerer.prepare, nxt)
            yield from answerer.run(current)


def answer_all(
    cfg: EvalConfig,
    backend: Backend,
    rows: list[dict],
    writer: PredictionWriter,
    fp: str,
    progress: bool = True,
) -> int:
    """Answer `rows` (the pending ones) with a progress bar, writing each; returns how many failed.

    `cfg.max_errors` failures in a row stop the run (`AnswersFailed`): what was answered is kept.
    """
    errors = streak = 0
    with tqdm(total=len(rows), unit="q", desc="answering", dynamic_ncols=True, disable=not progress) as bar:
        for row, ans in answer_rows(cfg, backend, rows):
            writer.write(prediction_row(row, ans, fp))
            errors += not ans.ok
            streak = 0 if ans.ok else streak + 1
            bar.update(1)
            if cfg.max_errors and streak >= cfg.max_errors:
                raise AnswersFailed(
                    f"{streak} answers in a row failed (last: {ans.error}) — stopped; what was answered "
                    "is kept: fix the cause and run the same command again to continue"
                )
    return errors


# ---------------------------------------------------------------- the whole run
def prediction_files(out: Path) -> list[Path]:
    """The merged file and any process's part file (a killed run of any process count leaves some)."""
    return [out / "predictions.jsonl", *sorted(out.glob("predictions.rank*.jsonl"))]


def check_out(cfg: EvalConfig) -> None:
    """`out` is a folder eval may write, and not where the questions are: eval writes its predictions,
    metrics, report and submission files at the top of `out`, and `--data out/predictions.jsonl` was
    silently replaced by the model's answers."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"`out` {out} — is a file, not a folder")
    if Path(cfg.data).resolve().parent == out.resolve():
        raise InputError(
            f"`data` {cfg.data} — lies in `out` {out}, where eval writes its own files: keep the questions "
            "elsewhere or choose another `out`"
        )


def check_questions(data: str, rows: list[dict]) -> None:
    """An empty file or two questions with one id are refused before any work: a repeated id would keep
    one answer for both and score the wrong one."""
    if not rows:
        raise InputError(f"`data` {data} — holds no questions")
    seen: dict[str, int] = {}
    for n, r in enumerate(rows, start=1):
        rid = row_id(r)
        if rid in seen:
            raise InputError(
                f"`data` {data} — duplicate id {rid!r} (rows {seen[rid]} and {n}); ids must be unique"
            )
        seen[rid] = n


def run_eval(cfg: EvalConfig, backend: Backend | None = None) -> dict[str, Any] | None:
    """Answer, write predictions / submissions / metrics / report; returns a summary for the CLI
    (None in the other processes of a multi-process run: the main one writes and reports)."""
    all_rows = read_jsonl(cfg.data)
    check_questions(cfg.data, all_rows)
    rows = all_rows[: cfg.limit] if cfg.limit else all_rows
    if cfg.root and not Path(cfg.root).is_dir():
        why = "is a file, not a folder" if Path(cfg.root).exists() else "no such folder"
        raise InputError(f"`root` {cfg.root} — {why}")
    check_out(cfg)
    out, shard = Path(cfg.out), Shard.current(cfg.model.device)
    lock = FolderLock(out) if shard.main else None
    try:
        return _answer_and_write(cfg, backend, shard, all_rows, rows)
    finally:
        if lock:
            lock.release()


def _answer_and_write(
    cfg: EvalConfig, backend: Backend | None, shard: Shard, all_rows: list[dict], rows: list[dict]
) -> dict[str, Any] | None:
    out = Path(cfg.out)
    set_threads(cfg.threads)
    model = dataclasses.replace(cfg.model, device=shard.device(cfg.model.device))
    t0 = time.perf_counter()
    backend = backend or load_backend(model, cfg.server, cfg.vllm)
    sett = settings(cfg, backend)
    fp = fingerprint(sett)
    if shard.main and cfg.overwrite:  # only now: a mistyped --model must not cost the answers on disk
        for f in [*prediction_files(out), out / RUNS]:
            f.unlink(missing_ok=True)
    shard.barrier()
    part = shard.part(out)
    repair_tail(part)
    done = {k: v for f in prediction_files(out) for k, v in load_done(f, fp).items()}
    pending = [r for r in rows if row_id(r) not in done]
    log.info("%d questions, %d already answered with these settings", len(rows), len(rows) - len(pending))
    writer = PredictionWriter(part)
    t1 = time.perf_counter()
    try:
        answer_all(cfg, backend, shard.take(_groups(pending)), writer, fp, progress=shard.main)
    finally:
        writer.close()
        t2 = time.perf_counter()
        shard.barrier()
        if shard.main:
            compact(out, all_rows)
    if not shard.main:
        return None
    timing = {"model_load_seconds": round(t1 - t0, 3), "answering_seconds": round(t2 - t1, 3)}
    timing["answered"] = len(pending)
    return write_run_outputs(cfg, rows, out / "predictions.jsonl", fp, sett, timing, all_rows)


SUPERSEDED = "superseded.jsonl"  # answers made with other settings, replaced by a run with new ones


def compact(out: Path, all_rows: list[dict]) -> list[dict]:
    """Merge the part files into predictions.jsonl: one row per question (the latest), in the data file's
    order; rows of other ids are kept after. Questions this run did not ask (a `--limit`) keep theirs.
    An answer the latest replaces that was made with other settings (a run with another prompt, model or
    frames on the same `out`) is appended to superseded.jsonl, not lost."""
    latest: dict[str, dict] = {}
    superseded = []
    files = prediction_files(out)
    for f in files:
        for r in read_predictions(f):
            old = latest.get(row_id(r))
            if old and not old.get("error") and old.get("fingerprint") != r.get("fingerprint"):
                superseded.append(old)
            latest[row_id(r)] = r
    if superseded:
        with disk_errors(out), (out / SUPERSEDED).open("a", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in superseded)
    order = [row_id(r) for r in all_rows]
    known = set(order)
    preds = [latest[i] for i in dict.fromkeys(order) if i in latest]
    preds += [r for i, r in latest.items() if i not in known]
    write_jsonl(out / "predictions.jsonl", preds)
    for f in files[1:]:
        f.unlink()
    return preds


RUNS = "runs.jsonl"  # one line per finished run of this folder: the timing history metrics.json lists


def _timing(timing: dict[str, Any]) -> dict[str, Any]:
    """Two clocks, named apart: answering alone, and the process since it started (interpreter, imports,
    model load, answering, scoring, plots), read when the run record is written."""
    total, answering, n = process_seconds(), timing["answering_seconds"], timing["answered"]
    return {
        "process_seconds": round(total, 3),
        "answering_seconds": answering,
        "model_load_seconds": timing["model_load_seconds"],
        "answered_this_run": n,
        "questions_per_second_answering": round(n / answering, 3) if n and answering > 0 else None,
        "questions_per_second_process": round(n / total, 3) if n and total > 0 else None,
    }


def record_run(out: Path, run: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Append `run` to runs.jsonl; returns the run whose timing the answers have (the latest with this
    fingerprint that answered questions: a rerun that answered nothing does not replace it) and every run
    with this fingerprint."""
    path = out / RUNS
    with disk_errors(path), path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(run) + "\n")
    runs = [r for r in read_predictions(path) if r.get("fingerprint") == run["fingerprint"]]
    answering = [r for r in runs if r.get("answered_this_run")]
    return (answering[-1] if answering else run), runs


def _device(spec: Any) -> str:
    if spec.backend == "openai":  # the model runs where the server is; torch need not be imported for this
        return "server"
    from mevqa.models.loading import pick_device

    return pick_device(spec.device)


def write_run_outputs(
    cfg: EvalConfig,
    rows: list[dict],
    pred_path: Path,
    fp: str,
    sett: dict,
    timing: dict,
    all_rows: list[dict] | None = None,
) -> dict[str, Any]:
    """Metrics and report for this run's questions (answered with the current settings); submission files
    from every question of the data file answered with them (a `--limit` run does not cut them short).
    `timing`: answered (this run's count), answering_seconds and model_load_seconds."""
    current = {row_id(r): r for r in read_predictions(pred_path) if r.get("fingerprint") == fp}
    preds = [current[row_id(r)] for r in rows if row_id(r) in current]
    every = [current[row_id(r)] for r in all_rows or rows if row_id(r) in current]
    scored = score_outputs(cfg, rows, preds, test=is_test_rows(rows), deliver=(all_rows or rows, every))
    torch = sys.modules.get("torch")  # threads as torch ran them; a served model's run imports no torch
    run = {
        "mevqa_version": __version__,
        "fingerprint": fp,
        "seed": cfg.seed,
        "device": _device(cfg.model),
        "threads": torch.get_num_threads() if torch else None,
        "python": platform.python_version(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **_timing(timing),
        "host": platform.node(),
        "pid": os.getpid(),
    }
    shown, runs = record_run(Path(cfg.out), run)
    summary = write_records(Path(cfg.out), scored, sett, shown, runs)
    return {**summary, "this_run": run}
