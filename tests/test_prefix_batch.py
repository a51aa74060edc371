"""The shared-prefix engine's pure parts, on plain lists (no model): which rows share a prefix, where a
clip's prompts are cut, and the padded layout of a batch. (The model-level equalities, shared == plain and
several clips == each alone, are in test_backend.py.)"""

from __future__ import annotations

from itertools import accumulate

from mevqa.backends.base import VQARequest
from mevqa.backends.prefix_batch import Group, cut, layout, plan, prefill_groups
from mevqa.prompts import Message


def _req(i: int, key: object = None) -> VQARequest:
    return VQARequest(str(i), (Message.user(f"question {i}"),), prefix_key=key)


def test_requests_with_the_same_key_share_one_call():
    reqs = [_req(0, "a"), _req(1, "b"), _req(2, "a"), _req(3, "c"), _req(4, "b")]
    assert plan(reqs) == [Group((0, 2), True), Group((1, 4), True), Group((3,), False)]


def test_requests_without_a_key_share_nothing():
    """Equal messages are not enough: without a key, every request is its own row of the plain call."""
    reqs = [_req(0), _req(1), _req(2, "a")]
    assert plan(reqs) == [Group((0, 1, 2), False)]
    same = VQARequest("x", (Message.user("the same question"),))
    assert plan([same, same]) == [Group((0, 1), False)]


def test_the_samples_of_one_request_share_its_prefix():
    """Request i's samples are rows i*n ... i*n+n-1; a request without a key still shares with its own."""
    reqs = [_req(0, "a"), _req(1), _req(2, "a")]
    assert plan(reqs, samples=2) == [Group((0, 1, 4, 5), True), Group((2, 3), True)]


def test_share_off_puts_every_row_in_the_plain_call():
    reqs = [_req(0, "a"), _req(1, "a"), _req(2)]
    assert plan(reqs, samples=2, share=False) == [Group((0, 1, 2, 3, 4, 5), False)]
    assert plan([]) == []


def test_cut_falls_right_after_the_last_special_token_both_prompts_hold():
    boundaries = ["<|im_start|>", "<|vision_end|>", "<|im_end|>"]
    a = "<|im_start|>user\n<|vision_end|><|vision_end|>What is the coarse class?<|im_end|>"
    b = "<|im_start|>user\n<|vision_end|><|vision_end|>What is the action unit?<|im_end|>"
    at = cut([a, b], boundaries)
    assert a[:at] == b[:at] == "<|im_start|>user\n<|vision_end|><|vision_end|>"
    # the shared text "What is the " is not cut into: a word split across the cut could tokenize apart
    assert cut(["plain text a", "plain text b"], boundaries) == 0
    assert cut([a], boundaries) == len(a)  # one prompt: all of it (its suffix is empty)


def test_layout_matches_the_documented_diagram():
    """Clip A (prefix P P P, question q q) and clip B (prefix Q Q Q Q, question q q q), pad 0."""
    P, Q, q = 7, 8, 9
    ids, mask = layout([[P, P, P], [Q, Q, Q, Q]], [[[q, q]], [[q, q, q]]], pad_id=0)
    assert ids == [[0, P, P, P, 0, q, q], [Q, Q, Q, Q, q, q, q]]
    assert mask == [[0, 1, 1, 1, 0, 1, 1], [1, 1, 1, 1, 1, 1, 1]]


def test_every_row_sits_where_it_would_sit_alone():
    """Positions come from the mask's running sum: padding and the hole between prefix and question shift
    no token, so each question is at the positions it has asked alone (prefix + question, no padding)."""
    prefixes = [[1] * 5, [2] * 2, [3] * 9]
    suffixes = [[[4] * 3, [5] * 1], [[6] * 4], [[7] * 2, [8] * 6, [9] * 1]]
    ids, mask = layout(prefixes, suffixes, pad_id=0)
    rows = [(p, s) for p, clip in zip(prefixes, suffixes) for s in clip]
    assert len(ids) == len(mask) == len(rows) == 6
    width = max(map(len, prefixes)) + max(len(s) for _, s in rows)
    for row_ids, row_mask, (prefix, suffix) in zip(ids, mask, rows):
        assert len(row_ids) == len(row_mask) == width
        kept = [t for t, m in zip(row_ids, row_mask) if m]
        assert kept == prefix + suffix  # what the model attends to: the row's own prompt, in order
        positions = [c - 1 for c, m in zip(accumulate(row_mask), row_mask) if m]
        assert positions == list(range(len(prefix) + len(suffix)))
        assert row_ids[width - len(suffix) :] == suffix  # the question ends the row: decoding continues it


def test_prefill_groups_join_runs_of_one_length_within_the_budget():
    assert prefill_groups([5, 5, 5, 7, 5, 5], budget=100) == [[0, 1, 2], [3], [4, 5]]
    assert prefill_groups([5, 5, 5], ["a", "b", "b"]) == [[0], [1, 2]]  # tensors of other sides: apart
    assert prefill_groups([5, 5, 5, 5, 5], budget=10) == [[0, 1], [2, 3], [4]]
    assert prefill_groups([50, 50], budget=10) == [[0], [1]]  # longer than the budget: alone
    assert prefill_groups([]) == []
