"""Findings drawn on the radiograph, each returning the exact region it occupies.

Every finding is a :class:`Finding` (kind, side, lobe, severity, hedged); :func:`draw` adds its
visual signature to the image and returns its boolean mask in pixel space, so RSNA boxes, SIIM
masks and Object-CXR shapes come from the very geometry that was drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .anatomy import Anatomy, lung_field, smooth_noise, smoothstep
from .presets import Difficulty

LOBES = {"upper": -0.42, "middle": -0.08, "lower": 0.22}
KINDS = (
    "cardiomegaly", "effusion", "consolidation", "edema", "atelectasis", "nodule", "mass",
    "pneumothorax", "support", "covid",
)  # fmt: skip


@dataclass(frozen=True)
class Finding:
    kind: str
    side: str = "right"  # right | left | bilateral
    lobe: str = "lower"
    severity: float = 1.0  # 0.5 (mild) .. 1.3 (severe)
    hedged: bool = False  # the report words it with uncertainty
    count: int = 1


@dataclass
class Layers:
    """What findings draw into: the image, the lung-marking texture, and the lung mask."""

    img: np.ndarray
    texture: np.ndarray
    lungs: np.ndarray
    x: np.ndarray
    y: np.ndarray


def _blob(
    L: Layers, rng: np.random.Generator, cx: float, cy: float, r: float, amp: float
) -> np.ndarray:
    """An irregular soft opacity (consolidation-like); returns its mask (inside the lung)."""
    h, w = L.img.shape
    wobble = 0.25 * smooth_noise(rng, h, w, 5)
    ax, ay = r * rng.uniform(0.8, 1.25), r * rng.uniform(0.7, 1.1)
    f = 1.0 - ((L.x - cx) / ax) ** 2 - ((L.y - cy) / ay) ** 2 + wobble
    inside = smoothstep(6.0 / h, f) * L.lungs
    core = np.clip(f, 0, 1) ** 0.5
    mottled = 1.0 + 0.25 * smooth_noise(rng, h, w, max(8, h // 5))
    L.img += amp * (0.55 * inside + 0.45 * core * L.lungs) * mottled
    L.texture *= 1 - 0.6 * inside
    return (inside > 0.5) & (L.lungs > 0.5)


def _lobe_centre(
    an: Anatomy, side: str, lobe: str, rng: np.random.Generator
) -> tuple[float, float]:
    lung = an.lung(side)
    lateral = 1 if side == "left" else -1
    cx = lung.cx + lateral * lung.a * rng.uniform(-0.15, 0.35)
    return cx, LOBES[lobe] + rng.uniform(-0.08, 0.08) + (lung.cy + 0.12)


def draw_consolidation(L: Layers, an: Anatomy, f: Finding, rng, d: Difficulty) -> np.ndarray:
    masks = np.zeros(L.img.shape, bool)
    sides = ("right", "left") if f.side == "bilateral" else (f.side,)
    for i in range(f.count):
        side = sides[i % len(sides)]
        cx, cy = _lobe_centre(an, side, f.lobe if i == 0 else rng.choice(["upper", "lower"]), rng)
        r = rng.uniform(0.12, 0.2) * (0.6 + 0.5 * f.severity)
        masks |= _blob(L, rng, cx, cy, r, d.consolidation * f.severity)
    return masks


def draw_effusion(L: Layers, an: Anatomy, f: Finding, rng, d: Difficulty) -> np.ndarray:
    """Fluid layering at the base: blunted costophrenic angle with a lateral meniscus."""
    mask = np.zeros(L.img.shape, bool)
    for side in ("right", "left") if f.side == "bilateral" else (f.side,):
        lung = an.lung(side)
        lateral = (L.x - lung.cx) / lung.a * (1 if side == "left" else -1)
        depth = lung.b * rng.uniform(0.25, 0.45) * f.severity
        level = lung.dome - depth * (0.35 + 0.65 * np.clip(lateral, 0, 1.2) ** 2)
        region = smoothstep(4.0 / an.height, L.y - level) * smoothstep(
            4.0 / an.height, lung_field(lung, L.x, L.y) + 0.25
        )
        L.img += d.effusion * f.severity * region * (0.7 + 0.3 * np.clip(L.y - level, 0, 0.3) / 0.3)
        L.texture *= 1 - region
        mask |= region > 0.5
    return mask


def draw_pneumothorax(L: Layers, an: Anatomy, f: Finding, rng, d: Difficulty) -> np.ndarray:
    """Apical-lateral air crescent without lung markings, bounded by a visible pleural line."""
    lung = an.lung(f.side)
    field = lung_field(lung, L.x, L.y)
    upper = np.clip(0.6 - (L.y - lung.cy) / lung.b, 0, 1)
    thickness = rng.uniform(0.3, 0.5) * f.severity * (0.5 + 0.5 * upper)
    crescent = (field > 0) & (field < thickness) & (L.y < lung.cy + 0.35 * lung.b)
    soft = crescent.astype(np.float32)
    soft = cv2.GaussianBlur(soft, (0, 0), max(0.6, an.height / 160))
    L.texture *= 1 - soft
    L.img -= d.pneumothorax * f.severity * soft
    line = np.exp(-(((field - thickness) / (0.012 + 1.5 / an.height)) ** 2)) * (field > 0)
    line *= upper > 0.05
    L.img += 0.09 * line * (thickness > 0.02)
    return crescent


def draw_edema(L: Layers, an: Anatomy, f: Finding, rng, d: Difficulty) -> np.ndarray:
    """Bilateral perihilar haze (bat-wing), fading to the periphery."""
    haze = np.zeros(L.img.shape, np.float32)
    for lung in an.lungs:
        hx = lung.cx + (lung.a * 0.55 if lung.side == "right" else -lung.a * 0.55)
        haze += np.exp(-(((L.x - hx) / (0.22 * f.severity)) ** 2 + ((L.y - 0.0) / 0.32) ** 2))
    haze *= L.lungs
    L.img += (
        d.edema
        * f.severity
        * haze
        * (1 + 0.3 * smooth_noise(rng, L.img.shape[0], L.img.shape[1], 10))
    )
    L.texture *= 1 + 0.8 * haze  # indistinct, prominent vessels
    return haze > 0.5


def draw_atelectasis(L: Layers, an: Anatomy, f: Finding, rng, d: Difficulty) -> np.ndarray:
    """Linear / plate-like opacity in the lower zone."""
    mask = np.zeros(L.img.shape, bool)
    for side in ("right", "left") if f.side == "bilateral" else (f.side,):
        lung = an.lung(side)
        cx = lung.cx + rng.uniform(-0.3, 0.3) * lung.a
        cy = lung.dome - rng.uniform(0.08, 0.2)
        t = np.deg2rad(rng.uniform(-15, 15))
        u = (L.x - cx) * np.cos(t) + (L.y - cy) * np.sin(t)
        v = -(L.x - cx) * np.sin(t) + (L.y - cy) * np.cos(t)
        plate = 1 - (u / (lung.a * 0.6)) ** 2 - (v / (0.025 + 0.02 * f.severity)) ** 2
        region = smoothstep(3.0 / an.height, plate) * L.lungs
        L.img += d.atelectasis * f.severity * region
        mask |= region > 0.5
    return mask


def draw_nodule(L: Layers, an: Anatomy, f: Finding, rng, d: Difficulty) -> np.ndarray:
    cx, cy = _lobe_centre(an, f.side, f.lobe, rng)
    r = (rng.uniform(0.035, 0.055) if f.kind == "nodule" else rng.uniform(0.09, 0.14)) * f.severity
    disc = smoothstep(3.0 / an.height, 1 - ((L.x - cx) / r) ** 2 - ((L.y - cy) / r) ** 2)
    L.img += d.nodule * (0.8 + 0.2 * f.severity) * disc * L.lungs
    return (disc > 0.5) & (L.lungs > 0.5)


def draw_covid(L: Layers, an: Anatomy, f: Finding, rng, d: Difficulty) -> np.ndarray:
    """COVID-19 pattern: bilateral, peripheral, lower-zone ground glass."""
    mask = np.zeros(L.img.shape, bool)
    for lung in an.lungs:
        field = lung_field(lung, L.x, L.y)
        peripheral = smoothstep(6.0 / an.height, field) * np.clip(1 - field / 0.45, 0, 1)
        lower = np.clip((L.y - lung.cy) / lung.b + 0.5, 0, 1)
        glass = (
            peripheral * lower * (0.7 + 0.3 * smooth_noise(rng, L.img.shape[0], L.img.shape[1], 7))
        )
        L.img += d.covid * f.severity * np.clip(glass, 0, None)
        mask |= glass > 0.35
    return mask


def draw_support(L: Layers, an: Anatomy, f: Finding, rng, d: Difficulty) -> np.ndarray:
    """Tubes and lines: bright thin curves entering from the top (ET/NG tube, central line)."""
    h, w = L.img.shape
    layer = np.zeros((h, w), np.float32)
    for _ in range(f.count):
        x0 = w / 2 + rng.uniform(-0.08, 0.08) * h
        pts = [(x0 + rng.uniform(-0.04, 0.04) * h * k, k * h / 6) for k in range(4)]
        thickness = max(1, round(h / 90))
        cv2.polylines(layer, [np.round(pts).astype(np.int32)], False, 1.0, thickness)
    L.img += 0.3 * layer
    return layer > 0


DRAW = {
    "consolidation": draw_consolidation,
    "effusion": draw_effusion,
    "pneumothorax": draw_pneumothorax,
    "edema": draw_edema,
    "atelectasis": draw_atelectasis,
    "nodule": draw_nodule,
    "mass": draw_nodule,
    "covid": draw_covid,
    "support": draw_support,
}


def draw(L: Layers, an: Anatomy, f: Finding, rng: np.random.Generator, d: Difficulty) -> np.ndarray:
    """Draw ``f``; cardiomegaly lives in the anatomy (heart size), so its mask is the heart."""
    if f.kind == "cardiomegaly":
        return np.zeros(L.img.shape, bool)
    return DRAW[f.kind](L, an, f, rng, d)
