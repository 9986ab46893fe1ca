"""Frozen-feature cache: identical to a direct forward pass, keyed so a new encoder misses."""

from __future__ import annotations

import torch

from cxrbench.data.codecs import read_image
from cxrbench.data.features import FeatureCache, feature_key
from cxrbench.data.transforms import mgca_image
from cxrbench.models.backbones import build_backbone


def test_cache_equals_direct_forward_and_invalidates(synth_tiny, tmp_path) -> None:
    paths = sorted((synth_tiny / "covidx" / "test").glob("*.png"))[:10]
    ids = [p.name for p in paths]
    torch.manual_seed(0)
    encoder = build_backbone("tiny", image_size=64).eval()
    cache = FeatureCache(tmp_path)
    transform = {"resize": 72, "crop": 64, "view": "centre"}
    key = feature_key("sha-a", "covidx", "test", ids, transform)
    first = cache.features(key, encoder, paths, 72, 64, batch_size=4)
    with torch.no_grad():
        direct = encoder(
            torch.stack([mgca_image(read_image(p), 72, 64, train=False) for p in paths])
        ).pooled
    assert torch.allclose(first, direct, atol=1e-5)
    again = cache.features(key, encoder, paths, 72, 64)
    assert torch.equal(first, again) and (cache.hits, cache.misses) == (1, 1)
    # another encoder, part, id list or transform is another key: never a stale hit
    assert feature_key("sha-b", "covidx", "test", ids, transform) != key
    assert feature_key("sha-a", "covidx", "test", ids[:-1], transform) != key
    assert feature_key("sha-a", "covidx", "test", ids, {**transform, "crop": 56}) != key
    torch.manual_seed(1)
    other = build_backbone("tiny", image_size=64).eval()
    other_key = feature_key("sha-b", "covidx", "test", ids, transform)
    assert not torch.allclose(cache.features(other_key, other, paths, 72, 64), first)
    assert cache.misses == 2


def test_regenerated_images_are_a_new_key(tmp_path) -> None:
    """Same ids, new pixels (a corpus regenerated with another difficulty): not a stale hit."""
    import os

    import numpy as np
    from PIL import Image

    from cxrbench.data.features import files_stamp

    paths = [tmp_path / f"{i}.png" for i in range(3)]
    for i, path in enumerate(paths):
        Image.fromarray(np.full((64, 64), 40 * i, np.uint8)).save(path)
    transform = {"resize": 72, "crop": 64, "view": "centre"}
    ids = [p.name for p in paths]
    before = feature_key("sha-a", "x", "test", ids, transform, files_stamp(paths))
    Image.fromarray(np.full((64, 64), 200, np.uint8)).save(paths[1])
    stat = os.stat(paths[1])
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert feature_key("sha-a", "x", "test", ids, transform, files_stamp(paths)) != before
    assert feature_key("sha-a", "x", "test", ids, transform, files_stamp(paths[:2])) != before
