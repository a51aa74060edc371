"""Labels read from free text, by the rules in shared/megc/README.md ("Scoring rules").

Lowercase and strip punctuation; in a sentence take `coarse expression class is X` /
`fine-grained expression class is X`, else the first whole-word label; common synonyms map
(happy -> happiness, ...). Anything else stays as written and so counts as wrong.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

from mevqa.backends.base import Answer, Backend, VQARequest
from mevqa.config import GenConfig
from mevqa.facs import AU_NAMES, LABEL_SETS, LABEL_SYNONYMS, normalise
from mevqa.prompts import (
    Q_COARSE,
    Message,
    Part,
    classify,
    combined_answer,
    hierarchical_question,
    render_question,
)

_KEYS = {"coarse": "coarse expression class is", "fine": "fine-grained expression class is"}
_AU_RE = re.compile(
    r"\b(" + "|".join(sorted(map(re.escape, AU_NAMES.values()), key=len, reverse=True)) + r")\b"
)


def parse_label(text: str, qtype: str) -> str:
    """The label a free-text answer gives for a coarse/fine/au_presence/au_side question."""
    t = normalise(text)
    key = _KEYS.get(qtype)
    if key and (m := re.search(re.escape(key) + r" ([a-z\-]+)", t)):
        return LABEL_SYNONYMS.get(m.group(1), m.group(1))
    labels = LABEL_SETS[qtype]
    for word in t.split():
        word = LABEL_SYNONYMS.get(word, word)
        if word in labels:
            return word
    return t


def parse_aus(text: str) -> set[str]:
    """The AU names (as the files spell them) that appear in the text."""
    return set(_AU_RE.findall(normalise(text)))


def _majority(labels: list[str]) -> str:
    """The most frequent label; a tie goes to the one that came first."""
    counts = Counter(labels)
    best = max(counts.values())
    return next(lab for lab in labels if counts[lab] == best)


def _majority_aus(samples: list[str]) -> list[str]:
    """AUs named by more than half of the samples, in the order they first appear."""
    sets = [parse_aus(s) for s in samples]
    order = [au for s in samples for au in _AU_RE.findall(normalise(s))]
    keep = {au for au in order if sum(au in s for s in sets) * 2 > len(sets)}
    return list(dict.fromkeys(au for au in order if au in keep))


def vote(question: str, samples: list[str]) -> str:
    """Self-consistency: one answer from several sampled ones, read with the metrics' own parser.

    Classification questions take the majority label (the first sample giving it is the answer text);
    AU questions keep each AU named by a majority; the combined template is rebuilt from the per-part
    votes; anything else takes the most common answer. Ties go to the earliest sample.
    """
    if len(samples) == 1:
        return samples[0]
    qtype, _ = classify(question)
    if qtype in LABEL_SETS:
        labels = [parse_label(s, qtype) for s in samples]
        return samples[labels.index(_majority(labels))]
    if qtype == "au_list":
        return ", ".join(_majority_aus(samples))
    if qtype == "combined":
        fine = _majority([parse_label(s, "fine") for s in samples])
        coarse = _majority([parse_label(s, "coarse") for s in samples])
        return combined_answer(_majority_aus(samples), fine, coarse)
    texts = [normalise(s) for s in samples]
    return samples[texts.index(_majority(texts))]


def voted(question: str, ans: Answer) -> Answer:
    """The answer whose text is the vote of its samples (unchanged when there was one sample)."""
    return dataclasses.replace(ans, text=vote(question, list(ans.samples))) if ans.samples else ans


def prompted(
    backend: Backend, parts: list[Part], question: str, strategy: str, gen: GenConfig, seed: int | None = None
) -> str:
    """`question` as the prompt strategy sends it; `hierarchical` first asks the clip's coarse class (the
    same stage 1 as `mevqa eval`), so ask, chat and eval phrase a question alike."""
    return render_question(
        question, strategy, ask_coarse(backend, parts, gen, seed) if strategy == "hierarchical" else None
    )


def ask_coarse(backend: Backend, parts: list[Part], gen: GenConfig, seed: int | None = None) -> str | None:
    """Hierarchical stage 1: the clip's coarse class, asked first so later answers can follow it."""
    text = hierarchical_question(Q_COARSE)
    (ans,) = backend.generate([VQARequest("coarse", (Message.user(*parts, text),), seed=seed)], gen)
    return parse_label(ans.text, "coarse") if ans.ok else None
