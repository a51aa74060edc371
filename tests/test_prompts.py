"""Prompt snapshots: the exact chat-template text the model sees for every MEGC template x prompt strategy.

A prompt change is never silent: it shows up here as a diff to review, and the resume fingerprint
changes with it. After a deliberate change: `pytest tests/test_prompts.py --update-snapshots`; that flag is
also the only way the snapshot is written, so a missing snapshot fails instead of being taken as the truth.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from mevqa.config import PROMPT_STRATEGIES
from mevqa.facs import COARSE_LABELS
from mevqa.prompts import Q_ANALYSIS, TEMPLATE_EXAMPLES, Message, prompt_fingerprint, render_question, to_hf

SNAPSHOT = Path(__file__).parent / "snapshots" / "prompts.json"
QUESTIONS = (*TEMPLATE_EXAMPLES, *Q_ANALYSIS)  # the 2025 templates and the three v2 analysis phrasings


def rendered(processor) -> dict[str, str]:
    image = Image.new("RGB", (56, 56))
    out = {}
    for q in QUESTIONS:
        for strategy in PROMPT_STRATEGIES:
            for coarse in (None, *COARSE_LABELS) if strategy == "hierarchical" else (None,):
                chat, _, _ = to_hf([Message.user(image, image, render_question(q, strategy, coarse))])
                text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
                out[f"{strategy}/{coarse or '-'} | {q}"] = text
    return out


def test_prompt_snapshots(tiny_qwen, request):
    from mevqa.models.loading import load_processor  # torch and transformers: not for the fast tier's imports

    now = rendered(load_processor(str(tiny_qwen)))
    now["fingerprints"] = {s: prompt_fingerprint(s) for s in PROMPT_STRATEGIES}  # type: ignore[assignment]
    if request.config.getoption("--update-snapshots"):
        SNAPSHOT.write_text(json.dumps(now, indent=1, ensure_ascii=False) + "\n")
    assert SNAPSHOT.is_file(), f"{SNAPSHOT} is missing: write it with --update-snapshots, then review it"
    before = json.loads(SNAPSHOT.read_text())
    changed = sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k))
    assert not changed, f"prompts changed (review, then --update-snapshots): {changed[:5]}"
    assert len(now) == len(QUESTIONS) * (len(PROMPT_STRATEGIES) + len(COARSE_LABELS)) + 1
