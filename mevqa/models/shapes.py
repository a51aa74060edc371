"""Does an adapter fit a base? Told from files alone: the adapter's safetensors header (a JSON table of
names and shapes in front of the tensors) against the base's config.json, without torch or the weights.

`mevqa serve` hands adapters to vLLM, which loads them long after start-up (or fails deep inside a
worker); a plain PEFT adapter has no mevqa.yaml recording its base, so its shapes are the only witness.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

from mevqa.errors import InputError, ModelError

KV_FLOOR_BYTES = 64 * 2**20  # room for a few blocks, and for a hybrid model's per-sequence state
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit; a larger length is a corrupt or hostile file
# `...layers.3.self_attn.q_proj.lora_A.weight` -> (module, A/B/embedding_A/embedding_B); the layer apart
LORA_RE = re.compile(r"(\w+)\.lora_(A|B|embedding_A|embedding_B)(?:\.\w+)?\.weight$")
LAYER_RE = re.compile(r"\.layers\.(\d+)\.")
VISION_RE = re.compile(r"(^|\.)(visual|vision_tower|vision_model|vision|merger|multi_modal_projector)\.")


def _unreadable(path: Path, why: str) -> InputError:
    return InputError(f"{path} — not a readable safetensors file ({why[:100]})")


def header_bytes(path: str | Path) -> bytes:
    """The JSON header of a safetensors file as stored (what a weights fingerprint hashes); a length that
    no header has (a corrupt or hostile file) is one error."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(8)
            (n,) = struct.unpack("<Q", raw) if len(raw) == 8 else (-1,)
            if not 0 < n <= MAX_HEADER_BYTES:
                raise ValueError(f"header length {n}")
            return f.read(n)
    except (OSError, ValueError) as e:
        raise _unreadable(path, str(e)) from None


def _header(path: Path) -> tuple[int, dict[str, dict]]:
    """(header length, tensor name -> {"dtype", "shape", "data_offsets"}); corrupt: one error."""
    raw = header_bytes(path)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise _unreadable(path, str(e)) from None
    if not isinstance(header, dict):
        raise _unreadable(path, "header is not a table")
    return len(raw), {k: v for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}


def safetensors_header(path: str | Path) -> dict[str, dict]:
    """Tensor name -> {"dtype", "shape", "data_offsets"}, from the header alone, of a complete file: one
    cut short (a copy or a save that was killed) is one error here, not a traceback from the loader."""
    path = Path(path)
    n, header = _header(path)
    try:
        end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    except (KeyError, IndexError, TypeError, ValueError):
        raise _unreadable(path, "bad data_offsets") from None
    if (size := path.stat().st_size) < 8 + n + end:
        raise InputError(
            f"{path} — incomplete: {size} bytes of the {8 + n + end} its header describes (cut short by a "
            "killed copy or save?)"
        )
    return header


def check_safetensors(folder: str | Path) -> None:
    """Every safetensors file in `folder` complete (see `safetensors_header`)."""
    for f in sorted(Path(folder).glob("*.safetensors")):
        safetensors_header(f)


def text_config(config: dict) -> dict:
    """The language model's settings: `text_config` for VLMs (Qwen-VL, Idefics3), the top level otherwise."""
    inner = config.get("text_config")
    return {**config, **inner} if isinstance(inner, dict) else config


Dim = tuple[int | None, str]  # a size and the config setting it comes from


