"""The offline quickstart behind `make demo`: a tiny VLM learns micro-expressions on this CPU.

1. SynthME clips (12 subjects; 9 train, 3 held out) and a tiny random Qwen2.5-VL (or --family's);
2. a stand-in for a pretrained base: full fine-tune on AU questions (adapters/recipes/tiny_synthme_base.yaml);
3. score the base on the held-out subjects (it never saw the emotion questions: ~chance);
4. train a LoRA adapter for the MEGC questions (adapters/recipes/tiny_synthme.yaml);
5. score again with the adapter and print both tables.
Everything is built locally and cached under --out; a second run only redoes steps 3-5. `--max-steps N`
cuts both trainings to N steps: a smoke run of the whole path, not a result.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

from mevqa.cli import main as cli_main
from mevqa.data.megc import read_jsonl, write_jsonl
from mevqa.facs import COARSE_LABELS, FINE_LABELS
from mevqa.models.families import FAMILIES
from mevqa.prompts import classify

RECIPES = Path(__file__).resolve().parent.parent / "adapters" / "recipes"
DEFAULT_FAMILY = "qwen2_5_vl"  # what the recipes were tuned on; its files keep their historical names


def pretraining_rows(rows: list[dict], seed: int = 0) -> list[dict]:
    """Stage-1 data: the AU questions, plus 'name the classes' with the labels in a shuffled order.

    The second kind teaches the label *vocabulary* (as a pretrained LM has it) without tying any label
    to what the clip shows: the order is random, so the visual mapping is left for the LoRA to learn.
    """
    rng = random.Random(seed)
    out, clips = [], {}
    for r in rows:
        if classify(r["question"])[0] in ("au_list", "au_presence", "au_side"):
            out.append(r)
        clips.setdefault(r["image_id"], r)
    for cid, r in clips.items():
        base = {k: v for k, v in r.items() if k not in ("id", "question", "answer")}
        for j in range(2):
            for kind, labels in (("coarse", COARSE_LABELS), ("fine-grained", FINE_LABELS)):
                order = list(labels)
                rng.shuffle(order)
                out.append(
                    {
                        **base,
                        "id": f"{cid}_vocab{j}_{kind}",
                        "question": f"Name the {kind} expression classes.",
                        "answer": ", ".join(order),
                    }
                )
    return out


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def mevqa(*args: str) -> None:
    """Run one `mevqa` command; stop the demo on the first failure (its error line is already printed)."""
    rc = cli_main(list(args))
    if rc:
        raise SystemExit(rc)


def build_inputs(out: Path, family: str) -> tuple[Path, Path]:
    model, data = out / f"tiny-{family}", out / "synthme"
    if not (model / "config.json").exists():
        step(f"building a tiny {family} (random weights, local tokenizer) in {model}")
        mevqa("models", "tiny", "--family", family, "--size", "demo", "--out", str(model))
    if not (data / "pretrain.jsonl").exists():
        step(f"making SynthME clips in {data} (12 subjects x 30 clips, 112 px, 200 fps)")
        mevqa(
            "data",
            "synth",
            "--out",
            str(data),
            "--subjects",
            "12",
            "--clips-per-subject",
            "30",
            "--size",
            "112",
        )
        write_jsonl(data / "pretrain.jsonl", pretraining_rows(read_jsonl(data / "train.jsonl")))
    return model, data


def evaluate(name: str, out: Path, base: Path, data: Path, adapter: Path | None, *extra: str) -> None:
    args = [
        "eval",
        "--data",
        str(data / "test.jsonl"),
        "--root",
        str(data),
        "--model",
        str(base),
        "--out",
        str(out / "results" / name),
        "--input",
        "flow",
        "--max-new-tokens",
        "48",
        "--overwrite",
    ]
    mevqa(*args, *(["--adapter", str(adapter)] if adapter else []), *extra)


def run(out: Path, family: str = DEFAULT_FAMILY, max_steps: int | None = None) -> int:
    t0 = time.perf_counter()
    model, data = build_inputs(out, family)
    tag = "" if family == DEFAULT_FAMILY else f"-{family}"  # each family's base, adapter and results apart
    steps = ["--max-steps", str(max_steps)] if max_steps else []
    limit = ["--limit", "10"] if max_steps else []  # a smoke run asks 10 questions
    base = out / f"tiny-base{tag}"
    if not (base / "config.json").exists():
        step("stage 1: pretraining the tiny base on AU questions (full fine-tune; cached)")
        mevqa(
            "train",
            "--config",
            str(RECIPES / "tiny_synthme_base.yaml"),
            "--data",
            str(data / "pretrain.jsonl"),
            "--root",
            str(data),
            "--model",
            str(model),
            "--out",
            str(base),
            "--overwrite",
            *steps,
        )
    step("held-out subjects, base model (never trained on the emotion questions)")
    evaluate(f"before{tag}", out, base, data, None, *limit)
    adapter = out / f"tiny-synthme-lora{tag}"
    step("stage 2: LoRA adapter for the MEGC questions (adapters/recipes/tiny_synthme.yaml)")
    mevqa(
        "train",
        "--config",
        str(RECIPES / "tiny_synthme.yaml"),
        "--data",
        str(data / "train.jsonl"),
        "--eval-data",
        str(data / "test.jsonl"),
        "--root",
        str(data),
        "--model",
        str(base),
        "--out",
        str(adapter),
        "--overwrite",
        *steps,
    )
    step("held-out subjects, base + LoRA adapter")
    evaluate(f"after{tag}", out, base, data, adapter, *limit)
    results = out / "results"
    step(
        f"done in {time.perf_counter() - t0:.0f} s — reports: {results / f'before{tag}' / 'report.md'}, "
        f"{results / f'after{tag}' / 'report.md'}; adapter: {adapter} (training.png, metrics.json)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m mevqa.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=Path(".cache/demo"), help="work folder (default: .cache/demo)")
    p.add_argument(
        "--family",
        default=DEFAULT_FAMILY,
        choices=FAMILIES,
        help=f"tiny base architecture ({DEFAULT_FAMILY})",
    )
    p.add_argument("--max-steps", type=int, help="cut both trainings to N steps (a smoke run of the path)")
    a = p.parse_args(argv)
    return run(a.out, a.family, a.max_steps)


if __name__ == "__main__":
    sys.exit(main())
