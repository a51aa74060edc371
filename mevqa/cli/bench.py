"""`mevqa bench`: speed measured as ratios of variants timed side by side in one run."""

from __future__ import annotations

import argparse
from pathlib import Path

from mevqa.models.families import SHAPES  # plain data: no torch at start-up


def cmd_bench(a: argparse.Namespace) -> int:
    from mevqa.bench import format_results, run

    if a.name == "gpu":
        from mevqa import bench_gpu

        results = bench_gpu.run(a.shape, Path(a.out) if a.out else None)
        print(bench_gpu.markdown(results))
        return 0
    if a.name == "spot":
        from mevqa import bench_spot

        print(bench_spot.markdown(bench_spot.run(Path(a.out) if a.out else None)))
        return 0
    results = run(
        a.name,
        Path(a.out) if a.out else None,
        a.model,
        clips=a.clips,
        size=a.size,
        repeat=a.repeat,
        base_url=a.base_url,
        threads=a.threads,
    )
    print(format_results(results))
    if a.out:
        print(f"wrote {Path(a.out) / (a.name + '.json')}")
    return 0


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "bench",
        parents=[common],
        help="speed benchmarks, as ratios measured in one run",
        description="sampling: sparse vs full decode; reuse: per-clip reuse in eval; overhead: harness vs "
        "bare generate; batching: batch 8/32/64 per clip vs across clips; server: in-process vs a server; "
        "flow: Farneback vs TV-L1; memory: 4-bit vs fp32 loading; spot: the spotter against real time, "
        "its memory at 1-10 minutes of video; startup: `mevqa ask` start to exit vs importing torch + "
        "transformers and loading the model, each a fresh process; gpu: the GPU rows (--shape); all: the CPU "
        "ones.",
    )
    p.add_argument(
        "name",
        choices=(
            "sampling",
            "reuse",
            "overhead",
            "batching",
            "server",
            "flow",
            "memory",
            "startup",
            "spot",
            "gpu",
            "all",
        ),
        help="which benchmark (see above)",
    )
    p.add_argument(
        "--shape",
        default="qwen2_5_vl_7b",
        choices=(*SHAPES, "tiny"),
        help="for `gpu`: the architecture, built with random weights from its published config",
    )
    p.add_argument(
        "--base-url",
        action="append",
        help="for `server`: an OpenAI-compatible server serving --model (repeat to compare servers)",
    )
    p.add_argument("--out", help="folder for <name>.json")
    p.add_argument(
        "--model",
        help="model for the eval and startup benchmarks (default: a tiny Qwen2.5-VL built on the fly)",
    )
    p.add_argument("--clips", type=int, default=8, help="SynthME clips for the eval benchmarks (default: 8)")
    p.add_argument("--size", type=int, default=112, help="SynthME frame size (default: 112)")
    p.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="timed repeats per variant, median kept (default: 3); startup alternates fresh processes",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads, pinned so shared cores do not swing the ratios (default: 1; 0 = torch's)",
    )
    p.set_defaults(func=cmd_bench)
