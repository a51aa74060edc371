"""`mevqa serve`: a base model + LoRA adapters behind vLLM's OpenAI-compatible server."""

from __future__ import annotations

import argparse

from mevqa.cli._args import add_settings, given
from mevqa.config import ServerSpec, VLLMSpec, from_dict


def cmd_serve(a: argparse.Namespace) -> int:
    from mevqa.serve import plan, serve

    engine = from_dict(VLLMSpec, given(a).get("vllm", {}), "mevqa serve")
    p = plan(
        a.model,
        a.adapter or [],
        a.adapters_dir,
        host=a.host,
        port=a.port,
        engine=engine,
        api_key=ServerSpec(api_key=a.api_key).key,
        dtype=a.dtype,
    )
    return serve(p, a.engine, a.dry_run, a.vllm, verbose=getattr(a, "verbose", False))


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "serve",
        parents=[common],
        help="serve a base model + LoRA adapters with vLLM (OpenAI-compatible)",
        description="Runs vLLM's OpenAI server from vLLM's own environment (`make vllm`) with multi-LoRA, "
        "the LoRA rank, multimodal limits and prefix caching; stops it on Ctrl-C or SIGTERM. Clients pick "
        "an adapter by its NAME (or its folder) as --adapter. --engine transformers runs `transformers "
        "serve` (CPU, a merged model, no LoRA).",
    )
    p.add_argument("--model", required=True, help="base model (directory or Hub id)")
    p.add_argument(
        "--adapter",
        action="append",
        metavar="NAME=PATH",
        help="serve the adapter folder PATH as model NAME (repeatable); a PATH alone is served under its "
        "folder's name; a bare NAME is a folder in --adapters-dir",
    )
    p.add_argument("--adapters-dir", help="serve every adapter folder in this directory")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="bind address (default: 127.0.0.1; another without --api-key warns: open to all who reach it)",
    )
    p.add_argument("--port", type=int, default=8000, help="default: 8000")
    p.add_argument(
        "--api-key",
        help="require this key (vLLM only). Prefer $MEVQA_API_KEY: a flag's value is visible to every user "
        "in `ps`; the key reaches vLLM in its environment, never on its command line",
    )
    p.add_argument("--dtype", default="auto", help="weights dtype for vLLM (default: auto)")
    p.add_argument("--engine", choices=("vllm", "transformers"), default="vllm", help="default: vllm")
    p.add_argument("--vllm", help="vLLM's environment (a venv folder or its python; default: .venv-vllm)")
    p.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    add_settings(p, VLLMSpec, section="vllm.")
    p.set_defaults(func=cmd_serve)
