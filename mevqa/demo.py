"""The offline quickstart behind `make demo`: build a tiny Qwen2.5-VL, make SynthME clips, ask a question.

Everything is built locally (no downloads); cached under --out so a second run is quick.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mevqa.cli import main as cli_main


def run(out: Path) -> int:
    model, data = out / "tiny-qwen2_5_vl", out / "synthme"
    t0 = time.perf_counter()
    if not (model / "config.json").exists():
        print(f"== building a tiny Qwen2.5-VL (random weights, local tokenizer) in {model}")
        cli_main(["models", "tiny", "--family", "qwen2_5_vl", "--out", str(model)])
    if not (data / "train.jsonl").exists():
        print(f"== making SynthME clips in {data}")
        cli_main(
            [
                "data",
                "synth",
                "--out",
                str(data),
                "--subjects",
                "2",
                "--clips-per-subject",
                "2",
                "--size",
                "112",
            ]
        )
    clip = sorted((data / "frames").iterdir())[0]
    question = "What is the coarse expression class?"
    print(f"== asking about {clip}: {question}")
    rc = cli_main(["ask", str(clip), question, "--model", str(model), "--frames", "8", "--json"])
    print(
        f"== done in {time.perf_counter() - t0:.1f} s (a random-weight model answers with noise: "
        "training it is `mevqa train`)"
    )
    return rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mevqa.demo", description=__doc__)
    p.add_argument("--out", type=Path, default=Path(".cache/demo"), help="work folder (default: .cache/demo)")
    return run(p.parse_args(argv).out)


if __name__ == "__main__":
    sys.exit(main())
