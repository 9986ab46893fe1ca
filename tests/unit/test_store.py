"""The preprocessed image store (``data/store.py``): the pixels a loader gets are the decoded
file's, bit for bit; changed, added and removed sources are handled; ``draft`` stays close."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrbench.data.codecs import read_image, read_image_draft
from cxrbench.data.store import MANIFEST, ImageStore, common_root, read_resized
from cxrbench.data.transforms import mgca_image, resize_pad
from cxrbench.errors import ConfigError, CxrbenchError


def _radiograph(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth image with edges (JPEG-like content, not noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (max(2, h // 40), max(2, w // 40)), dtype=np.uint8)
    image = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    cv2.circle(image, (w // 3, h // 2), min(h, w) // 5, 255, -1)
    return image


@pytest.fixture()
def images(tmp_path) -> list[Path]:
    root = tmp_path / "data" / "files"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir(parents=True)
    paths = [
        root / "a" / "wide.jpg",  # shrunk: area interpolation
        root / "a" / "tall.png",
        root / "b" / "small.jpg",  # smaller than the size: grown bilinearly
        root / "b" / "exact.png",  # already the size
    ]
    shapes = [(700, 900), (900, 640), (50, 70), (96, 80)]
    for k, (path, (h, w)) in enumerate(zip(paths, shapes, strict=True)):
        cv2.imwrite(str(path), _radiograph(h, w, k))
    return paths


def test_stored_pixels_are_the_decoded_files(images, tmp_path) -> None:
    store = ImageStore.ensure(images, 96, cache_root=tmp_path / "cache")
    assert len(store) == 4 and store.folder.parent == tmp_path / "cache"
    for path in images:
        stored = store.read(path)
        assert stored is not None and max(stored.shape) == 96
        assert np.array_equal(resize_pad(stored, 96), resize_pad(read_image(path), 96))
        assert np.array_equal(read_resized(path, 96, store), stored)
        # the whole training transform, random crop included
        a = mgca_image(read_resized(path, 96, store), 96, 80, train=False)
        b = mgca_image(read_image(path), 96, 80, train=False)
        assert a.equal(b)
    other = tmp_path / "elsewhere.png"
    cv2.imwrite(str(other), _radiograph(40, 40, 9))
    assert store.read(other) is None  # not in the store: the loader decodes the file
    assert np.array_equal(read_resized(other, 96, store), read_image(other))
    # another size than the store's: the file is decoded
    assert np.array_equal(read_resized(images[0], 64, store), read_image(images[0]))


def test_store_is_reused_updated_and_rebuilt(images, tmp_path) -> None:
    cache = tmp_path / "cache"
    first = ImageStore.ensure(images[:3], 96, cache_root=cache)
    assert first.generation == 1
    again = ImageStore.ensure(images[:3], 96, cache_root=cache)
    assert again.generation == 1  # nothing to do: the same files
    # a source rewritten with other pixels, and a new image: only those are decoded
    cv2.imwrite(str(images[1]), _radiograph(900, 640, 42))
    os.utime(images[1], ns=(1, 1))
    updated = ImageStore.ensure(images, 96, cache_root=cache)
    assert updated.generation == 2 and len(updated) == 4
    assert not np.array_equal(updated.read(images[1]), first.read(images[1]))
    for path in images:
        assert np.array_equal(resize_pad(updated.read(path), 96),
                              resize_pad(read_image(path), 96))  # fmt: skip
    assert sorted(p.name for p in updated.folder.glob("images-*.u8")) == ["images-2.u8"]
    # a manifest from other decoding code is rebuilt from scratch
    manifest = json.loads((updated.folder / MANIFEST).read_text())
    (updated.folder / MANIFEST).write_text(json.dumps({**manifest, "code": "older"}))
    rebuilt = ImageStore.ensure(images, 96, cache_root=cache)
    assert rebuilt.generation == 1 and len(rebuilt) == 4


def test_store_survives_pickling_for_loader_workers(images, tmp_path) -> None:
    import pickle

    store = ImageStore.ensure(images, 96, cache_root=tmp_path / "cache", workers=2)
    store.read(images[0])  # opened here
    clone = pickle.loads(pickle.dumps(store))
    assert clone._data is None  # the map is reopened by the worker
    assert np.array_equal(clone.read(images[2]), store.read(images[2]))


def test_draft_decoding_is_close_to_exact(images, tmp_path) -> None:
    big = images[0]
    exact = resize_pad(read_image(big), 96)
    draft = resize_pad(read_image_draft(big, 96), 96)
    signed = exact.astype(int) - draft.astype(int)
    # measured: mean |difference| 4.6 grey levels, median 2, no bias (0.09), on this image of
    # sharp edges at 1/8 DCT scale; benchmarks/perf/input_pipeline.py measures radiographs
    assert np.abs(signed).mean() < 8 and abs(signed.mean()) < 1
    # a PNG decodes exactly either way
    assert np.array_equal(read_image_draft(images[1], 96), read_image(images[1]))
    store = ImageStore.ensure(images, 96, cache_root=tmp_path / "cache", decoder="draft")
    assert store.decoder == "draft" and store.identity == {"decoder": "draft"}
    assert store.folder.name.endswith("-s96-draft")


def test_errors_name_what_is_wrong(images, tmp_path) -> None:
    with pytest.raises(CxrbenchError, match="unknown store decoder 'fast'"):
        ImageStore.ensure(images, 96, cache_root=tmp_path, decoder="fast")
    outside = tmp_path / "outside.png"
    cv2.imwrite(str(outside), _radiograph(30, 30, 1))
    with pytest.raises(CxrbenchError, match="not under the dataset folder"):
        ImageStore.ensure([outside], 96, root=images[0].parent, cache_root=tmp_path / "c")
    assert common_root(images) == images[0].parent.parent.resolve()
    from cxrbench.errors import DataFormatError

    # a missing source names the file, on a first build ...
    gone = images[0].parent / "gone.png"
    with pytest.raises(DataFormatError, match=r"gone\.png: expected an image file"):
        ImageStore.ensure([*images, gone], 96, cache_root=tmp_path / "m", workers=2)
    # ... and when a built store is checked against its sources
    ImageStore.ensure(images, 96, cache_root=tmp_path / "m")
    images[2].unlink()
    with pytest.raises(DataFormatError, match=r"small\.jpg: expected an image file"):
        ImageStore.ensure(images, 96, cache_root=tmp_path / "m")


def test_store_modes_in_configs_and_hashes() -> None:
    from cxrbench.runner.resolve import load_config, load_task

    off = load_config("convirt", "tiny")
    exact = load_config("convirt", "tiny", ["data.store=exact"])
    draft = load_config("convirt", "tiny", ["data.store=draft"])
    assert off.config_hash == exact.config_hash != draft.config_hash
    t_off = load_task("chexpert_cls", "tiny")
    t_exact = load_task("chexpert_cls", "tiny", ["image.store=exact"])
    t_draft = load_task("chexpert_cls", "tiny", ["image.store=draft"])
    assert t_off.config_hash == t_exact.config_hash != t_draft.config_hash
    with pytest.raises(ConfigError, match=r"data\.store.*off, exact, draft"):
        load_config("convirt", "tiny", ["data.store=fast"])
    with pytest.raises(ConfigError, match=r"image\.store"):
        load_task("chexpert_cls", "tiny", ["image.store=lossy"])


def test_yaml_booleans_are_store_modes() -> None:
    """A bare ``off`` / ``on`` in YAML is a boolean: it means off / exact."""
    from cxrbench.runner.resolve import load_config

    assert load_config("convirt", "tiny", ["data.store=off"]).cfg.data.store == "off"
    assert load_config("convirt", "tiny", ["data.store=on"]).cfg.data.store == "exact"
