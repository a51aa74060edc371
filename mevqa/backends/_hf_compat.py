"""The transformers internals that the shared-prefix path (`prefix_batch.py`) relies on, all in this file.

mevqa pins `transformers>=5,<6`, and these are not promised to stay put within a major version. When an
upgrade breaks the shared-prefix equality tests (`tests/test_backend.py`: shared == plain, several clips ==
each alone), this is the one file to read and fix:

1. the name of generate's cache argument, which is also the model output's cache attribute: `cache`
   since 5.24 (`past_key_values` before; the old name goes in 6.0);
2. building a `DynamicCache` from per-layer (keys, values) pairs (`ddp_cache_data=`), and reading
   `cache.layers[i].keys / .values`, each shaped (batch, kv heads, length, head dim);
3. Qwen2-VL-style models (multimodal RoPE) keep the offsets of their position ids in a module attribute,
   `rope_deltas` (shape (batch, 1)): a forward from position 0 sets it, later steps read it;
4. `generate`, given a cache of length p, feeds the model only the ids the cache has not seen
   (`input_ids[:, p:]`, sliced by its cache position), so it may be handed the prefix + suffix ids.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers
from transformers import DynamicCache

# (1) transformers 5.24 renamed generate's `past_key_values` to `cache` (the old name goes in 6.0)
CACHE_KW = (
    "cache" if "cache" in getattr(transformers.generation.utils, "ALL_CACHE_NAMES", ()) else "past_key_values"
)


def concat(inputs: list[dict[str, Any]]) -> dict[str, Any]:
    """Processor outputs of several prompts as one batch: every tensor joined on its first dimension, as the
    processor joins them (the prompts' rows; the images' patches and grids, in order); a list (a video's
    seconds per grid) joined as a list."""
    if len(inputs) == 1:
        return inputs[0]
    return {
        k: torch.cat([x[k] for x in inputs]) if torch.is_tensor(v) else [e for x in inputs for e in x[k]]
        for k, v in inputs[0].items()
    }


def prefill(model: torch.nn.Module, inputs: dict[str, Any]) -> Any:
    """One forward over a prefix (images included): its KV cache."""
    return getattr(model(**inputs, use_cache=True), CACHE_KW)


def kv_layers(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(2) A cache's (keys, values) per layer, each shaped (batch, kv heads, length, head dim)."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def stack_caches(
    caches: list[list[tuple[torch.Tensor, torch.Tensor]]], repeats: list[int], length: int
) -> DynamicCache:
    """(2) Per-clip KV caches (`kv_layers`, batch 1) as one: each left-padded with zeros (masked) to
    `length` and repeated once per question of its clip."""

    def pad(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, 0, length - t.shape[-2], 0))

    layers = []
    for per_clip in zip(*caches):
        keys = torch.cat([pad(k).repeat_interleave(n, 0) for (k, _), n in zip(per_clip, repeats)])
        values = torch.cat([pad(v).repeat_interleave(n, 0) for (_, v), n in zip(per_clip, repeats)])
        layers.append((keys, values))
    return DynamicCache(ddp_cache_data=layers)


def rope_holder(model: torch.nn.Module, path: str | None) -> torch.nn.Module | None:
    """(3) The submodule keeping `rope_deltas` (`Family.rope_deltas`, a path from the
    ...ForConditionalGeneration model); None for a model with plain 1-D RoPE."""
    if path is None:
        return None
    # under a PEFT wrapper the family's path starts at the wrapped model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_submodule(path)


def rope_deltas(holder: torch.nn.Module | None) -> torch.Tensor | None:
    """(3) The offsets the last forward from position 0 left behind."""
    return None if holder is None else holder.rope_deltas


def set_rope_deltas(holder: torch.nn.Module | None, per_clip: list[Any], repeats: list[int]) -> None:
    """(3) One row of offsets per question: its clip's, so each row continues its own prefix."""
    if holder is not None and per_clip and per_clip[0] is not None:
        holder.rope_deltas = torch.cat([d.repeat(k, 1) for d, k in zip(per_clip, repeats)])


def generate_after_prefix(
    model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, cache: DynamicCache, **kwargs: Any
) -> torch.Tensor:
    """(4) `generate` over prefix + suffix ids whose prefix is already in `cache`: only the suffix
    columns are computed. Returns the full sequences (the new tokens after `ids.shape[1]`)."""
    return model.generate(input_ids=ids, attention_mask=mask, **{CACHE_KW: cache}, **kwargs)