def module_dims(cfg: dict) -> dict[str, tuple[Dim, Dim]]:
    """(in, out) features of the language model's linear layers that a config determines; None where a
    family varies (Qwen3.5's gated q_proj doubles its output; MoE experts have their own width)."""
    h, heads = cfg.get("hidden_size"), cfg.get("num_attention_heads")
    head = cfg.get("head_dim") or (h // heads if h and heads else None)
    kv = cfg.get("num_key_value_heads") or heads
    hid: Dim = (h, "hidden_size")
    vocab: Dim = (cfg.get("vocab_size"), "vocab_size")
    moe = any("expert" in k for k in cfg)
    mlp: Dim = (None if moe else cfg.get("intermediate_size"), "intermediate_size")
    kv_out: Dim = (kv * head if kv and head else None, "num_key_value_heads x head_dim")
    unknown: Dim = (None, "")
    return {
        "q_proj": (hid, unknown),
        "k_proj": (hid, kv_out),
        "v_proj": (hid, kv_out),
        "o_proj": (unknown, hid),
        "gate_proj": (hid, mlp),
        "up_proj": (hid, mlp),
        "down_proj": (mlp, hid),
        "lm_head": (hid, vocab),
        "embed_tokens": (vocab, hid),
    }


def _mismatch(name: str, shape: list[int], cfg: dict, dims: dict) -> str | None:
    """What in one adapter tensor disagrees with the base, or None."""
    m = LORA_RE.search(name)
    if not m or VISION_RE.search(name) or len(shape) != 2:
        return None  # a vision tower's own sizes are not in the text config; unknown modules are skipped
    module, kind = m.groups()
    layers, layer = cfg.get("num_hidden_layers"), LAYER_RE.search(name)
    if layer and layers and int(layer.group(1)) >= layers:
        return f"{name} is in layer {layer.group(1)}, the base has num_hidden_layers {layers}"
    if module not in dims:
        return None
    # lora_A: [r, in]; lora_B: [out, r]; embeddings: A [r, vocab], B [hidden, r]
    a_side = kind in ("A", "embedding_A")
    got, (want, setting) = (shape[1], dims[module][0]) if a_side else (shape[0], dims[module][1])
    if want and got != want:
        side = "input" if a_side else "output"
        return f"{name} has {side} size {got}, the base's {setting} is {want}"
    return None


def check_adapter_shapes(adapter: str | Path, base_config: dict, name: str, model: str) -> None:
    """Refuse an adapter whose LoRA matrices do not fit the base's language model (another hidden size,
    vocabulary, head layout or depth), naming the first tensor that disagrees."""
    weights = Path(adapter) / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelError(f"adapter {name} — {adapter} has no adapter_model.safetensors (vLLM loads that)")
    cfg = text_config(base_config)
    dims = module_dims(cfg)
    found = [
        why
        for key, info in safetensors_header(weights).items()
        if isinstance(shape := info.get("shape"), list) and (why := _mismatch(key, shape, cfg, dims))
    ]
    if found:  # the hidden size first: the plainest sign of another base
        why = next((w for w in found if "hidden_size" in w), found[0])
        raise ModelError(f"adapter {name} — does not fit --model {model}: {why}")


def base_config(model: str) -> dict | None:
    """The base's config.json: from its folder, or the Hub cache for an id; None when neither has it."""
    path = Path(model) / "config.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, "config.json")
        except (ImportError, ValueError):
            return None
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        raise InputError(f"{path} — unreadable JSON") from None
    return data if isinstance(data, dict) else None


def kv_bytes_per_token(config: dict, dtype: str) -> int:
    """Keys and values of every attention layer for one token (a hybrid model's linear-attention layers
    keep a per-sequence state instead, which the floor covers)."""
    t = text_config(config)
    heads = t.get("num_attention_heads") or 1
    head = t.get("head_dim") or (t.get("hidden_size") or 0) // heads
    kv = t.get("num_key_value_heads") or heads
    types = t.get("layer_types")
    layers = sum(x == "full_attention" for x in types) if types else t.get("num_hidden_layers") or 1
    name = dtype if dtype != "auto" else str(t.get("dtype") or t.get("torch_dtype") or "float32")
    return 2 * layers * kv * head * DTYPE_BYTES.get(name, 4)


def kv_cache_need(config: dict, max_model_len: int | None, seqs: int, dtype: str) -> tuple[int, str]:
    """Bytes of KV cache for `seqs` sequences of the full context (vLLM's CPU backend sizes its cache only
    when told), and how that was reckoned."""
    length = max_model_len or text_config(config).get("max_position_embeddings") or 4096
    token = kv_bytes_per_token(config, dtype)
    need = max(length * seqs * token, KV_FLOOR_BYTES)
    return need, f"max_model_len {length} x {seqs} sequences x {token} B a token, floor 64 MiB"
