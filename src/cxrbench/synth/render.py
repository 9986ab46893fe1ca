"""Compose one radiograph: anatomy → findings → foreign objects → acquisition site style."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .anatomy import grids, render_anatomy, sample_anatomy, smooth_noise
from .findings import Finding, Layers, draw
from .objects import draw_objects
from .presets import Difficulty

# acquisition sites: (gamma, contrast, offset, blur in px at 128, noise multiplier, vignette)
SITES = (
    (1.00, 1.00, 0.00, 0.6, 1.0, 0.10),
    (0.80, 1.10, -0.04, 1.0, 0.7, 0.20),
    (1.25, 0.90, 0.06, 0.3, 1.4, 0.05),
    (0.95, 1.20, -0.08, 1.4, 1.1, 0.25),
)


@dataclass(frozen=True)
class ImageSpec:
    height: int
    width: int
    findings: tuple[Finding, ...]
    site: int
    objects: int = 0


@dataclass
class Rendered:
    pixels: np.ndarray  # uint8 (H, W)
    masks: dict[str, np.ndarray]  # finding kind → bool mask
    objects: list[tuple[int, list[float]]]


def render(spec: ImageSpec, rng: np.random.Generator, d: Difficulty) -> Rendered:
    kinds = {f.kind: f for f in spec.findings}
    if "cardiomegaly" in kinds:
        lo, hi = d.cardiomegaly_ctr
        ctr = lo + (hi - lo) * rng.uniform(0.0, 1.0)
    else:
        ctr = rng.uniform(*d.normal_ctr)
    an = sample_anatomy(rng, spec.height, spec.width, float(ctr), d)
    x, y = grids(an)
    img, lungs, texture = render_anatomy(an, x, y, rng)
    layers = Layers(img, texture, lungs, x, y)
    masks = {f.kind: draw(layers, an, f, rng, d) for f in spec.findings}
    img = layers.img + layers.texture * layers.lungs
    objects = draw_objects(img, rng, spec.objects) if spec.objects else []
    return Rendered(_finish(img, spec, rng, d), masks, objects)


def _finish(
    img: np.ndarray, spec: ImageSpec, rng: np.random.Generator, d: Difficulty
) -> np.ndarray:
    """Exposure, site style (gamma, contrast, blur, vignette), film grain, 8-bit."""
    gamma, contrast, offset, blur, noise, vignette = SITES[spec.site]
    h, w = img.shape
    img = np.clip(img, 0, 1) ** (gamma * rng.uniform(0.9, 1.1))
    img = offset + rng.uniform(-0.03, 0.03) + contrast * rng.uniform(0.92, 1.08) * img
    sigma = blur * h / 128
    if sigma > 0.2:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
    img = img * (1 - vignette * r2 / 2) + 0.02 * smooth_noise(rng, h, w, 3)
    img = img + d.noise * noise * rng.standard_normal((h, w)).astype(np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
