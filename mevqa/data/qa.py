"""One clip's labels -> the MEGC question/answer rows (all seven templates).

Converters (real annotation sheets) and SynthME both go through `build_rows`, so a synthetic clip is
asked exactly what a real one is. With `v2=True` the combined question becomes a MEGC 2026 ME-VQA-v2
analysis question whose answer is mevqa's own short paragraph (`prompts.analysis_answer`): the official
v2 training answers' wording is not public.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from mevqa.errors import InputError
from mevqa.facs import AU_NAMES, FINE_TO_COARSE
from mevqa.prompts import (
    Q_ANALYSIS,
    Q_AU_MANY,
    Q_AU_ONE,
    Q_COARSE,
    Q_COMBINED_MANY,
    Q_COMBINED_ONE,
    Q_FINE,
    Q_PRESENCE,
    Q_SIDE,
    analysis_answer,
    combined_answer,
)


@dataclass(frozen=True)
class AU:
    """A FACS action unit, optionally on one side of the face (L = subject's left)."""

    number: int
    side: str | None = None  # "L", "R" or None

    @property
    def name(self) -> str:
        return AU_NAMES[self.number]

    def code(self) -> str:
        return f"{self.side or ''}{self.number}"


def parse_au_codes(text: str) -> list[AU]:
    """`4+7`, `R12`, `L1+L2`, `AU4`, `AU 1+AU2`, `12/14` -> AUs in order, unknown codes refused."""
    aus: list[AU] = []
    spaced = re.sub(r"(?i)\bAU\s+", "AU", str(text).strip())  # "AU 4" -> "AU4"
    for tok in re.split(r"[+,/;&\s]+", spaced):
        if not tok:
            continue
        m = re.fullmatch(r"(?i)(?:AU)?\s*([LRB])?\s*(?:AU)?(\d+)([A-Za-z])?", tok)
        if not m:
            raise InputError(
                f"action units {text!r} — cannot read {tok!r} (expected codes like 4+7, R12, AU4)"
            )
        side, num = (m.group(1) or "").upper() or None, int(m.group(2))
        if num not in AU_NAMES:
            continue  # AUs the MEGC files never name (e.g. head/eye movements beyond the list) are left out
        au = AU(num, None if side == "B" else side)
        if au.number not in [a.number for a in aus]:
            aus.append(au)
    return aus


@dataclass(frozen=True)
class ClipLabel:
    """Everything the QA needs to know about one clip."""

    dataset: str
    subject: str
    filename: str
    image_id: str
    emotion: str
    aus: tuple[AU, ...] = field(default_factory=tuple)
    onset: int | None = None
    apex: int | None = None
    offset: int | None = None
    coarse_only: bool = False  # SMIC: `emotion` is already the coarse class and only that is asked

    @property
    def coarse(self) -> str:
        return self.emotion if self.coarse_only else FINE_TO_COARSE[self.emotion]


def _au_list(aus: tuple[AU, ...]) -> str:
    return ", ".join(a.name for a in aus)


def build_questions(label: ClipLabel, rng: random.Random, v2: bool = False) -> list[tuple[str, str]]:
    """(question, answer) pairs in the order the MEGC files use; `v2`: an analysis question (one of the
    three phrasings, drawn from `rng` after every other draw) in place of the combined one."""
    plural = len(label.aus) > 1
    if label.coarse_only:
        return [(Q_COARSE, label.coarse)]
    qa = [(Q_COARSE, label.coarse), (Q_FINE, label.emotion)]
    if not label.aus:
        return qa
    qa.append((Q_AU_MANY if plural else Q_AU_ONE, _au_list(label.aus)))
    sided = [a for a in label.aus if a.side]
    if sided:
        qa.append((Q_SIDE.format(name=sided[0].name), {"L": "left", "R": "right"}[sided[0].side]))
    present = {a.number for a in label.aus}
    qa.append((Q_PRESENCE.format(name=rng.choice(label.aus).name), "yes"))
    absent = [n for n in AU_NAMES if n not in present]
    qa.append((Q_PRESENCE.format(name=AU_NAMES[rng.choice(absent)]), "no"))
    names = [a.name for a in label.aus]
    if v2:
        qa.append((rng.choice(Q_ANALYSIS), analysis_answer(names, label.emotion, label.coarse)))
        return qa
    answer = combined_answer(names, label.emotion, label.coarse)
    qa.append((Q_COMBINED_MANY if plural else Q_COMBINED_ONE, answer))
    return qa


def build_rows(label: ClipLabel, seed: int = 0, v2: bool = False) -> list[dict]:
    """MEGC training rows for one clip; the 'no' AU (and with `v2` the analysis phrasing) is drawn with a
    per-clip seed, so the same clip and seed always give the same rows."""
    rng = random.Random(f"{seed}:{label.dataset}:{label.image_id}")
    rows = []
    for k, (q, a) in enumerate(build_questions(label, rng, v2), start=1):
        row = {
            "id": f"{label.dataset}_{label.image_id}_{k}",
            "dataset": label.dataset,
            "image_id": label.image_id,
            "subject": label.subject,
            "filename": label.filename,
            "question": q,
            "answer": a,
        }
        for key in ("onset", "apex", "offset"):
            if getattr(label, key) is not None:
                row[f"{key}_frame"] = getattr(label, key)
        rows.append(row)
    return rows
