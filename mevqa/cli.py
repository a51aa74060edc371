"""`mevqa <command>`: parse, call, print. Work lives in the modules; this file only wires flags to them."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from mevqa import __version__
from mevqa.config import INPUT_MODES, SAMPLINGS, FrameConfig, GenConfig
from mevqa.errors import InputError, MevqaError
from mevqa.prompts import PROMPT_STRATEGIES

Handler = Callable[[argparse.Namespace], int]


def cmd_ask(a: argparse.Namespace) -> int:
    from mevqa.backends.base import VQARequest, load_backend
    from mevqa.inputs import load_clip, question_message

    cfg = FrameConfig(
        frames=a.frames, sampling=a.sampling, input=a.input, folder_fps=a.fps, flow_with_oao=a.flow_with_oao
    )
    clip = load_clip(a.clip, cfg, a.onset, a.apex, a.offset)  # bad clips fail before a model is loaded
    backend = load_backend(
        a.backend,
        model=a.model,
        adapter=a.adapter,
        device=a.device,
        trust_remote_code=a.trust_remote_code,
        **_server_kwargs(a),
    )
    t0 = time.perf_counter()
    (ans,) = backend.generate(
        [VQARequest("ask", (question_message(clip, a.question, cfg),))],
        GenConfig(max_new_tokens=a.max_new_tokens, batch_size=1),
    )
    if ans.error:
        raise MevqaError(f"{a.clip} — the model failed on this clip: {ans.error}")
    if a.json:
        print(
            json.dumps(
                {
                    "answer": ans.text,
                    "model": a.model,
                    "adapter": a.adapter,
                    "frames": clip.indices,
                    "seconds": round(time.perf_counter() - t0, 3),
                }
            )
        )
    else:
        print(ans.text)
    return 0


def cmd_models_tiny(a: argparse.Namespace) -> int:
    from mevqa.models.tiny import build_tiny

    print(build_tiny(a.family, a.out, seed=a.seed))
    return 0


def cmd_data_synth(a: argparse.Namespace) -> int:
    from mevqa.data.synth import synthesize

    out = synthesize(a.out, a.subjects, a.clips_per_subject, a.fps, a.size, a.seed, a.video, a.test_fraction)
    print(f"wrote {out}/frames, annotations.csv, train.jsonl, test.jsonl")
    return 0


def _print_list(title: str, items: list[str], limit: int = 10) -> None:
    if items:
        print(f"{title} ({len(items)}):")
        for it in items[:limit]:
            print(f"  {it}")
        if len(items) > limit:
            print(f"  ... and {len(items) - limit} more")


def cmd_data_validate(a: argparse.Namespace) -> int:
    from mevqa.data.megc import read_jsonl, validate

    rows = read_jsonl(a.file)
    v = validate(rows, a.root, a.clip_pattern)
    datasets = sorted({d for d, _ in v.counts})
    types = sorted({t for _, t in v.counts})
    print(f"{a.file}: {len(rows)} rows, {v.clips} clips")
    print(f"{'question type':<14}" + "".join(f"{d:>10}" for d in datasets))
    for t in types:
        print(f"{t:<14}" + "".join(f"{v.counts[(d, t)]:>10}" for d in datasets))
    _print_list("duplicate ids", v.duplicate_ids)
    _print_list("unknown question templates", v.unknown_questions)
    _print_list("answers outside the label sets", v.bad_answers)
    _print_list(f"clips missing under {a.root}", v.missing_clips)
    if not v.ok:
        print(f"error: {a.file} — invalid (see above)", file=sys.stderr)
        return 2
    print("valid" + ("" if a.root else " (clips not checked: pass --root)"))
    return 0


def cmd_data_stats(a: argparse.Namespace) -> int:
    from mevqa.data.megc import label_stats, read_jsonl

    for qtype, by_ds in sorted(label_stats(read_jsonl(a.file)).items()):
        print(f"== {qtype}")
        for ds, counts in sorted(by_ds.items()):
            total = sum(counts.values())
            labels = ", ".join(f"{k} {n} ({100 * n / total:.0f}%)" for k, n in counts.most_common())
            print(f"  {ds} [{total}]: {labels}")
    return 0


def cmd_data_convert(a: argparse.Namespace) -> int:
    from mevqa.data.convert import convert
    from mevqa.data.megc import write_jsonl

    rows = convert(a.annotations, a.dataset, seed=a.seed)
    write_jsonl(a.out, rows)
    clips = len({r["image_id"] for r in rows})
    print(f"wrote {a.out}: {len(rows)} questions about {clips} clips")
    return 0


def cmd_score(a: argparse.Namespace) -> int:
    from mevqa.data.megc import read_jsonl, row_id
    from mevqa.evaluation.metrics import score_rows
    from mevqa.evaluation.report import format_table, write_json

    gold, pred = read_jsonl(a.gold), read_jsonl(a.pred)
    answers = {row_id(r): str(r.get("answer", "")) for r in pred}
    unknown = set(answers) - {row_id(r) for r in gold}
    if unknown:
        print(
            f"warning: {len(unknown)} predicted ids are not in --gold (first: {sorted(unknown)[0]})",
            file=sys.stderr,
        )
    metrics = score_rows(gold, answers, a.label_set)
    if a.out:
        write_json(Path(a.out) / "metrics.json", metrics)
    print(json.dumps(metrics, indent=2) if a.json else format_table(metrics))
    return 0


EVAL_FLAGS = (
    "data",
    "root",
    "out",
    "model",
    "adapter",
    "backend",
    "input",
    "frames",
    "sampling",
    "prompt",
    "batch_size",
    "max_new_tokens",
    "limit",
    "clip_pattern",
    "label_set",
    "seed",
    "device",
    "base_url",
    "api_key",
    "concurrency",
    "image_format",
    "retries",
    "video_as",
)


def _config_values(a: argparse.Namespace, flags: tuple[str, ...], switches: tuple[str, ...]) -> dict:
    """The --config YAML, overridden by the flags given on the command line; data/model/out required."""
    from mevqa.config import load_yaml

    values = load_yaml(a.config) if a.config else {}
    values.update({k: getattr(a, k) for k in flags if getattr(a, k) is not None})
    values.update({k: True for k in switches if getattr(a, k)})
    missing = [f"--{k}" for k in ("data", "model", "out") if not values.get(k)]
    if missing:
        raise InputError(f"{', '.join(missing)} — required (on the command line or in --config)")
    return values


def cmd_eval(a: argparse.Namespace) -> int:
    from mevqa.config import from_dict
    from mevqa.evaluation.report import format_table
    from mevqa.evaluation.runner import EvalConfig, run_eval

    values = _config_values(a, EVAL_FLAGS, ("overwrite",))
    if a.no_reuse:
        values["reuse"] = False
    if values.get("adapter"):  # the adapter's recorded input mode and prompt, unless set here
        from mevqa.train.adapters import recipe

        recorded = recipe(values["adapter"])
        values.update(
            {
                k: recorded[k]
                for k in ("input", "frames", "sampling", "prompt")
                if k in recorded and k not in values
            }
        )
    summary = run_eval(from_dict(EvalConfig, values, a.config or "mevqa eval"))
    c, run = summary["counts"], summary["run"]
    print(
        f"{c['n']} questions, {c['answered']} answered, {c['errors']} errors; "
        f"{run['answered_this_run']} answered this run in {run['wall_seconds']} s"
    )
    if summary["metrics"]:
        print(format_table(summary["metrics"]))
    for f in summary["files"]:
        print(f"  wrote {f}")
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    from mevqa.bench import format_results, run

    results = run(
        a.name,
        Path(a.out) if a.out else None,
        a.model,
        clips=a.clips,
        size=a.size,
        repeat=a.repeat,
        base_url=a.base_url,
    )
    print(format_results(results))
    if a.out:
        print(f"wrote {Path(a.out) / (a.name + '.json')}")
    return 0


TRAIN_FLAGS = (
    "data",
    "root",
    "model",
    "out",
    "method",
    "eval_data",
    "input",
    "frames",
    "prompt",
    "lora_r",
    "lora_alpha",
    "lr",
    "epochs",
    "max_steps",
    "batch_size",
    "grad_accum",
    "seed",
    "device",
)


def cmd_train(a: argparse.Namespace) -> int:
    from mevqa.config import from_dict
    from mevqa.train.lora import TrainConfig, train

    values = _config_values(a, TRAIN_FLAGS, ("resume", "lora_vision", "lora_projector", "grad_checkpointing"))
    cfg = from_dict(TrainConfig, values, a.config or "mevqa train")
    if Path(cfg.out, "adapter_config.json").exists() and not cfg.resume and not a.overwrite:
        raise InputError(f"--out {cfg.out} — already holds an adapter; pass --resume or --overwrite")
    metrics = train(cfg)
    best = metrics.get("best_held_out_coarse_uf1")
    loss = metrics["train_loss"][-1][1] if metrics.get("train_loss") else float("nan")
    print(
        f"trained {metrics['steps']} steps; final loss {loss:.4f}; best held-out coarse UF1 "
        f"{'—' if best is None else f'{best:.3f}'}"
    )
    print(f"wrote {cfg.out}")
    return 0


def cmd_adapters_list(a: argparse.Namespace) -> int:
    from mevqa.train.adapters import list_adapters

    rows = list_adapters(a.dir)
    if not rows:
        print(f"no adapters in {a.dir}")
        return 0
    print(f"{'name':<24}{'base':<40}{'rank':>5}  {'input':<8}{'best UF1-C':>10}")
    for r in rows:
        best = "—" if r["best_coarse_uf1"] is None else f"{r['best_coarse_uf1']:.3f}"
        print(f"{r['name']:<24}{str(r['base'])[-39:]:<40}{str(r['rank']):>5}  {r['input']:<8}{best:>10}")
    return 0


def cmd_adapters_merge(a: argparse.Namespace) -> int:
    from mevqa.train.adapters import merge, resolve_adapter

    print(f"wrote {merge(resolve_adapter(a.name, a.dir), a.model, a.out)}")
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from mevqa.serve import plan, run

    p = plan(
        a.model,
        a.adapter or [],
        a.adapters_dir,
        host=a.host,
        port=a.port,
        tensor_parallel_size=a.tensor_parallel_size,
        api_key=a.api_key or os.environ.get("MEVQA_API_KEY"),
    )
    return run(p, a.engine, a.dry_run)


def _server_kwargs(a: argparse.Namespace) -> dict:
    """--base-url / --api-key / --concurrency / --image-format for the openai backend."""
    keys = ("base_url", "api_key", "concurrency", "image_format", "retries", "video_as")
    return {k: getattr(a, k) for k in keys if getattr(a, k, None) is not None}


def _add_server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--base-url",
        action="append",
        help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 "
        "(--backend openai; repeat for replicas)",
    )
    p.add_argument("--api-key", help="API key for --base-url (default: $MEVQA_API_KEY)")
    p.add_argument("--concurrency", type=int, help="requests in flight (default: 4)")
    p.add_argument(
        "--image-format", choices=("png", "jpeg"), help="frame encoding over HTTP (default: png, lossless)"
    )
    p.add_argument(
        "--retries", type=int, help="retries on connection errors and 5xx, never on 4xx (default: 3)"
    )
    p.add_argument(
        "--video-as",
        choices=("frames", "video_url"),
        help="--input video over HTTP: image_url frames (default) or one mp4 video_url part (vLLM)",
    )


CHAT_HELP = "commands: /agent (coarse -> fine -> AUs, with a consistency check), /flow, /reset, /quit"


def cmd_chat(a: argparse.Namespace) -> int:
    from mevqa.agent import ChatSession, ClipContext, chat_model, hierarchical
    from mevqa.backends.base import load_backend

    ctx = ClipContext(
        a.clip,
        FrameConfig(frames=a.frames, sampling=a.sampling, input=a.input, folder_fps=a.fps),
        a.onset,
        a.apex,
        a.offset,
    )
    ctx.images()  # a bad clip fails here, before the model loads
    backend = load_backend(
        a.backend,
        model=a.model,
        adapter=a.adapter,
        device=a.device,
        trust_remote_code=a.trust_remote_code,
        **_server_kwargs(a),
    )
    session = ChatSession(backend, ctx, GenConfig(max_new_tokens=a.max_new_tokens, batch_size=1))
    print(f"chatting about {a.clip} with {a.model}{' + ' + a.adapter if a.adapter else ''}. {CHAT_HELP}")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if line in ("/quit", "/exit"):
            return 0
        if line == "/reset":
            session.history = []
            print("(history cleared)")
        elif line == "/flow":
            print(json.dumps(ctx.flow()[1]))
        elif line == "/agent":
            print(json.dumps(hierarchical(chat_model(backend, session.gen), ctx), indent=2))
        elif line:
            print(f"mevqa> {session.send(line)}", flush=True)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", required=True, help="HF model directory or Hub id (e.g. Qwen/Qwen2.5-VL-7B-Instruct)"
    )
    p.add_argument("--adapter", help="PEFT LoRA adapter folder to apply on top of --model")
    p.add_argument("--backend", default="transformers", help="transformers (default), openai or vllm")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the checkpoint's own Python code")
    p.add_argument("--max-new-tokens", type=int, default=32, help="answer length cap (default: 32)")


def _add_frame_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=int, default=8, help="frames for uniform sampling (default: 8)")
    p.add_argument(
        "--sampling", choices=SAMPLINGS, default="uniform", help="frame selection (default: uniform)"
    )
    p.add_argument(
        "--input",
        choices=INPUT_MODES,
        default="frames",
        help="frames: N images (default); video: one video part; oao: onset/apex/offset images; "
        "flow: optical-flow image onset->apex; diff: apex-onset difference image",
    )
    p.add_argument(
        "--flow-with-oao", action="store_true", help="with --input flow, also show onset/apex/offset"
    )
    p.add_argument("--fps", type=float, default=200.0, help="frame rate of a frame folder (default: 200)")
    for k in ("onset", "apex", "offset"):
        p.add_argument(
            f"--{k}", type=int, help=f"{k} frame number (file number in a folder, 0-based index in a video)"
        )


def _parser_ask(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ask",
        help="ask one question about one clip",
        description="Sample frames from CLIP (video file or frame folder) and ask QUESTION.",
    )
    p.add_argument("clip", help="video file (mp4, avi, ...) or folder of frames (jpg/png/bmp)")
    p.add_argument("question", help='e.g. "What is the coarse expression class?"')
    _add_model_args(p)
    _add_server_args(p)
    _add_frame_args(p)
    p.add_argument(
        "--json", action="store_true", help="print answer, model, adapter, frames, seconds as JSON"
    )
    p.set_defaults(func=cmd_ask)


def _parser_data(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="MEGC files and SynthME clips").add_subparsers(
        dest="sub", required=True
    )
    p = data.add_parser(
        "synth",
        help="generate SynthME micro-expression clips + MEGC-style QA",
        description="Procedural face clips with AU-driven micro-movements (onset-apex-offset).",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--subjects", type=int, default=4, help="identities (default: 4)")
    p.add_argument("--clips-per-subject", type=int, default=5, help="clips per identity (default: 5)")
    p.add_argument("--fps", type=float, default=200.0, help="frame rate (default: 200, like CASME II / SAMM)")
    p.add_argument("--size", type=int, default=224, help="frame side in pixels (default: 224)")
    p.add_argument("--seed", type=int, default=0, help="same seed gives identical files")
    p.add_argument("--video", action="store_true", help="also write videos/<clip>.mp4")
    p.add_argument(
        "--test-fraction", type=float, default=0.25, help="share of subjects held out (default: 0.25)"
    )
    p.set_defaults(func=cmd_data_synth)

    p = data.add_parser("convert", help="annotation sheet (xlsx/csv) -> MEGC QA JSONL")
    p.add_argument("--dataset", required=True, help="casme2, samm, casme3, smic or synthme")
    p.add_argument("--annotations", required=True, help="the dataset's coding sheet (.xlsx or .csv)")
    p.add_argument("--out", required=True, help="output JSONL")
    p.add_argument("--seed", type=int, default=0, help="seed for the absent AU of the 'no' question")
    p.set_defaults(func=cmd_data_convert)
    p = data.add_parser("validate", help="check a MEGC JSONL file (templates, labels, ids, clips)")
    p.add_argument("file", help="train or test JSONL")
    p.add_argument("--root", help="clip folder: also check every row's clip exists")
    p.add_argument("--clip-pattern", help="clip path under --root, e.g. {dataset}/{subject}/{filename}")
    p.set_defaults(func=cmd_data_validate)
    p = data.add_parser("stats", help="label distributions of a MEGC JSONL file")
    p.add_argument("file")
    p.set_defaults(func=cmd_data_stats)


def _parser_chat(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "chat",
        help="chat about one clip in the terminal (multi-turn)",
        description="Multi-turn chat about CLIP; the frames go with the first question. " + CHAT_HELP,
    )
    p.add_argument("clip", help="video file or folder of frames")
    _add_model_args(p)
    _add_server_args(p)
    _add_frame_args(p)
    p.set_defaults(func=cmd_chat)


def _parser_score(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score predictions against gold answers (MEGC metrics)",
        description="Match rows by id / video_id, read labels from free text, compute UF1/UAR/...",
    )
    p.add_argument("--pred", required=True, help="predictions JSONL (rows with id or video_id + answer)")
    p.add_argument("--gold", required=True, help="gold JSONL with answers")
    p.add_argument("--out", help="folder for metrics.json")
    p.add_argument("--json", action="store_true", help="print metrics.json instead of the table")
    p.add_argument(
        "--label-set",
        choices=("gt", "union"),
        default="gt",
        help="UF1/UAR classes: ground truth (default) or union with predictions",
    )
    p.set_defaults(func=cmd_score)


def _add_job_args(p: argparse.ArgumentParser, config: str, data: str, out: str) -> None:
    """The flags `eval` and `train` share; each may also come from the --config YAML."""
    p.add_argument("--config", help=config)
    p.add_argument("--data", help=data)
    p.add_argument("--root", help="folder holding the clips")
    p.add_argument("--model", help="model directory or Hub id")
    p.add_argument("--out", help=out)
    p.add_argument("--input", choices=INPUT_MODES, help="frames (default), video, oao, flow or diff")
    p.add_argument("--frames", type=int, help="frames per clip (default: 8)")
    p.add_argument("--prompt", choices=PROMPT_STRATEGIES, help="prompt strategy (default: plain)")
    p.add_argument("--batch-size", type=int, help="questions per batch")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu, cuda, ... (default: auto)")


def _parser_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="answer a MEGC file with a model; predictions, metrics, report",
        description="Batch evaluation, resumable: rerunning skips questions already answered "
        "with the same settings.",
    )
    _add_job_args(
        p,
        "YAML with the same keys as these flags (flags override it)",
        "MEGC JSONL (train-style with answers, or a test file)",
        "output folder",
    )
    p.add_argument("--adapter", help="PEFT LoRA adapter folder")
    p.add_argument("--backend", help="inference backend (default: transformers)")
    p.add_argument("--sampling", choices=SAMPLINGS, help="uniform (default), keyframes or all")
    p.add_argument("--max-new-tokens", type=int, help="answer length cap (default: 48)")
    p.add_argument("--limit", type=int, help="only the first N questions")
    p.add_argument("--clip-pattern", help="clip path under --root, e.g. {dataset}/{subject}/{filename}")
    p.add_argument("--label-set", choices=("gt", "union"), help="UF1/UAR classes (default: gt)")
    _add_server_args(p)
    p.add_argument("--no-reuse", action="store_true", help="decode and ask per question (benchmark baseline)")
    p.add_argument("--overwrite", action="store_true", help="discard earlier predictions in --out")
    p.set_defaults(func=cmd_eval)


def _parser_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="speed benchmarks, as ratios measured in one run",
        description="sampling: sparse vs full decode; reuse: per-clip reuse in eval; overhead: "
        "harness vs bare generate; batching: batch 1/4/16; all: every one.",
    )
    p.add_argument("name", choices=("sampling", "reuse", "overhead", "batching", "server", "all"))
    p.add_argument("--base-url", help="for `server`: an OpenAI-compatible server serving --model")
    p.add_argument("--out", help="folder for <name>.json")
    p.add_argument(
        "--model", help="model for the eval benchmarks (default: a tiny Qwen2.5-VL built on the fly)"
    )
    p.add_argument("--clips", type=int, default=8, help="SynthME clips for the eval benchmarks (default: 8)")
    p.add_argument("--size", type=int, default=112, help="SynthME frame size (default: 112)")
    p.add_argument(
        "--repeat", type=int, default=3, help="timed repeats per variant, median kept (default: 3)"
    )
    p.set_defaults(func=cmd_bench)


def _parser_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a LoRA adapter (or QLoRA / full) on MEGC-style QA",
        description="Loss on answer tokens only; LoRA on the language model by default (what vLLM "
        "serves). Multi-GPU: accelerate launch -m mevqa train ...",
    )
    _add_job_args(
        p,
        "recipe YAML (adapters/recipes/*.yaml); flags override it",
        "training JSONL",
        "adapter folder to write, e.g. adapters/my-lora",
    )
    p.add_argument("--method", choices=("lora", "qlora", "full"), help="default: lora")
    p.add_argument("--eval-data", help="held-out JSONL scored after every epoch")
    p.add_argument("--lora-r", type=int, help="LoRA rank (default: 16)")
    p.add_argument("--lora-alpha", type=int, help="LoRA alpha (default: 32)")
    p.add_argument(
        "--lora-vision", action="store_true", help="also LoRA the vision tower (vLLM ignores it by default)"
    )
    p.add_argument("--lora-projector", action="store_true", help="also LoRA the vision-language projector")
    p.add_argument("--lr", type=float, help="peak learning rate (default: 1e-4)")
    p.add_argument("--epochs", type=float, help="default: 3")
    p.add_argument("--max-steps", type=int, help="stop after N optimizer steps")
    p.add_argument("--grad-accum", type=int, help="gradient accumulation steps (default: 8)")
    p.add_argument("--grad-checkpointing", action="store_true", help="trade compute for memory")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing adapter in --out")
    p.set_defaults(func=cmd_train)


def _parser_adapters(sub: argparse._SubParsersAction) -> None:
    adapters = sub.add_parser("adapters", help="list / merge trained adapters").add_subparsers(
        dest="sub", required=True
    )
    p = adapters.add_parser("list", help="name, base, rank, input mode, best held-out score")
    p.add_argument("--dir", default="adapters", help="adapters folder (default: adapters)")
    p.set_defaults(func=cmd_adapters_list)
    p = adapters.add_parser("merge", help="merge an adapter into its base (a plain checkpoint)")
    p.add_argument("name", help="adapter folder name under --dir, or a path")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--model", help="base model (default: the one recorded in mevqa.yaml)")
    p.add_argument("--dir", default="adapters", help="adapters folder (default: adapters)")
    p.set_defaults(func=cmd_adapters_merge)


def _parser_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a base model + LoRA adapters with vLLM (OpenAI-compatible)",
        description="Builds the `vllm serve` command (multi-LoRA, rank, multimodal limits, prefix "
        "caching) and runs it; --engine transformers runs `transformers serve` (CPU, no LoRA).",
    )
    p.add_argument("--model", required=True, help="base model (directory or Hub id)")
    p.add_argument(
        "--adapter",
        action="append",
        metavar="NAME=PATH",
        help="adapter to serve as model NAME (repeatable); a bare NAME is looked up in --adapters-dir",
    )
    p.add_argument("--adapters-dir", help="serve every adapter folder in this directory")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs per replica (default: 1)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="default: 8000")
    p.add_argument("--api-key", help="require this key (default: $MEVQA_API_KEY)")
    p.add_argument("--engine", choices=("vllm", "transformers"), default="vllm", help="default: vllm")
    p.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    p.set_defaults(func=cmd_serve)


def _parser_models(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="build offline checkpoints").add_subparsers(
        dest="sub", required=True
    )
    p = models.add_parser("tiny", help="write a tiny random-weight VLM of a real architecture")
    p.add_argument("--family", default="qwen2_5_vl", help="qwen2_5_vl (default) or idefics3")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0, help="weight seed; same seed gives the same bytes")
    p.set_defaults(func=cmd_models_tiny)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mevqa", description="Micro-expression visual question answering.")
    parser.add_argument("--version", action="version", version=f"mevqa {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and library messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for add in (
        _parser_ask,
        _parser_data,
        _parser_chat,
        _parser_score,
        _parser_eval,
        _parser_bench,
        _parser_train,
        _parser_adapters,
        _parser_serve,
        _parser_models,
    ):
        add(sub)
    return parser


def _quiet_libraries() -> None:
    """Library warnings go to logging (shown with -v); a user sees our answer or our one error line."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.captureWarnings(True)
    warnings.simplefilter("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:
        _quiet_libraries()
    try:
        return args.func(args)
    except MevqaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
