"""Face-action knowledge in one place: labels, AU names, what each AU looks like, where it moves, and
which AUs signal which emotion.

Prompts, the parser, validation, SynthME, the optical-flow regions and the agent all read these tables,
so a label or an AU added here reaches every one of them.
"""

from __future__ import annotations

import re

COARSE_LABELS = ("positive", "negative", "surprise")
FINE_LABELS = ("happiness", "surprise", "disgust", "repression", "anger", "contempt", "fear", "sadness")
FINE_TO_COARSE = {
    "happiness": "positive",
    "surprise": "surprise",
    "disgust": "negative",
    "repression": "negative",
    "anger": "negative",
    "contempt": "negative",
    "fear": "negative",
    "sadness": "negative",
}
# free-text words -> the label the files use (scoring and sheet conversion read labels the same way)
LABEL_SYNONYMS = {
    "happy": "happiness",
    "angry": "anger",
    "sad": "sadness",
    "disgusted": "disgust",
    "surprised": "surprise",
    "afraid": "fear",
    "fearful": "fear",
    "repressed": "repression",
}


def normalise(text: str) -> str:
    """Lowercase, punctuation to spaces (hyphens kept: "fine-grained"), single spaces: how answers and
    annotation sheets are compared."""
    return " ".join(re.sub(r"[^a-z0-9\-\s]", " ", str(text).lower()).split())


def normalise_label(text: str) -> str:
    """An emotion label as the MEGC files spell it (`Happy` -> happiness)."""
    t = normalise(text)
    return LABEL_SYNONYMS.get(t, t)


# FACS number -> the name the MEGC files use (spelled as the files spell them).
AU_NAMES = {
    1: "inner brow raiser",
    2: "outer brow raiser",
    4: "brow lowerer",
    5: "upper lid raiser",
    6: "cheek raiser",
    7: "lid tightener",
    9: "nose wrinkler",
    10: "upper lip raiser",
    12: "lip corner puller",
    14: "dimpler",
    15: "lip corner depressor",
    16: "lower lip depressor",
    17: "chin raiser",
    20: "lip stretcher",
    21: "neck tightener",
    23: "lip tightener",
    24: "lip pressor",
    25: "lips part",
    26: "jaw drop",
    31: "jaw clencher",
    38: "nostril dilater",
    39: "nostril compress",
    43: "eye closure",
    56: "tilt right",
    61: "eyes left",
}
# The closed answer set of each single-label question type (au_list answers are AU_NAMES values).
LABEL_SETS: dict[str, tuple[str, ...]] = {
    "coarse": COARSE_LABELS,
    "fine": FINE_LABELS,
    "au_presence": ("yes", "no"),
    "au_side": ("left", "right"),
}

# What each AU looks like (FACS), for the agent's au_reference tool.
AU_LOOKS = {
    1: "inner ends of the brows rise",
    2: "outer ends of the brows rise",
    4: "brows lower and draw together",
    5: "upper eyelid rises, eyes widen",
    6: "cheeks rise, crow's feet",
    7: "eyelids tighten",
    9: "nose wrinkles",
    10: "upper lip rises",
    12: "lip corners pull up and out",
    14: "dimples form at the lip corners",
    15: "lip corners pull down",
    16: "lower lip pulls down",
    17: "chin boss pushes up",
    20: "lips stretch sideways",
    23: "lips tighten and narrow",
    24: "lips press together",
    25: "lips part",
    26: "jaw drops",
}
# emotion -> alternative AU recipes (FACS/EMFACS-style; SynthME draws one per clip). "S" marks a
# unilateral AU whose side is drawn per clip.
EMOTION_RULES: dict[str, list[list[str]]] = {
    "happiness": [["6", "12"], ["6", "12", "25"], ["12"]],
    "surprise": [["1", "2"], ["1", "2", "5"], ["1", "2", "26"]],
    "disgust": [["9"], ["10"], ["4", "9"], ["9", "10", "17"]],
    "anger": [["4", "7"], ["4", "7", "23"], ["4"]],
    "sadness": [["1", "4", "15"], ["1", "4", "15", "17"]],
    "fear": [["1", "2", "4", "20"], ["1", "2", "4", "5", "20"]],
    "contempt": [["S12"], ["S14"]],
    "repression": [["14"], ["15"], ["17"], ["24"], ["15", "17"], ["14", "24"]],
}
# emotion -> every AU any of its recipes uses: the cues the agent's consistency check accepts
EMOTION_AUS: dict[str, set[int]] = {
    emotion: {int(code.lstrip("S")) for recipe in recipes for code in recipe}
    for emotion, recipes in EMOTION_RULES.items()
}
# AU -> the facial bands its movement shows in (SynthME, the per-region motion, flow checks)
REGIONS: dict[int, tuple[str, ...]] = {
    1: ("brows",),
    2: ("brows",),
    4: ("brows",),
    5: ("eyes",),
    6: ("eyes",),
    7: ("eyes",),
    9: ("nose",),
    10: ("mouth", "nose"),
    12: ("mouth",),
    14: ("mouth",),
    15: ("mouth",),
    17: ("chin", "mouth"),
    20: ("mouth",),
    23: ("mouth",),
    24: ("mouth",),
    25: ("mouth",),
    26: ("chin", "mouth"),
}
# region -> (y0, y1) as fractions of the height of a centred, cropped face (what ME datasets ship),
# generous enough to cover head jitter
REGION_ROWS = {
    "brows": (0.26, 0.42),
    "eyes": (0.38, 0.52),
    "nose": (0.46, 0.66),
    "mouth": (0.62, 0.82),
    "chin": (0.74, 0.95),
}
