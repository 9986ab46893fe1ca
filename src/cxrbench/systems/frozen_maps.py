"""Frozen-encoder maps computed once per run: the dense tasks' answer to the feature cache.

With a frozen encoder in eval mode and no augmentation (the protocol's default), what a U-Net
decoder or a YOLO head receives for an image is the same every epoch. Segmentation and detection
therefore read each split part once, run the encoder over it in evaluation batches, and keep the
maps in memory (float32, exactly what the encoder returned) together with the rest of each item
(mask, boxes); the training epochs, validation and test then only run the decoder or head.
``benchmarks/perf/dense_cache.py`` measures what this saves (cached vs uncached epoch).

The maps live for one run, in memory, not on disk: a grid's encoder pass is one pass per run
against tens of decoder epochs, so persisting them across seeds would save little, and the
highest-resolution skip maps of a U-Net are large (``c1`` of a ResNet-50 at 224 px is 3.2 MB per
image). :func:`fits` refuses the cache (the run then reads images every epoch, as before) when
the maps of the run's images would exceed ``train.map_cache_gib``; a log line says which.

Numbers: a cached run computes the encoder in other batches than an uncached one, so its maps
can differ in the last float bits; results record ``probe_mode: cached`` (``tasks/base.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from cxrbench.data.resumable import EvalLoader

log = logging.getLogger(__name__)

Encode = Callable[[Tensor], Sequence[Tensor]]


def map_bytes(encode: Encode, image: Tensor) -> int:
    """Bytes of the float32 maps ``encode`` makes from one image (``image``: (C, H, W))."""
    with torch.inference_mode():
        return sum(4 * m[0].numel() for m in encode(image.unsqueeze(0)))


def fits(encode: Encode, rows: Sequence[Any], limit_gib: float) -> bool:
    """Whether the maps of every item of ``rows`` (datasets of ``{"image": ...}`` items) fit in
    ``limit_gib`` GiB (0: never cache)."""
    if limit_gib <= 0:
        return False
    first = next((r for r in rows if len(r) > 0), None)
    if first is None:
        return False
    count = sum(len(r) for r in rows)
    need = map_bytes(encode, first[0]["image"]) * count
    if need > limit_gib * 2**30:
        log.info(
            "frozen maps of %d images need %.1f GiB > train.map_cache_gib=%g: the encoder runs "
            "every epoch instead",
            count,
            need / 2**30,
            limit_gib,
        )
        return False
    return True


class MapRows(Dataset[dict[str, Any]]):
    """Items of a part with their image replaced by the encoder's maps (``"maps"``, a list)."""

    draws_random = False  # nothing random is read: the training loader skips per-item seeding

    def __init__(self, maps: list[Tensor], rest: list[dict[str, Any]]) -> None:
        self.maps, self.rest = maps, rest

    def __len__(self) -> int:
        return len(self.rest)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.rest[i], "maps": [m[i] for m in self.maps]}


@torch.inference_mode()
def precompute(
    rows: Dataset[dict[str, Any]], encode: Encode, batch_size: int, workers: int
) -> MapRows:
    """Run ``encode`` over every item of ``rows`` once (in order); the items keep everything
    but ``"image"``, which becomes the maps."""
    loader = EvalLoader(
        rows, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=list
    )
    levels: list[list[Tensor]] = []
    rest: list[dict[str, Any]] = []
    for batch in loader:
        images = torch.stack([item.pop("image") for item in batch])
        maps = [m.float().cpu() for m in encode(images)]
        if not levels:
            levels = [[] for _ in maps]
        for stored, m in zip(levels, maps, strict=True):
            stored.append(m)
        rest.extend(batch)
    return MapRows([torch.cat(chunks) for chunks in levels], rest)


def cached_rows(
    rows: list[Dataset[dict[str, Any]]], encode: Encode, cfg: Any, *, usable: bool = True
) -> tuple[list[Dataset[dict[str, Any]]], bool]:
    """The split parts' datasets with their images replaced by the maps, when the encoder is
    frozen without augmentation (``cfg.probe``), ``usable`` (the model takes maps) and the maps
    fit in ``cfg.train.map_cache_gib``; otherwise ``rows`` unchanged. Also whether it cached."""
    frozen = usable and not cfg.probe.finetune and not cfg.probe.augment
    if not (frozen and fits(encode, rows, cfg.train.map_cache_gib)):
        return rows, False
    batch, workers = cfg.train.feature_batch_size, cfg.train.workers
    return [precompute(r, encode, batch, workers) for r in rows], True
