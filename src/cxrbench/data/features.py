"""Frozen-feature cache: features of a frozen encoder on un-augmented inputs, computed once.

With a frozen encoder in eval mode and no training augmentation, an image's pooled feature does
not depend on the label fraction, the training seed or the epoch, so a linear-probe grid over
fractions and seeds needs one forward pass over the data. Features are stored per
(encoder sha256, dataset, split part, ids, image files, transform, feature code) as
``<key>.safetensors`` under the cache root (``results/cache/features`` by default); a different
encoder, split, image size, regenerated image file (size or modification time) or change to the
code that computes features is a different key, so a stale entry is not served. Written
atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import safetensors.torch
import torch

from cxrbench.data.store import ImageStore, read_resized
from cxrbench.data.transforms import mgca_image
from cxrbench.errors import CxrbenchError
from cxrbench.provenance import source_hash
from cxrbench.utils.io import atomic_write_bytes, read_safetensors
from cxrbench.utils.lock import exclusive

log = logging.getLogger(__name__)


# the modules whose code decides what a feature is: reading, transforming, the forward pass
_FEATURE_CODE = ("data/codecs.py", "data/transforms.py", "data/features.py", "data/store.py",
                 "models/backbones.py")  # fmt: skip


def feature_code_hash() -> str:
    """sha256 of the source of the modules that compute features (a code change is a new key)."""
    return source_hash(_FEATURE_CODE)


def files_stamp(paths: Sequence[Path]) -> str:
    """A hash of each image file's path, size and modification time: regenerated or replaced
    images (same ids, new pixels) make a new key instead of serving stale features."""
    digest = hashlib.sha256()
    for path in paths:
        st = os.stat(path)
        digest.update(f"{path}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def feature_key(
    encoder_sha256: str,
    dataset: str,
    part: str,
    ids: Sequence[str],
    transform: dict[str, object],
    files: str = "",
) -> str:
    """The cache key: every input that changes the features, hashed: the encoder, the images
    (``files``: :func:`files_stamp` of their paths), the transform and the feature code."""
    payload = json.dumps(
        {
            "encoder": encoder_sha256,
            "dataset": dataset,
            "part": part,
            "ids": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
            "files": files,
            "transform": transform,
            "code": feature_code_hash(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


@torch.inference_mode()
def extract_features(
    encoder: torch.nn.Module,
    paths: Sequence[Path],
    resize: int,
    crop: int,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    store: ImageStore | None = None,
) -> torch.Tensor:
    """Pooled features (N, D) of the centre-cropped images, encoder in eval mode (images from
    ``store`` where it holds them)."""
    was_training = encoder.training
    encoder.eval()
    chunks = []
    for start in range(0, len(paths), batch_size):
        batch = [
            mgca_image(read_resized(p, resize, store), resize, crop, train=False)
            for p in paths[start : start + batch_size]
        ]
        chunks.append(encoder(torch.stack(batch).to(device)).pooled.float().cpu())
    encoder.train(was_training)
    return torch.cat(chunks) if chunks else torch.zeros(0)


class FeatureCache:
    """safetensors files keyed by :func:`feature_key`; ``hits``/``misses`` count lookups."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def get(self, key: str) -> torch.Tensor | None:
        """The stored features, or None; an entry that does not load (a file damaged outside
        cxrbench: writes are atomic) is deleted with a warning and recomputed."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            features = read_safetensors(path, "cannot read the cached features")["features"]
        except (CxrbenchError, KeyError) as err:
            log.warning("%s: cached features do not load (%s); recomputing them", path, err)
            path.unlink(missing_ok=True)
            return None
        self.hits += 1
        return features

    def put(self, key: str, features: torch.Tensor) -> None:
        data = safetensors.torch.save({"features": features.contiguous()})
        atomic_write_bytes(self.path(key), data)

    def features(
        self,
        key: str,
        encoder: torch.nn.Module,
        paths: Sequence[Path],
        resize: int,
        crop: int,
        batch_size: int = 128,
        store: ImageStore | None = None,
    ) -> torch.Tensor:
        """Cached features of ``paths``, extracted (and stored) on a miss. One process extracts
        an entry at a time (a second waits for it, then reads the stored features)."""
        cached = self.get(key)
        if cached is not None:
            return cached
        lock = self.root / f".{key}.lock"
        with exclusive(self.root, what="feature cache entry", lock_file=lock):
            cached = self.get(key)
            if cached is not None:
                return cached
            self.misses += 1
            log.info("extracting features of %d images (cache miss)", len(paths))
            features = extract_features(encoder, paths, resize, crop, batch_size, store=store)
            self.put(key, features)
        # entries are many: leave no lock file behind (a process that was waiting on it finds
        # the stored features; only a failed extraction, which skips this, leaves it)
        lock.unlink(missing_ok=True)
        return features
