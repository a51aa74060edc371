"""`mevqa models tiny` (offline tiny checkpoints) and `mevqa adapters list|merge`."""

from __future__ import annotations

import argparse

from mevqa.models.families import FAMILIES  # plain data: no torch at start-up


def cmd_tiny(a: argparse.Namespace) -> int:
    from mevqa.models.tiny import build_tiny

    print(build_tiny(a.family, a.out, seed=a.seed, size=a.size))
    return 0


def cmd_list(a: argparse.Namespace) -> int:
    from mevqa.models.adapters import list_adapters

    rows = list_adapters(a.dir)
    if not rows:
        print(f"no adapters in {a.dir}")
        return 0
    print(f"{'name':<24}{'base':<40}{'rank':>5}  {'method':<7}{'input':<8}{'best UF1-C':>10}")
    for r in rows:
        best = "—" if r["best_coarse_uf1"] is None else f"{r['best_coarse_uf1']:.3f}"
        base, rank = str(r["base"])[-39:], str(r["rank"])
        print(f"{r['name']:<24}{base:<40}{rank:>5}  {r['method']:<7}{r['input']:<8}{best:>10}")
    return 0


def cmd_merge(a: argparse.Namespace) -> int:
    from mevqa.models.adapters import merge, resolve_adapter

    out, note = merge(resolve_adapter(a.name, a.dir), a.model, a.out)
    print(f"wrote {out}" + (f" ({note})" if note else ""))
    return 0


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    models = sub.add_parser("models", parents=[common], help="build offline checkpoints").add_subparsers(
        dest="sub", required=True
    )
    p = models.add_parser(
        "tiny", parents=[common], help="write a tiny random-weight VLM of a real architecture"
    )
    p.add_argument(
        "--family",
        default="qwen2_5_vl",
        choices=FAMILIES,
        help="the architecture, an entry of mevqa/models/families.py (default: qwen2_5_vl)",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0, help="weight seed; same seed gives the same bytes")
    p.add_argument(
        "--size",
        default="tiny",
        choices=("tiny", "demo", "small"),
        help="tiny (0.2M parameters, tests), demo (tiny, 4 heads of 16) or small (~100M, memory benchmarks)",
    )
    p.set_defaults(func=cmd_tiny)

    adapters = sub.add_parser(
        "adapters", parents=[common], help="list / merge trained adapters"
    ).add_subparsers(dest="sub", required=True)
    p = adapters.add_parser(
        "list", parents=[common], help="name, base, rank, method, input mode, best held-out score"
    )
    p.add_argument("--dir", default="adapters", help="adapters folder (default: adapters)")
    p.set_defaults(func=cmd_list)
    p = adapters.add_parser(
        "merge",
        parents=[common],
        help="merge an adapter into its full-precision base (a plain checkpoint)",
        description="Base + LoRA as one ordinary checkpoint, e.g. for `transformers serve`. A QLoRA adapter "
        "is merged into the unquantized base (the usual QLoRA deployment).",
    )
    p.add_argument("name", help="adapter folder name under --dir, or a path")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--model", help="base model (default: the one recorded in mevqa.yaml)")
    p.add_argument("--dir", default="adapters", help="adapters folder (default: adapters)")
    p.set_defaults(func=cmd_merge)
