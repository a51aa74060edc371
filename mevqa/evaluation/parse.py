"""Labels read from free text, by the rules in shared/megc/README.md ("Scoring rules").

Lowercase and strip punctuation; in a sentence take `coarse expression class is X` /
`fine-grained expression class is X`, else the first whole-word label; common synonyms map
(happy -> happiness, ...). Anything else stays as written and so counts as wrong.
"""

from __future__ import annotations

import re

from mevqa.prompts import AU_NAMES, COARSE_LABELS, FINE_LABELS, LABEL_SYNONYMS

_KEYS = {"coarse": "coarse expression class is", "fine": "fine-grained expression class is"}
_LABELS = {
    "coarse": COARSE_LABELS,
    "fine": FINE_LABELS,
    "au_presence": ("yes", "no"),
    "au_side": ("left", "right"),
}
_AU_RE = re.compile(
    r"\b(" + "|".join(sorted(map(re.escape, AU_NAMES.values()), key=len, reverse=True)) + r")\b"
)


def normalise(text: str) -> str:
    """Lowercase, punctuation to spaces (hyphens kept: "fine-grained"), single spaces."""
    return " ".join(re.sub(r"[^a-z0-9\-\s]", " ", str(text).lower()).split())


def parse_label(text: str, qtype: str) -> str:
    """The label a free-text answer gives for a coarse/fine/au_presence/au_side question."""
    t = normalise(text)
    key = _KEYS.get(qtype)
    if key and (m := re.search(re.escape(key) + r" ([a-z\-]+)", t)):
        return LABEL_SYNONYMS.get(m.group(1), m.group(1))
    labels = _LABELS[qtype]
    for word in t.split():
        word = LABEL_SYNONYMS.get(word, word)
        if word in labels:
            return word
    return t


def parse_aus(text: str) -> set[str]:
    """The AU names (as the files spell them) that appear in the text."""
    return set(_AU_RE.findall(normalise(text)))
