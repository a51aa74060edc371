"""`mevqa bench <name>`: speed measured as ratios of variants timed side by side in one run.

These machines are shared and noisy, so every benchmark times its variants in the same process,
alternating, and reports the ratio; absolute times are printed for context only.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import decord
import httpx
import numpy as np
import torch
import transformers

from mevqa.backends.base import Backend, load_backend
from mevqa.backends.hf import TransformersBackend
from mevqa.backends.openai_server import list_models
from mevqa.config import EvalConfig, FrameConfig, GenConfig, ModelSpec, ServerSpec
from mevqa.data.megc import read_jsonl
from mevqa.data.qa import parse_au_codes
from mevqa.data.synth import synthesize
from mevqa.errors import InputError, MissingDependency
from mevqa.evaluation.runner import Answerer, answer_rows, batches_of
from mevqa.facs import REGION_ROWS, REGIONS
from mevqa.inputs import flow_field, load_clip, region_motion
from mevqa.io import atomic_write, write_mp4
from mevqa.models.tiny import build_tiny
from mevqa.prompts import classify
from mevqa.video import open_clip, sample

BENCHES = ("sampling", "reuse", "overhead", "batching")


def timeit(fn: Callable[[], Any], repeat: int = 3) -> float:
    """Median wall time of `repeat` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ---------------------------------------------------------------- sampling
