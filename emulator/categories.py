"""Prompt -> output category (``text_features``) and the kind of structure the emulator segments for it.

The 16 categories are BiomedParse's ``BIOMED_CLASSES``. The real model predicts the category; the emulator
derives it from keywords in the prompt, so the same prompt always yields the same category.
"""

from __future__ import annotations

import re
from enum import StrEnum

BIOMED_CLASSES = (
    "liver", "lung", "kidney", "pancreas", "heart anatomies", "brain anatomies", "eye anatomies", "vessel",
    "other organ", "tumor", "infection", "other lesion", "fluid disturbance", "other abnormality",
    "histology structure", "other",
)  # fmt: skip


class TargetKind(StrEnum):
    #: a large structure: the largest bright region
    organ = "organ"
    #: small compact findings: small bright blobs, absent (all-zero mask) when there are none
    lesion = "lesion"
    #: many small dark objects, as stained nuclei on a bright slide
    cells = "cells"
    #: everything that is not foreground
    background = "background"
    #: all foreground, for prompts the emulator cannot place
    foreground = "foreground"


# First match wins, so findings come before the organs they sit in ("liver tumor" is a tumor) and
# "lateral ventricle" (brain) comes before "ventricle" (heart). Keywords match at word starts.
_KEYWORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("histology structure", ("cell", "nucle", "glandular", "epithel", "histolog")),
    ("tumor", ("tumo", "glioma", "melanoma", "neoplas", "carcinoma", "cancer", "malignan", "metasta",
               "mass")),
    ("infection", ("covid", "infect", "pneumonia", "consolidation")),
    ("fluid disturbance", ("edema", "oedema", "effusion", "fluid", "ascites")),
    ("other lesion", ("lesion", "cyst", "polyp", "nodule", "stone", "calcul", "ulcer", "plaque",
                      "hemorrhag")),
    ("other abnormality", ("abnormal", "opacity", "fracture", "pneumothorax", "atelecta")),
    ("eye anatomies", ("optic", "retina", "fundus", "macula", "fovea", "choroid", "eye")),
    ("brain anatomies", ("brain", "hippocamp", "lateral ventricle", "white matter", "gray matter", "cerebel",
                         "cortex", "thalam")),
    ("heart anatomies", ("heart", "atri", "ventric", "myocard", "cardiac")),
    ("liver", ("liver", "hepat")),
    ("lung", ("lung", "pulmon")),
    ("kidney", ("kidney", "renal")),
    ("pancreas", ("pancrea",)),
    ("vessel", ("vessel", "aort", "arter", "vein", "vena", "postcava", "vascul")),
    ("other organ", ("spleen", "stomach", "gallbladder", "bladder", "duoden", "esophag", "adrenal", "uterus",
                     "prostat", "colon", "bowel", "intestin", "bone", "fetal head", "symphysis", "thyroid",
                     "breast", "muscle", "zone", "organ", "skin")),
)  # fmt: skip

_PATTERNS = tuple(
    (category, re.compile(r"\b(?:" + "|".join(re.escape(word) for word in words) + ")"))
    for category, words in _KEYWORDS
)
_ORGAN_CATEGORIES = frozenset(BIOMED_CLASSES[:9])
_LESION_CATEGORIES = frozenset(BIOMED_CLASSES[9:14])
_BACKGROUND = re.compile(r"\bbackground\b")


def category_for_prompt(prompt: str) -> str:
    """The ``text_features`` value for one prompt: a keyword-matched BIOMED class, else "other"."""
    text = prompt.lower()
    for category, pattern in _PATTERNS:
        if pattern.search(text):
            return category
    return "other"


def target_kind(prompt: str, category: str) -> TargetKind:
    """What the classical segmenter should look for, given a prompt and its category."""
    if category in _ORGAN_CATEGORIES:
        return TargetKind.organ
    if category in _LESION_CATEGORIES:
        return TargetKind.lesion
    if category == "histology structure":
        return TargetKind.cells
    if _BACKGROUND.search(prompt.lower()):
        return TargetKind.background
    return TargetKind.foreground
