"""A procedural PA chest radiograph: thorax, lungs, mediastinum, heart, diaphragm, ribs, clavicles.

Coordinates: ``y`` runs from -1 (top) to 1 (bottom) over the image height, ``x`` over the width
with the same scale (so non-square images keep round shapes), both in the patient frame after a
small rotation. The image's left is the patient's right (radiographic convention). Every region
is an implicit function, so findings and their masks use the very same geometry.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .presets import Difficulty


@dataclass(frozen=True)
class Lung:
    side: str  # "right" (image left) or "left"
    cx: float
    cy: float
    a: float  # half-width
    b: float  # half-height
    dome: float  # diaphragm level at the lung's centre


@dataclass(frozen=True)
class Anatomy:
    height: int
    width: int
    angle: float  # radians
    lungs: tuple[Lung, Lung]
    heart_cx: float
    heart_cy: float
    heart_a: float
    heart_b: float
    ctr: float
    rib_phase: float
    rib_spacing: float

    def lung(self, side: str) -> Lung:
        return self.lungs[0] if side == "right" else self.lungs[1]


def sample_anatomy(
    rng: np.random.Generator, height: int, width: int, ctr: float, d: Difficulty
) -> Anatomy:
    """Per-image patient size, lung shape, heart position and rotation."""
    half_w = rng.uniform(0.23, 0.36)
    gap = rng.uniform(0.10, 0.16)
    b = rng.uniform(0.56, 0.68)
    cy = rng.uniform(-0.18, -0.06)
    dome = cy + b * rng.uniform(0.62, 0.78)
    right = Lung("right", -(gap + half_w), cy, half_w, b, dome + rng.uniform(-0.05, 0.0))
    left = Lung("left", gap + half_w * rng.uniform(0.95, 1.05), cy, half_w, b, dome)
    thorax = (left.cx + left.a) - (right.cx - right.a)
    heart_a = ctr * thorax / 2
    heart_cx = rng.uniform(0.06, 0.12) + 0.25 * heart_a
    heart_b = heart_a * rng.uniform(0.72, 0.9)
    heart_cy = dome - heart_b * rng.uniform(0.75, 0.95)
    angle = np.deg2rad(rng.uniform(-d.rotation_deg, d.rotation_deg))
    return Anatomy(height, width, float(angle), (right, left), heart_cx, heart_cy, heart_a,
                   heart_b, ctr, rng.uniform(0, 1), rng.uniform(0.16, 0.2))  # fmt: skip


def grids(anatomy: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Patient-frame coordinates (x, y) of every pixel centre."""
    h, w = anatomy.height, anatomy.width
    v = (np.arange(h, dtype=np.float32) + 0.5 - h / 2) / (h / 2)
    u = (np.arange(w, dtype=np.float32) + 0.5 - w / 2) / (h / 2)
    uu, vv = np.meshgrid(u, v)
    c, s = np.cos(anatomy.angle), np.sin(anatomy.angle)
    return (c * uu - s * vv).astype(np.float32), (s * uu + c * vv).astype(np.float32)


def smoothstep(edge: float, f: np.ndarray) -> np.ndarray:
    """0 → 1 as ``f`` crosses 0 over a band of width ``edge`` (soft region boundaries)."""
    return np.clip(0.5 + f / edge, 0.0, 1.0).astype(np.float32)


def lung_field(lung: Lung, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Implicit lung: > 0 inside (an ellipse cut by the diaphragm dome, deeper laterally)."""
    nx = (x - lung.cx) / lung.a
    ellipse = 1.0 - nx**2 - ((y - lung.cy) / lung.b) ** 2
    lateral = nx if lung.side == "left" else -nx
    dome = lung.dome + 0.10 * np.clip(lateral, 0, None) ** 2 - 0.06 * (1 - nx**2)
    return np.minimum(ellipse, (dome - y) * 3.0)


def heart_field(an: Anatomy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return 1.0 - ((x - an.heart_cx) / an.heart_a) ** 2 - ((y - an.heart_cy) / an.heart_b) ** 2


def smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-ish smooth noise: random values on a coarse grid, bicubic upsampled."""
    ch, cw = max(2, cells), max(2, round(cells * w / h))
    coarse = rng.standard_normal((ch, cw)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


def render_anatomy(
    an: Anatomy, x: np.ndarray, y: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Base radiograph in [0, 1], the soft lung mask, and the lung-marking texture."""
    h, w = an.height, an.width
    edge = 6.0 / h
    body = smoothstep(edge * 3, 1.0 - (x / 0.92) ** 2 - ((y - 0.05) / 1.25) ** 2)
    img = 0.06 + 0.42 * body
    lungs = np.maximum(*(smoothstep(edge * 4, lung_field(lu, x, y)) for lu in an.lungs))
    img -= 0.26 * lungs
    mediastinum = smoothstep(edge * 3, 0.09 - np.abs(x - 0.02 - 0.04 * (y + 1)))
    img += 0.12 * mediastinum * (y < an.heart_cy) * body
    heart = smoothstep(edge * 3, heart_field(an, x, y))
    img = np.maximum(img, (0.5 + 0.06 * heart) * heart + img * (1 - heart))
    lungs = lungs * (1 - heart)  # findings live in the visible lung, not behind the heart
    dome = max(lu.dome for lu in an.lungs)
    img += 0.08 * smoothstep(edge * 6, y - dome - 0.05) * body
    img += 0.05 * smoothstep(edge * 2, 0.045 - np.abs(x - 0.01)) * body  # spine
    img += _ribs(an, x, y) * (0.35 + 0.65 * lungs) * body
    img += _clavicles(x, y, edge) * body
    markings = smooth_noise(rng, h, w, max(6, h // 6))
    hilum = np.exp(-(((np.abs(x) - 0.22) / 0.35) ** 2 + ((y + 0.05) / 0.45) ** 2))
    texture = (0.015 + 0.03 * hilum) * markings
    return img.astype(np.float32), lungs.astype(np.float32), texture.astype(np.float32)


def _ribs(an: Anatomy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Posterior rib shadows: curved bands, denser laterally."""
    curve = y - 0.28 * x**2 + 0.12 * np.abs(x)
    phase = (curve / an.rib_spacing + an.rib_phase) % 1.0
    band = np.exp(-(((phase - 0.5) / 0.14) ** 2))
    return (0.055 * band * (np.abs(x) > 0.06) * (curve < 0.75)).astype(np.float32)


def _clavicles(x: np.ndarray, y: np.ndarray, edge: float) -> np.ndarray:
    line = y + 0.78 - 0.22 * np.abs(x) + 0.25 * (np.abs(x) - 0.35) ** 2
    bone = smoothstep(edge * 2, 0.035 - np.abs(line)) * (np.abs(x) > 0.05) * (np.abs(x) < 0.85)
    return (0.1 * bone).astype(np.float32)
