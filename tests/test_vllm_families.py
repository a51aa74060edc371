"""The other families in the real vLLM (CPU build): `mevqa serve` serves the tiny base + a LoRA adapter,
and eval through it answers as in-process. (Qwen2.5-VL has the full set in test_vllm.py.)

Qwen3.5 runs in bfloat16 on both sides: vLLM's CPU kernel for its Gated DeltaNet layers takes nothing
else, and its bf16 rounding differs from transformers' reference implementation, so a few greedy answers
part after their first tokens (measured: 16/20 and 17/20 whole answers equal, 19/20 and 20/20 first words).
"""

from __future__ import annotations

import pytest
from helpers import make_adapter
from test_vllm import ENGINE, VLLM_PY, VLLMServer, as_tokens, evaluate

from mevqa.models.loading import config_hash

pytestmark = pytest.mark.skipif(
    VLLM_PY is None, reason="no vLLM environment: build it with `make vllm` (scripts/vllm-env.sh)"
)
# family -> (dtype, least share of whole answers equal to in-process)
SERVED = {"idefics3": ("float32", 1.0), "qwen3_vl": ("float32", 1.0), "qwen3_5": ("bfloat16", 0.7)}


@pytest.mark.parametrize("family", sorted(SERVED))
def test_vllm_serves_the_family_base_and_adapter_as_in_process(tiny_of, synthme, tmp_path, family):
    dtype, share = SERVED[family]
    base = tiny_of(family)
    rec = {"base_model": str(base), "base_config_hash": config_hash(base)}
    adapter = make_adapter(base, tmp_path / "rand-lora", 8, rec)
    assert ENGINE[0] == "--dtype"
    (tmp_path / "vllm").mkdir()
    server = VLLMServer(base, [f"rand={adapter}"], tmp_path / "vllm", ["--dtype", dtype, *ENGINE[2:]]).start()
    try:
        for name, local_args, remote_args in (
            ("base", [], []),
            ("rand", ["--adapter", str(adapter)], ["--adapter", "rand"]),
        ):
            d = tmp_path / name
            args = ["--limit", "10", *remote_args]  # 10 questions: the server's start-up is the cost
            local, _ = evaluate(synthme, base, d / "local", "--limit", "10", "--dtype", dtype, *local_args)
            remote, _ = evaluate(
                synthme, base, d / "remote", "--backend", "openai", "--base-url", server.url, *args
            )
            same = [k for k in local if as_tokens(local[k]) == as_tokens(remote[k])]
            assert len(same) >= share * len(local), (name, {k: (local[k], remote[k]) for k in local})
    finally:
        server.stop()
