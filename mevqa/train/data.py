"""Training examples: the same clip resolution, input modes and prompts as `mevqa eval` (one code path),
plus a collator that puts the loss on the answer tokens only."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from transformers import ProcessorMixin

from mevqa.config import FrameConfig
from mevqa.data.megc import clip_key, resolve_clip
from mevqa.inputs import load_clip, visual_parts
from mevqa.prompts import Message, Part, render_question, to_hf

IGNORE = -100  # label value the loss skips


class QADataset(torch.utils.data.Dataset):
    """Rows -> (user message, answer). Decoded clips are kept in a small LRU: a clip's questions share it."""

    def __init__(
        self,
        rows: list[dict],
        root: str | None,
        frames: FrameConfig,
        prompt: str = "plain",
        clip_pattern: str | None = None,
        cache_clips: int = 1024,
    ):
        self.rows, self.root, self.frames = rows, root or ".", frames
        self.prompt, self.clip_pattern, self.cache_clips = prompt, clip_pattern, cache_clips
        self._cache: OrderedDict[str, list[Part]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.rows)

    def parts(self, row: dict) -> list[Part]:
        key = clip_key(row)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        path = resolve_clip(row, self.root, self.clip_pattern)
        keys = (row.get("onset_frame"), row.get("apex_frame"), row.get("offset_frame"))
        parts = visual_parts(load_clip(path, self.frames, *keys), self.frames)
        self._cache[key] = parts
        if len(self._cache) > self.cache_clips:
            self._cache.popitem(last=False)
        return parts

    def __getitem__(self, i: int) -> tuple[Message, str]:
        row = self.rows[i]
        coarse = None
        if self.prompt == "hierarchical":  # teacher forcing: the hint is the gold coarse class
            from mevqa.prompts import FINE_TO_COARSE

            coarse = FINE_TO_COARSE.get(str(row["answer"]).strip().lower())
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
        if videos:
            from mevqa.backends.hf import video_kwargs

            kwargs.update(video_kwargs(videos))
        enc = dict(self.processor(**kwargs))
        labels = torch.full_like(enc["input_ids"], IGNORE)
        lengths = enc["attention_mask"].sum(dim=1).tolist()
        for i, (length, n) in enumerate(zip(lengths, n_answer)):
            labels[i, length - n : length] = enc["input_ids"][i, length - n : length]
        enc["labels"] = labels
        return enc
