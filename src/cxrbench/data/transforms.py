"""Image transforms of the MGCA protocol, on uint8 grayscale arrays.

``resize_pad``: the long side is resized to ``size`` (area interpolation when shrinking, bilinear
when growing) and the short side zero-padded, centred, to a square (MGCA ``resize_img``). Training
takes a random crop, evaluation the centre crop; pixels become float in [0, 1], replicated to 3
channels and normalised with mean 0.5 / std 0.5 (MGCA).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

MEAN, STD = 0.5, 0.5


def resize_long_side(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2-D image so its long side is ``size`` (area interpolation when shrinking,
    bilinear when growing); an image already that size is returned as is. Applied to its own
    output it changes nothing, so the image store (``data/store.py``) keeps this and
    :func:`resize_pad` of the stored image equals :func:`resize_pad` of the file."""
    if image.ndim != 2:
        raise ValueError(f"resize_pad needs a 2-D grayscale image, got shape {image.shape}")
    h, w = image.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        image = cv2.resize(image, (nw, nh), interpolation=interp)
    return image


def resize_pad(image: np.ndarray, size: int) -> np.ndarray:
    """Resize the long side of a 2-D uint8 image to ``size`` and zero-pad it to ``size × size``."""
    image = resize_long_side(image, size)
    nh, nw = image.shape
    out = np.zeros((size, size), dtype=image.dtype)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = image
    return out


def crop(
    image: np.ndarray, size: int, *, train: bool, generator: torch.Generator | None = None
) -> np.ndarray:
    """A random (train) or centre (eval) ``size × size`` crop of a square image."""
    h, w = image.shape[:2]
    if size > min(h, w):
        raise ValueError(f"crop {size} is larger than the image {h}x{w}")
    if train:
        top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
    else:
        top, left = (h - size) // 2, (w - size) // 2
    return image[top : top + size, left : left + size]


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) → float (3, H, W), normalised with mean 0.5 / std 0.5."""
    x = torch.from_numpy(np.ascontiguousarray(image)).float().div_(255.0)
    x = x.sub_(MEAN).div_(STD)
    return x.unsqueeze(0).expand(3, -1, -1).contiguous()


def mgca_image(
    image: np.ndarray,
    resize: int,
    size: int,
    *,
    train: bool,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The whole MGCA chain: resize + pad to ``resize``, crop ``size``, tensor, normalise."""
    return to_tensor(crop(resize_pad(image, resize), size, train=train, generator=generator))


def moco2_image(
    image: np.ndarray, resize: int, size: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """MGCA's ``Moco2Transform`` (its CheXpert probe augmentation) on a grayscale radiograph.

    Random crop, colour jitter with p = 0.8 (brightness and contrast ±0.4; saturation and hue do
    nothing to a grey image, and random grayscale is a no-op for the same reason), Gaussian blur
    with p = 0.5 (σ ∈ [0.1, 2.0] px) and a horizontal flip with p = 0.5, then normalisation.
    """

    def u(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=generator))

    x = (
        torch.from_numpy(
            np.ascontiguousarray(
                crop(resize_pad(image, resize), size, train=True, generator=generator)
            )
        )
        .float()
        .div_(255.0)
    )
    if u(0, 1) < 0.8:
        x = (x * u(0.6, 1.4)).clamp_(0, 1)
        mean = x.mean()
        x = ((x - mean) * u(0.6, 1.4) + mean).clamp_(0, 1)
    if u(0, 1) < 0.5:
        sigma = u(0.1, 2.0)
        k = max(3, int(2 * round(3 * sigma) + 1))
        x = torch.from_numpy(cv2.GaussianBlur(x.numpy(), (k, k), sigma))
    if u(0, 1) < 0.5:
        x = x.flip(-1)
    x = x.sub_(MEAN).div_(STD)
    return x.unsqueeze(0).expand(3, -1, -1).contiguous()