def make_video(path: Path, seconds: float = 2.0, fps: int = 200, size: tuple[int, int] = (640, 480)) -> Path:
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), (9, 9), 0)

    def frames() -> Iterator[np.ndarray]:
        for i in range(int(seconds * fps)):
            f = np.roll(base, i % 7, axis=1)
            cv2.circle(f, (size[0] // 2, size[1] // 2), 20 + i % 30, (0, 0, 255), -1)
            yield f

    return write_mp4(path, frames(), fps)


def bench_sampling(
    work: Path, seconds: float = 2.0, size: tuple[int, int] = (640, 480), frames: int = 8, repeat: int = 3
) -> dict:
    try:
        import av  # PyAV, the full-decode baseline: a dev extra
    except ImportError:
        raise MissingDependency("bench sampling — compares against PyAV: pip install av") from None

    video = make_video(work / "clip.mp4", seconds, 200, size)
    folder = work / "frames"
    folder.mkdir(exist_ok=True)
    vr = decord.VideoReader(str(video))
    for i in range(len(vr)):
        cv2.imwrite(str(folder / f"img{i + 1}.jpg"), vr[i].asnumpy()[..., ::-1])
    n = len(vr)
    cfg = FrameConfig(frames=frames)

    def pyav_all() -> int:
        with av.open(str(video)) as c:
            return sum(1 for f in c.decode(video=0) if f.to_ndarray(format="rgb24") is not None)

    t = {
        "decord_sparse": timeit(lambda: sample(video, cfg), repeat),
        "decord_full": timeit(
            lambda: decord.VideoReader(str(video)).get_batch(list(range(n))).asnumpy(), repeat
        ),
        "pyav_full": timeit(pyav_all, repeat),
        "folder_sparse": timeit(lambda: sample(folder, cfg), repeat),
        "folder_full": timeit(lambda: open_clip(folder).read(list(range(n))), repeat),
    }
    return {
        "frames_in_clip": n,
        "sampled": frames,
        "size": list(size),
        "seconds": t,
        "ratios": {
            "decord_full / decord_sparse": t["decord_full"] / t["decord_sparse"],
            "pyav_full / decord_sparse": t["pyav_full"] / t["decord_sparse"],
            "folder_full / folder_sparse": t["folder_full"] / t["folder_sparse"],
        },
        "target": "sparse >= 5x faster than full",
    }


# ---------------------------------------------------------------- eval workloads
def test_like_rows(root: Path, per_clip: int = 5) -> list[dict]:
    """Five questions per clip, like the MEGC test files (coarse, fine, AUs, presence, combined)."""
    keep = ("coarse", "fine", "au_list", "au_presence", "combined")
    rows, seen = [], {}
    for r in read_jsonl(root / "train.jsonl") + read_jsonl(root / "test.jsonl"):
        qtype = classify(r["question"])[0]
        key = (r["image_id"], qtype)
        if qtype in keep and key not in seen and sum(k[0] == r["image_id"] for k in seen) < per_clip:
            seen[key] = True
            rows.append(r)
    return rows


@dataclasses.dataclass
class Workload:
    root: Path
    rows: list[dict]
    backend: TransformersBackend
    model: str

    def variant(self, share_prefix: bool, cross_clip: bool = True) -> TransformersBackend:
        """The same loaded model and processor, with or without the shared prefix / cross-clip batches."""
        b = self.backend
        return TransformersBackend(
            b.model, b.processor, b.model_id, share_prefix=share_prefix, cross_clip=cross_clip
        )


def workload(work: Path, model: str | None, clips: int, size: int, device: str = "auto") -> Workload:
    if model is None:
        model = str(build_tiny("qwen2_5_vl", work / "tiny-qwen2_5_vl"))
    root = synthesize(
        work / "synthme", subjects=max(1, clips // 4), clips_per_subject=min(4, clips), size=size
    )
    backend = load_backend(ModelSpec(model, device=device))
    return Workload(root, test_like_rows(root), backend, model)  # type: ignore[arg-type]


def eval_config(
    wl: Workload, batch_size: int, reuse: bool = True, frames: int = 8, max_new_tokens: int = 16
) -> EvalConfig:
    return EvalConfig(
        data="-",
        out="-",
        model=ModelSpec(wl.model),
        root=str(wl.root),
        frames=FrameConfig(frames=frames),
        gen=GenConfig(max_new_tokens=max_new_tokens),
        batch_size=batch_size,
        reuse=reuse,
    )


def run_answers(wl: Workload, backend: Backend, cfg: EvalConfig) -> float:
    """Seconds to answer every row through the eval runner's public `answer_rows`."""
    t0 = time.perf_counter()
    for _ in answer_rows(cfg, backend, wl.rows):
        pass
    return time.perf_counter() - t0


def bench_reuse(wl: Workload, repeat: int = 3, batch_size: int = 5) -> dict:
    variants = {
        "no reuse (decode + ask per question)": (False, False),
        "decode once per clip": (True, False),
        "decode once + shared prefix (vision, KV)": (True, True),
    }
    t = {
        k: timeit(
            lambda r=r, s=s: run_answers(wl, wl.variant(s), eval_config(wl, batch_size, reuse=r)), repeat
        )
        for k, (r, s) in variants.items()
    }
    base = t["no reuse (decode + ask per question)"]
    n = len(wl.rows)
    return {
        "questions": n,
        "seconds": t,
        "questions_per_second": {k: n / v for k, v in t.items()},
        "ratios": {f"{k} vs no reuse": base / v for k, v in t.items()},
        "target": "full reuse >= 3x",
    }


def bench_batching(wl: Workload, sizes: tuple[int, ...] = (8, 32, 64), repeat: int = 3) -> dict:
    """Questions/s by --batch-size, a decode per clip (before) vs one decode for a batch's clips (after)."""
    t = {}
    for b in sizes:
        for name, cross in (("per clip", False), ("across clips", True)):
            t[f"batch {b}, {name}"] = timeit(
                lambda b=b, c=cross: run_answers(wl, wl.variant(True, c), eval_config(wl, b)), repeat
            )
    n = len(wl.rows)
    return {
        "questions": n,
        "questions_per_second": {k: n / v for k, v in t.items()},
        "ratios": {
            f"batch {b}: across / per clip": t[f"batch {b}, per clip"] / t[f"batch {b}, across clips"]
            for b in sizes
        },
    }


def bench_overhead(wl: Workload, repeat: int = 3, batch_size: int = 5, max_new_tokens: int = 16) -> dict:
    """The harness vs a bare loop of the backend's model calls over the same prepared batches."""
    cfg = eval_config(wl, batch_size, max_new_tokens=max_new_tokens)
    backend = wl.variant(True)
    answerer = Answerer(cfg, backend)
    prepared = [answerer.prepare(b).prepared for b in batches_of(cfg, wl.rows)]

    def bare() -> None:
        for p in prepared:
            backend.run(p, cfg.gen)

    t_bare = timeit(bare, repeat)
    t_harness = timeit(lambda: run_answers(wl, backend, cfg), repeat)
    return {
        "questions": len(wl.rows),
        "seconds": {"bare generate loop": t_bare, "mevqa eval loop": t_harness},
        "ratios": {"harness throughput / bare throughput": t_bare / t_harness},
        "note": "the harness also decodes clips and preprocesses (ahead, in a worker thread); "
        "the bare loop gets every batch prepared",
        "target": ">= 0.95",
    }


def prefix_cache_tokens(base_url: str) -> tuple[float, float] | None:
    """(queried, hit) prompt tokens from vLLM's Prometheus counters; None for servers without them."""
    try:
        text = httpx.get(base_url.rstrip("/").removesuffix("/v1") + "/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    values: dict[str, float] = {}
    for line in text.splitlines():
        for key in ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"):
            if line.startswith(key + "{"):
                values[key] = values.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    if len(values) < 2:
        return None
    return values["vllm:prefix_cache_queries_total"], values["vllm:prefix_cache_hits_total"]


def bench_server(
    wl: Workload, base_urls: list[str], concurrencies: tuple[int, ...] = (1, 4, 8), repeat: int = 3
) -> dict:
    """In-process transformers vs the same model behind each server (e.g. vLLM and transformers serve),
    by concurrency, side by side; for vLLM also the share of prompt tokens its prefix cache served."""
    cfg = eval_config(wl, 16)
    n = len(wl.rows)
    t = {"in-process": timeit(lambda: run_answers(wl, wl.variant(True), cfg), repeat)}
    out: dict[str, Any] = {"questions": n, "prefix_cache": {}}
    for url in base_urls:
        name = served_by(url)
        before = prefix_cache_tokens(url)
        for c in concurrencies:
            remote = load_backend(
                ModelSpec(wl.model, backend="openai"), ServerSpec(base_url=(url,), concurrency=c)
            )
            t[f"{name}, concurrency {c}"] = timeit(lambda r=remote: run_answers(wl, r, cfg), repeat)
        after = prefix_cache_tokens(url)
        if before and after and after[0] > before[0]:
            out["prefix_cache"][f"{name}: hit rate (prompt tokens)"] = (after[1] - before[1]) / (
                after[0] - before[0]
            )
    out["questions_per_second"] = {k: n / v for k, v in t.items()}
    out["ratios"] = {f"{k} vs in-process": t["in-process"] / v for k, v in t.items()}
    return out


def served_by(base_url: str) -> str:
    """vLLM lists its models as owned by "vllm"; anything else is named by its URL."""
    owners = {m.get("owned_by") for m in list_models(base_url, timeout=5)}
    return "vLLM" if "vllm" in owners else f"server {base_url}"


def bench_flow(work: Path, clips: int = 48, size: int = 112, repeat: int = 1) -> dict:
    """Farneback vs TV-L1: seconds per clip (onset -> apex) and how often the most-moving facial band is
    one the clip's AUs move (SynthME knows the truth)."""
    root = synthesize(work / "flow", subjects=max(1, clips // 6), clips_per_subject=6, size=size, seed=3)
    with open(root / "annotations.csv") as f:
        ann = list(csv.DictReader(f))
    pairs = [
        load_clip(
            root / "frames" / a["clip"],
            FrameConfig(input="flow"),
            int(a["onset"]),
            int(a["apex"]),
            int(a["offset"]),
        ).frames[:2]
        for a in ann
    ]
    truth = [{r for x in parse_au_codes(a["aus"]) for r in REGIONS[x.number]} for a in ann]
    out: dict[str, Any] = {"clips": len(ann), "size": size, "seconds_per_clip": {}, "au_region_hit_rate": {}}
    for method in ("farneback", "tvl1"):

        def flows(m: str = method) -> list:
            return [flow_field(o, a, m) for o, a in pairs]

        t = timeit(flows, repeat) / len(pairs)
        hits = sum(max(REGION_ROWS, key=region_motion(f).get) in regs for f, regs in zip(flows(), truth))
        out["seconds_per_clip"][method] = t
        out["au_region_hit_rate"][method] = hits / len(pairs)
    out["ratios"] = {
        "tvl1 time / farneback time": out["seconds_per_clip"]["tvl1"] / out["seconds_per_clip"]["farneback"]
    }
    return out


MEMORY_PROBE = """
import ctypes, gc, sys
import bitsandbytes, torch  # both runs pay the same imports
from mevqa.config import ModelSpec
from mevqa.models.loading import load_model
def rss():  # resident now, kB: (anonymous, file-backed); fp32 safetensors weights stay mmap-ed = file pages
    status = {ln.split(":")[0]: ln.split()[1] for ln in open("/proc/self/status") if ln.startswith("Rss")}
    return f"{status['RssAnon']},{status['RssFile']}"
before = rss()
spec = ModelSpec(sys.argv[1], device="cpu", load_in_4bit=sys.argv[2] == "1")
m = load_model(spec) if sys.argv[2] != "-" else None
if m is not None:
    with torch.no_grad():
        m(input_ids=torch.tensor([[1, 2, 3, 4]]))  # touch every weight once, as answering does
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed load-time buffers back before measuring
tensors = sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()]) if m is not None else 0
print(before, rss(), tensors)
"""


def bench_memory(work: Path) -> dict:
    """What 4-bit loading saves on this CPU: a ~110M-parameter Qwen2.5-VL ("small") loaded in fp32 and in
    nf4, each in a fresh process after one forward pass; resident memory and the model's own tensor bytes."""
    model = build_tiny("qwen2_5_vl", work / "small", size="small")
    disk = sum(p.stat().st_size for p in model.glob("*.safetensors")) / 2**20
    out: dict[str, Any] = {
        "weights_on_disk_mb": disk,
        "anonymous_mb": {},
        "file_backed_mb": {},
        "tensor_mb": {},
    }
    for name, flag in (("imports only", "-"), ("fp32", "0"), ("4-bit nf4", "1")):
        r = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, str(model), flag],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        _, after, tensors = r.stdout.split()[-3:]
        anon, file = map(int, after.split(","))
        out["anonymous_mb"][name], out["file_backed_mb"][name] = anon / 1024, file / 1024
        out["tensor_mb"][name] = int(tensors) / 2**20
    resident = {k: out["anonymous_mb"][k] + out["file_backed_mb"][k] for k in out["anonymous_mb"]}
    out["resident_above_imports_mb"] = {
        k: resident[k] - resident["imports only"] for k in ("fp32", "4-bit nf4")
    }
    out["ratios"] = {"fp32 / nf4, model tensors": out["tensor_mb"]["fp32"] / out["tensor_mb"]["4-bit nf4"]}
    return out


# ---------------------------------------------------------------- startup
# The floor a one-question command is measured against: the imports every transformers user pays, and the
# model and processor loaded as the model card shows. It reports its own time since its process started.
LOAD_PROBE = """
import sys, torch, transformers
m = sys.argv[1]
transformers.AutoModelForImageTextToText.from_pretrained(m)
transformers.AutoProcessor.from_pretrained(m)
from mevqa import process_seconds
print(process_seconds())
"""


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds from start to exit of a fresh process, and its stdout."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if r.returncode:
        raise RuntimeError(f"{cmd[2]} ... failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    return time.perf_counter() - t0, r.stdout


def bench_startup(work: Path, model: str | None, repeat: int = 3) -> dict:
    """`mevqa ask` on one clip, start to exit, against a fresh `python -c "import torch, transformers"`
    that loads the same model and processor; each in its own process, alternating (a warm-up round first
    when repeating), median kept. Both on the CPU, with this process's torch thread count."""
    model = model or str(build_tiny("qwen2_5_vl", work / "tiny-qwen2_5_vl"))
    clip = synthesize(work / "startup", subjects=1, clips_per_subject=1, size=112) / "frames" / "s01_c01"
    threads = str(torch.get_num_threads())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": threads}
    load = [sys.executable, "-c", LOAD_PROBE, model]
    ask = [sys.executable, "-m", "mevqa", "ask", str(clip), "What is the coarse expression class?"]
    ask += ["--model", model, "--device", "cpu", "--threads", threads, "--max-new-tokens", "16", "--json"]
    floor, whole = "python -c 'import torch, transformers' + load", "mevqa ask, one answer"
    runs: dict[str, list[tuple[float, str]]] = {floor: [], whole: []}
    for i in range(repeat + (repeat > 1)):
        for name, cmd in ((floor, load), (whole, ask)):
            timed = _timed(cmd, env)
            if i or repeat == 1:  # round 0 of several warms the page cache and is not kept
                runs[name].append(timed)
    seconds = {k: statistics.median(t for t, _ in v) for k, v in runs.items()}
    return {
        "seconds": seconds,
        "own_report_seconds": {  # what each process said of itself at its end: before the exit's teardown
            floor: statistics.median(float(o.split()[-1]) for _, o in runs[floor]),
            whole: statistics.median(json.loads(o)["process_seconds"] for _, o in runs[whole]),
        },
        "ratios": {"mevqa ask / (imports + load)": seconds[whole] / seconds[floor]},
        "target": "mevqa ask at most 1.5x the imports and model load a transformers user pays",
    }


def environment() -> dict:
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.machine(),
        "cpus": _cpus(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run(
    name: str,
    out: Path | None = None,
    model: str | None = None,
    clips: int = 8,
    size: int = 112,
    repeat: int = 3,
    video_seconds: float = 2.0,
    video_size: tuple[int, int] = (640, 480),
    base_url: list[str] | None = None,
    threads: int | None = None,
) -> dict:
    """Run one benchmark (or `all`: every one but `server`), return its results, write `<out>/<name>.json`.

    `threads` pins torch's threads: on a shared 2-core machine two threads swing results 3x or more
    between runs, one thread stays within about 10%. The choice is recorded in the results.
    """
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(name, out, model, clips, size, repeat, video_seconds, video_size, base_url)
    finally:
        torch.set_num_threads(previous)


def _run(
    name: str,
    out: Path | None,
    model: str | None,
    clips: int,
    size: int,
    repeat: int,
    video_seconds: float,
    video_size: tuple[int, int],
    base_url: list[str] | None,
) -> dict:
    if name == "server" and not base_url:
        raise InputError("bench server — needs --base-url of a server serving --model")
    names = BENCHES if name == "all" else (name,)
    results: dict[str, Any] = {"environment": {**environment(), "torch_threads": torch.get_num_threads()}}
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        own_model = {"sampling", "flow", "memory", "startup"}  # these need no loaded eval workload
        wl = workload(work, model, clips, size) if set(names) - own_model else None
        table: dict[str, Callable[[], dict]] = {
            "sampling": lambda: bench_sampling(work, video_seconds, video_size, repeat=repeat),
            "reuse": lambda: bench_reuse(wl, repeat),
            "overhead": lambda: bench_overhead(wl, repeat),
            "batching": lambda: bench_batching(wl, repeat=repeat),
            "server": lambda: bench_server(wl, base_url or [], repeat=repeat),
            "flow": lambda: bench_flow(work, repeat=repeat),
            "memory": lambda: bench_memory(work),
            "startup": lambda: bench_startup(work, model, repeat=repeat),
        }
        for n in names:
            results[n] = table[n]()
    if out:
        atomic_write(out / f"{name}.json", json.dumps(results, indent=2) + "\n")
    return results


def format_results(results: dict) -> str:
    """Every numeric table of every benchmark, one line a value; ratios marked with x."""
    lines = []
    for name, r in results.items():
        if name == "environment":
            continue
        lines.append(f"== {name}")
        for key, table in r.items():
            if isinstance(table, dict):
                unit = (
                    "x" if key == "ratios" else {"seconds": "s", "questions_per_second": "q/s"}.get(key, "")
                )
                lines += [
                    f"  {key + ': ' + str(k):<60} {v:10.4f} {unit}"
                    for k, v in table.items()
                    if isinstance(v, int | float)
                ]
        if "target" in r:
            lines.append(f"  target: {r['target']}")
    return "\n".join(lines)
