"""Shared-prefix and cross-clip batching for the transformers backend.

The questions about one clip show the model the same images after the same turns; only the question
differs. So each clip's *prefix* (system turn, every image, the text up to the question) is prefilled
once, and the questions of every clip in the batch are then decoded together in one `generate` call, each
row continuing from its own clip's cached prefix. The vision tower and the long multimodal prefill run
once per clip instead of once per question, and the decode steps are shared by all clips.

The pieces:
- `plan(requests, samples)`: which rows share a prefix. Pure: requests with the same
  `VQARequest.prefix_key` do (a request without one shares only with its own samples).
- `cut(texts, boundaries)`: where the rendered prompts of one clip's questions split into the shared
  prefix and each question's suffix. Pure.
- `layout(prefixes, suffixes, pad_id)`: the padded ids and attention mask of the batch. Pure.
- `generate_shared(model, jobs, ...)`: the model calls. Every transformers internal they rely on is in
  `_hf_compat.py`.

The padded batch: a question about clip A (prefix P P P, question q q) and one about clip B (prefix
Q Q Q Q, question q q q); p = 4 is the longest prefix, s = 3 the longest question:

    ids:   A [pad P P P | pad q q]    B [Q Q Q Q | q q q]
    mask:  A [ 0  1 1 1 |  0  1 1]    B [1 1 1 1 | 1 1 1]

Each prefix is right-aligned in the first p columns and each suffix in the last s, so a row can have a
masked hole between its prefix and its question. Positions come from the mask (its running sum), so
neither the padding nor the hole shifts them: A's question sits where it would sit asked alone. Each
clip's KV cache is left-padded to p the same way (zeros, masked) and repeated once per question.

Why `generate` is given all p + s ids with a cache of length p: generate feeds the model only the ids the
cache has not seen (it slices `input_ids` by the cache length), so the prefix columns are never computed
again. They are passed so that the mask and the returned sequences line up with the cache, and so that
logits processors that read the whole sequence (a checkpoint's repetition penalty) see the prompt, as in
the plain path.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mevqa.backends import _hf_compat as hfc
from mevqa.backends.base import VQARequest


# ---------------------------------------------------------------- planning (pure)
@dataclass(frozen=True)
class Group:
    """Rows of the sample-expanded batch answered by one model call: request i's samples are rows
    i * samples ... i * samples + samples - 1. `shared`: the rows share one prefix."""

    rows: tuple[int, ...]
    shared: bool


def plan(requests: Sequence[VQARequest], samples: int = 1, share: bool = True) -> list[Group]:
    """The model calls for a batch: one shared group per prefix key with more than one row (in order of
    first appearance), then one plain group with every other row.

    Requests share a prefix when their `prefix_key`s are equal; a request without a key shares nothing
    with the other requests, only with its own samples. `share=False` puts every row in the plain group.
    """
    keys: dict[Hashable, list[int]] = {}
    for i, r in enumerate(requests):
        key = ("key", r.prefix_key) if r.prefix_key is not None else ("request", i)
        for j in range(samples):
            row = i * samples + j
            keys.setdefault(key if share else ("row", row), []).append(row)
    groups = [Group(tuple(rows), True) for rows in keys.values() if len(rows) > 1]
    plain = tuple(sorted(rows[0] for rows in keys.values() if len(rows) == 1))
    return groups + ([Group(plain, False)] if plain else [])


def cut(texts: Sequence[str], boundaries: Sequence[str]) -> int:
    """Where one clip's rendered prompts split into a shared prefix and per-question suffixes: right after
    the last special token (one of `boundaries`) inside their common prefix, so the prefix and each suffix
    tokenize as the joined text does (a cut inside a word could change its tokens). 0: nothing to share."""
    common = os.path.commonprefix(list(texts))
    return max((common.rfind(t) + len(t) for t in boundaries if t in common), default=0)


def layout(
    prefixes: Sequence[Sequence[int]], suffixes: Sequence[Sequence[Sequence[int]]], pad_id: int
) -> tuple[list[list[int]], list[list[int]]]:
    """The ids and attention mask of a shared batch (the module docstring draws them): one row per suffix,
    clip by clip; `prefixes[c]` is clip c's prefix ids, `suffixes[c]` its questions' suffix ids."""
    p = max(map(len, prefixes))
    s = max(len(x) for clip in suffixes for x in clip)
    ids, mask = [], []
    for prefix, clip in zip(prefixes, suffixes, strict=True):
        for suffix in clip:
            holes = p - len(prefix), s - len(suffix)
            ids.append([pad_id] * holes[0] + [*prefix] + [pad_id] * holes[1] + [*suffix])
            mask.append([0] * holes[0] + [1] * len(prefix) + [0] * holes[1] + [1] * len(suffix))
    return ids, mask


# ---------------------------------------------------------------- the model calls
@dataclass
class Job:
    """One model call: `rows` are positions in the (sample-expanded) batch it answers.

    `inputs` are processor outputs, on the CPU: of every row (a plain job), or of the shared prefix alone
    (a shared job, with `suffixes`: the token ids of each row's prompt after the prefix)."""

    rows: list[int]
    inputs: dict[str, Any]
    suffixes: list[list[int]] = field(default_factory=list)

    @property
    def shared(self) -> bool:
        return bool(self.suffixes)

    @property
    def tokens(self) -> int:
        """The tokens the model computes for the prompts: the prefix once plus every suffix, or every
        padded row of a plain job."""
        return int(self.inputs["input_ids"].numel()) + sum(map(len, self.suffixes))


def _to(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


# The most prefix tokens one prefill forward takes. Clips are prefilled together up to it: one forward for
# many clips instead of one each (150 questions on 24 clips, tiny model, one thread: answering 0.80 ->
# 0.69 s, medians of 5 alternating, answers identical), and no further, so the activations of one forward
# stay those of a few long prompts (a 7B model's MLP holds ~110 KB a token a layer in bf16).
PREFILL_TOKENS = 4096


def prefill_groups(
    lengths: Sequence[int], shapes: Sequence[Hashable] | None = None, budget: int = PREFILL_TOKENS
) -> list[list[int]]:
    """Which prefixes (by index; `lengths` in tokens) are prefilled in one forward: runs of consecutive ones
    of equal length and equal `shapes` (what their tensors must share to be joined), at most `budget`
    tokens together (one alone when longer). Equal lengths need no padding, so each row of the forward is
    computed as it would be alone. Pure."""
    shapes = shapes if shapes is not None else [None] * len(lengths)
    groups: list[list[int]] = []
    for i, n in enumerate(lengths):
        last = groups[-1] if groups else []
        if last and (lengths[last[0]], shapes[last[0]]) == (n, shapes[i]) and (len(last) + 1) * n <= budget:
            last.append(i)
        else:
            groups.append([i])
    return groups


def _shapes(inputs: dict[str, Any]) -> tuple:
    """What two prefixes' processor outputs must share to be joined on their first dimension (an image
    tensor's sides: Idefics3's tiles are (batch, images, 3, H, W))."""
    return tuple(
        (k, tuple(v.shape[1:])) for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.dim() > 2
    )


@torch.inference_mode()
def generate_shared(
    model: torch.nn.Module, jobs: list[Job], pad_id: int, rope_path: str | None, **generate_kwargs: Any
) -> torch.Tensor:
    """Several clips' questions in one decode, each clip's prefix prefilled once: the new tokens, one row
    per question, job by job.

    `rope_path`: where the model keeps multimodal RoPE offsets (`Family.rope_deltas`), which each row gets
    from its own clip; None for plain RoPE. Prefixes of equal length are prefilled together
    (`prefill_groups`); none is padded, so their masks are ones.
    """
    device = next(model.parameters()).device
    holder = hfc.rope_holder(model, rope_path)
    caches, deltas, prefixes = [], [], []
    lengths = [j.inputs["input_ids"].shape[1] for j in jobs]
    for group in prefill_groups(lengths, [_shapes(j.inputs) for j in jobs]):
        inputs = _to(hfc.concat([jobs[i].inputs for i in group]), device)
        kv, offsets = hfc.kv_layers(hfc.prefill(model, inputs)), hfc.rope_deltas(holder)
        for b in range(len(group)):
            caches.append([(k[b : b + 1], v[b : b + 1]) for k, v in kv])
            deltas.append(None if offsets is None else offsets[b : b + 1])
            prefixes.append(inputs["input_ids"][b].tolist())
    ids, mask = layout(prefixes, [j.suffixes for j in jobs], pad_id)
    repeats = [len(j.suffixes) for j in jobs]
    cache = hfc.stack_caches(caches, repeats, max(map(len, prefixes)))
    hfc.set_rope_deltas(holder, deltas, repeats)
    ids_t = torch.tensor(ids, dtype=torch.long, device=device)
    out = hfc.generate_after_prefix(
        model, ids_t, torch.tensor(mask, dtype=torch.long, device=device), cache, **generate_kwargs
    )
    return out[:, ids_t.shape[1] :]
