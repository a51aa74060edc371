"""Training examples: the same clip resolution, input modes and prompts as `mevqa eval` (one code path),
plus a collator that puts the loss on the answer tokens only."""

from __future__ import annotations

from typing import Any

import torch
from transformers import ProcessorMixin

from mevqa.facs import FINE_TO_COARSE
from mevqa.inputs import ClipParts
from mevqa.prompts import Message, render_question, to_hf, video_kwargs

IGNORE = -100  # label value the loss skips


class QADataset(torch.utils.data.Dataset):
    """Rows -> (user message, answer), through the same `ClipParts` as eval (a clip's questions share it)."""

    def __init__(self, rows: list[dict], parts: ClipParts, prompt: str = "plain"):
        self.rows, self.parts, self.prompt = rows, parts, prompt

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[Message, str]:
        row = self.rows[i]
        # hierarchical prompts are trained with teacher forcing: the hint is the gold coarse class
        coarse = (
            FINE_TO_COARSE.get(str(row["answer"]).strip().lower()) if self.prompt == "hierarchical" else None
        )
        question = render_question(row["question"], self.prompt, coarse)
        return Message.user(*self.parts(row), question), str(row["answer"])


class AnswerOnlyCollator:
    """Chat-templated (question, answer) pairs, right-padded; labels are -100 except the answer tokens.

    The prompt rendered with `add_generation_prompt=True` is a string prefix of the full conversation,
    so the answer's tokens are the tokens of the remaining suffix (answer + end-of-turn), counted with
    the tokenizer alone and taken from the end of each sequence.
    """

    def __init__(self, processor: ProcessorMixin):
        self.processor = processor

    def __call__(self, batch: list[tuple[Message, str]]) -> dict[str, Any]:
        fulls, images, videos, n_answer = [], [], [], []
        for msg, answer in batch:
            chat, imgs, vids = to_hf([msg, Message.assistant(answer)])
            full = self.processor.apply_chat_template(chat, tokenize=False)
            prompt = self.processor.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True)
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
