"""What each dataset layout contains: finding prevalences, acquisition-site mixes, classes.

Every layout has its own prevalences and site mix (distribution shift between the pre-training
corpus and each downstream set, as in the real setting).
"""

from __future__ import annotations

import numpy as np

from .findings import Finding
from .presets import Difficulty

PREVALENCE: dict[str, dict[str, float]] = {
    "mimic": {"cardiomegaly": 0.2, "effusion": 0.2, "consolidation": 0.15, "edema": 0.1,
              "atelectasis": 0.18, "nodule": 0.05, "mass": 0.03, "pneumothorax": 0.06,
              "support": 0.15},
    "chexpert": {"cardiomegaly": 0.22, "effusion": 0.25, "consolidation": 0.14, "edema": 0.15,
                 "atelectasis": 0.2, "nodule": 0.05, "mass": 0.03, "pneumothorax": 0.08,
                 "support": 0.3},
    "rsna": {"consolidation": 0.3, "effusion": 0.08, "atelectasis": 0.08, "cardiomegaly": 0.08,
             "support": 0.05},
    "siim": {"pneumothorax": 0.25, "support": 0.1, "effusion": 0.05, "atelectasis": 0.05},
    "objectcxr": {"effusion": 0.05, "cardiomegaly": 0.05, "consolidation": 0.05},
    "covidx": {"cardiomegaly": 0.05},
}  # fmt: skip
SITE_MIX = {
    "mimic": (0.4, 0.3, 0.2, 0.1),
    "chexpert": (0.1, 0.2, 0.3, 0.4),
    "rsna": (0.25, 0.25, 0.25, 0.25),
    "siim": (0.5, 0.1, 0.1, 0.3),
    "objectcxr": (0.1, 0.5, 0.3, 0.1),
    "covidx": (0.3, 0.1, 0.4, 0.2),
}
#: Single-finding studies (corpus version 3, issue 20): a share of a layout's studies holds exactly
#: one of the five CheXpert competition findings and nothing else (no device, no incidental
#: finding, no heart-failure partners), drawn with these weights. They are the studies that GLoRIA's
#: CheXpert 5×200 rule (``tasks/chexpert_zeroshot.py``) can pick; with independent findings alone
#: synth-small's train.csv held 88 / 102 / 28 / 10 / 120 eligible images. Consolidation and edema
#: weigh more because the rule reads the report: two of the three consolidation sentences name
#: pneumonia (a second positive, or an uncertain one) and one of the three edema sentences says
#: "haziness" (Lung Opacity), so fewer of their single-finding studies stay eligible. synth-small
#: now has 150 / 159 / 114 / 92 / 163 (docs/synthcxr.md).
SINGLE_FINDING: dict[str, tuple[float, dict[str, float]]] = {
    "chexpert": (0.45, {"atelectasis": 1.0, "cardiomegaly": 1.0, "consolidation": 3.5,
                        "edema": 1.5, "effusion": 1.0}),
}  # fmt: skip
COVIDX_CLASSES = ("normal", "pneumonia", "COVID-19")
COVIDX_TRAIN_MIX = (0.45, 0.3, 0.25)


def _side(rng: np.random.Generator, bilateral: float = 0.0) -> str:
    if rng.random() < bilateral:
        return "bilateral"
    return "right" if rng.random() < 0.5 else "left"


def _lobe(rng: np.random.Generator, side: str) -> str:
    lobes = ["upper", "lower", "middle"] if side == "right" else ["upper", "lower"]
    return str(rng.choice(lobes))


def make_finding(kind: str, rng: np.random.Generator, d: Difficulty) -> Finding:
    severity = float(rng.uniform(*d.severity))
    bilateral = {"effusion": 0.2, "atelectasis": 0.2, "edema": 1.0, "consolidation": 0.15}
    side = _side(rng, bilateral.get(kind, 0.0))
    if kind in ("pneumothorax", "nodule", "mass") and side == "bilateral":
        side = "right"
    lobe = _lobe(rng, "right" if side == "bilateral" else side)
    count = 1
    if kind == "consolidation":
        count = (
            int(rng.choice([1, 1, 1, 2, 3])) if side == "bilateral" else int(rng.choice([1, 1, 2]))
        )
    elif kind == "support":
        count = int(rng.integers(1, 3))
    hedged = bool(severity < 0.8 and rng.random() < 0.3)
    return Finding(kind, side, lobe, severity, hedged, count)


def sample_findings(dataset: str, rng: np.random.Generator, d: Difficulty) -> tuple[Finding, ...]:
    """Independent findings at the layout's prevalences (edema brings heart failure's friends),
    or, for the layout's share of single-finding studies, one competition finding alone."""
    if dataset in SINGLE_FINDING:
        share, weights = SINGLE_FINDING[dataset]
        if rng.random() < share:
            p = np.array(list(weights.values()))
            return (make_finding(str(rng.choice(list(weights), p=p / p.sum())), rng, d),)
    prevalence = dict(PREVALENCE[dataset])
    kinds = [k for k, p in prevalence.items() if rng.random() < p]
    if "edema" in kinds:
        kinds += [k for k, p in (("cardiomegaly", 0.6), ("effusion", 0.5)) if rng.random() < p]
    ordered = sorted(set(kinds), key=list(prevalence).index)
    return tuple(make_finding(k, rng, d) for k in ordered)


def covidx_case(label: str, rng: np.random.Generator, d: Difficulty) -> tuple[Finding, ...]:
    base = list(sample_findings("covidx", rng, d))
    if label == "pneumonia":
        side = _side(rng)
        base.append(Finding("consolidation", side, _lobe(rng, side), float(rng.uniform(0.8, 1.3))))
    elif label == "COVID-19":
        base.append(Finding("covid", "bilateral", "lower", float(rng.uniform(0.7, 1.3))))
    return tuple(base)


def site(dataset: str, rng: np.random.Generator) -> int:
    return int(rng.choice(len(SITE_MIX[dataset]), p=SITE_MIX[dataset]))
