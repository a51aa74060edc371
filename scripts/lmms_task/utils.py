"""lmms-eval task functions for scripts/vs-lmms-eval.sh: SynthME questions as mevqa answers them.

The task YAML (written by the script next to a copy of this file) loads the same JSONL that `mevqa eval`
answers. Each question is shown as mevqa shows it: the clip's frames picked by mevqa's `uniform` rule over
the whole clip (the test file has no onset/offset), decoded with PIL to RGB, in order, then the question
text unchanged (mevqa's `--prompt plain`). The clips' folder is $MEVQA_LMMS_ROOT (mevqa's `--root`),
the frame count $MEVQA_LMMS_FRAMES (default 8).

With $MEVQA_LMMS_DUMP set, the ids of the documents shown (and their image counts) are recorded in order,
so that run_lmms.py can tie each processor call of the model wrapper to its questions (the input check).
"""

from __future__ import annotations

import os
import re
import sys
import types
from pathlib import Path

import numpy as np
from PIL import Image

FRAME_EXTS = {".jpg", ".jpeg", ".png", ".bmp"}


def _frame_number(p: Path) -> tuple[int, str]:
    m = re.findall(r"\d+", p.stem)
    return (int(m[-1]) if m else -1, p.name)


def uniform(n_total: int, n: int) -> list[int]:
    """mevqa.video.uniform over the whole clip: n evenly spaced indices, both ends kept, no duplicates."""
    stop = n_total - 1
    if n_total <= 0:
        return []
    if n <= 1:
        return [stop // 2]
    return sorted({int(round(x)) for x in np.linspace(0, stop, n)})


def clip_dir(doc: dict) -> Path:
    root = Path(os.environ.get("MEVQA_LMMS_ROOT", "."))
    name = doc.get("filename") or doc["image_id"]
    for c in (
        root / "frames" / name,
        root / name,
        root / doc.get("dataset", "") / doc.get("subject", "") / name,
    ):
        if c.is_dir():
            return c
    raise FileNotFoundError(f"clip {name} not under {root}")


def doc_to_visual(doc: dict) -> list[Image.Image]:
    folder = clip_dir(doc)
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTS), key=_frame_number)
    idx = uniform(len(files), int(os.environ.get("MEVQA_LMMS_FRAMES", "8")))
    images = []
    for i in idx:
        with Image.open(files[i]) as im:
            images.append(Image.fromarray(np.asarray(im.convert("RGB"))))
    if os.environ.get("MEVQA_LMMS_DUMP"):
        shown = sys.modules.setdefault("_mevqa_shown", types.ModuleType("_mevqa_shown"))
        shown.ids = [*getattr(shown, "ids", []), (doc["id"], len(images))]
    return images


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return doc["question"]


def doc_to_target(doc: dict) -> str:
    return doc.get("answer", "")


def process_results(doc: dict, results: list) -> dict:
    pred = results[0]
    pred = getattr(pred, "text", pred)
    return {"exact_match": float(str(pred).strip().lower() == str(doc.get("answer", "")).strip().lower())}
