"""Training examples: the same clip resolution, input modes and prompts as `mevqa eval` (one code path),
plus a collator that puts the loss on the answer tokens only."""

from __future__ import annotations

import functools
from typing import Any

import torch
from transformers import ProcessorMixin

from mevqa.data.megc import clip_key
from mevqa.evaluation.parse import parse_label
from mevqa.facs import COARSE_LABELS, FINE_TO_COARSE
from mevqa.inputs import ClipParts
from mevqa.prompts import Message, classify, render_question, to_hf, video_kwargs

IGNORE = -100  # label value the loss skips
# where a clip's gold coarse class is read, best first: its coarse question, else the class of its fine
# answer, else the class its combined / analysis answer names (a --question-types subset may lack the first)
_GOLD_FROM = {"coarse": 0, "fine": 1, "combined": 2, "analysis": 2}


def gold_coarse(rows: list[dict]) -> dict[str, str]:
    """Each clip's gold coarse class (by `clip_key`): the stage-1 answer hierarchical training is given."""
    best: dict[str, tuple[int, str]] = {}
    for r in rows:
        qtype, _ = classify(str(r["question"]))
        if qtype not in _GOLD_FROM:
            continue
        label = parse_label(str(r["answer"]), "fine" if qtype == "fine" else "coarse")
        label = FINE_TO_COARSE.get(label, "") if qtype == "fine" else label
        key = clip_key(r)
        if label in COARSE_LABELS and _GOLD_FROM[qtype] < best.get(key, (len(_GOLD_FROM), ""))[0]:
            best[key] = (_GOLD_FROM[qtype], label)
    return {k: label for k, (_, label) in best.items()}


class QADataset(torch.utils.data.Dataset):
    """Rows -> (user message, answer), through the same `ClipParts` as eval (a clip's questions share it)."""

    def __init__(self, rows: list[dict], parts: ClipParts, prompt: str = "plain"):
        self.rows, self.parts, self.prompt = rows, parts, prompt
        # hierarchical prompts are trained with teacher forcing: every question of a clip is given the
        # clip's gold coarse class where eval gives the model's stage-1 answer (the same text otherwise)
        self.coarse = gold_coarse(rows) if prompt == "hierarchical" else {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[Message, str]:
        row = self.rows[i]
        question = render_question(row["question"], self.prompt, self.coarse.get(clip_key(row)))
        return Message.user(*self.parts(row), question), str(row["answer"])


class AnswerOnlyCollator:
    """Chat-templated (question, answer) pairs, right-padded; labels are -100 except the answer tokens.

    The prompt rendered with `add_generation_prompt=True` is a string prefix of the full conversation,
    so the answer's tokens are the tokens of the remaining suffix (answer + end-of-turn), counted with
    the tokenizer alone and taken from the end of each sequence. `template_kwargs` are the family's
    chat-template variables (`Family.chat_template_kwargs`), the same the backends render prompts with.
    """

    def __init__(self, processor: ProcessorMixin, template_kwargs: dict[str, Any] | None = None):
        self.processor, self.template_kwargs = processor, template_kwargs or {}

    def __call__(self, batch: list[tuple[Message, str]]) -> dict[str, Any]:
        fulls, images, videos, n_answer = [], [], [], []
        render = functools.partial(self.processor.apply_chat_template, tokenize=False, **self.template_kwargs)
        for msg, answer in batch:
            chat, imgs, vids = to_hf([msg, Message.assistant(answer)])
            full = render(chat)
            prompt = render(chat[:1], add_generation_prompt=True)
            suffix = full[len(prompt) :] if full.startswith(prompt) else answer
            n_answer.append(len(self.processor.tokenizer(suffix, add_special_tokens=False)["input_ids"]))
            fulls.append(full)
            images.append(imgs)
            videos.extend(vids)
        kwargs: dict[str, Any] = {
            "text": fulls,
            "padding": True,
            "padding_side": "right",
            "return_tensors": "pt",
        }
        if any(images):
            kwargs["images"] = images
        kwargs.update(video_kwargs(videos))
        enc = dict(self.processor(**kwargs))
        labels = torch.full_like(enc["input_ids"], IGNORE)
        lengths = enc["attention_mask"].sum(dim=1).tolist()
        for i, (length, n) in enumerate(zip(lengths, n_answer)):
            labels[i, length - n : length] = enc["input_ids"][i, length - n : length]
        enc["labels"] = labels
        return enc
