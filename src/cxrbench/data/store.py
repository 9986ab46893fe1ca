"""Preprocessed image store: every image decoded once and kept resized, as uint8, memory-mapped.

A real MIMIC-CXR-JPG radiograph is ~2,500 × 3,000 pixels (1–2 MB of JPEG); decoding it at full
size and shrinking it on every epoch (MGCA's ``cv2.imread`` + resize per item, and our
``read_image`` + ``resize_pad``) costs far more CPU than the training step of a GPU. A store holds
each image already shrunk so its long side is the transforms' ``resize`` (``resize_long_side``,
the first half of ``resize_pad``), so ``resize_pad`` of a stored image only pads it and the
pixels a loader hands on are **bit-identical** to decoding the file (tested), with the default
``exact`` decoder. The ``draft`` decoder lets libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale in the
DCT domain (PIL's ``Image.draft``) before the same shrink: several times faster to build, and
its pixels differ (``docs/performance.md`` gives the measured difference); a run using it says
so in its config hash (``data.store`` / ``image.store``: ``draft``) and its feature-cache keys.

A store folder, ``<cache>/images/<dataset folder>-<hash of its path>-s<size>-<decoder>``, holds:

- ``images-<generation>.u8``: the images' bytes, one after the other (row-major ``h × w``);
- ``index-<generation>.npz``: per image its path relative to the dataset folder, byte offset,
  height, width and the source file's size and modification time;
- ``store.json`` (written last, atomically): format version, size, decoder, the hash of the code
  that decodes and resizes, and the current generation.

:meth:`ImageStore.ensure` reuses what is stored and decodes only images that are missing or whose
source file changed (size or modification time), writing a new generation with a progress bar;
a changed decoding or resizing code rebuilds everything. One process builds at a time (a lock
in the folder); readers of an older generation keep their open map. Loaders read with
:func:`read_resized`, which falls back to decoding the file for an image the store lacks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from cxrbench.data.codecs import read_image, read_image_draft
from cxrbench.data.transforms import resize_long_side
from cxrbench.errors import CxrbenchError, DataFormatError
from cxrbench.provenance import source_hash
from cxrbench.utils.io import atomic_write_text
from cxrbench.utils.lock import exclusive

log = logging.getLogger(__name__)

STORE_VERSION = 1
MANIFEST = "store.json"
DECODERS = ("exact", "draft")
#: the config values of ``data.store`` / ``image.store``: off, or the decoder of the store to use
STORE_MODES = ("off", *DECODERS)
DEFAULT_ROOT = Path("results") / "cache" / "images"
# the modules whose code decides a stored image's pixels
_CODE = ("data/codecs.py", "data/transforms.py", "data/store.py")


def code_hash() -> str:
    """sha256 of the source of the modules that decide a stored image's pixels."""
    return source_hash(_CODE)


def decode(path: Path, size: int, decoder: str = "exact") -> np.ndarray:
    """One image as a store keeps it: decoded (``draft``: at a reduced JPEG scale first) and its
    long side resized to ``size``."""
    if decoder == "draft":
        return resize_long_side(read_image_draft(path, size), size)
    return resize_long_side(read_image(path), size)


def _decode_many(args: tuple[list[str], int, str]) -> list[np.ndarray]:
    paths, size, decoder = args
    return [decode(Path(p), size, decoder) for p in paths]


def _stamp(path: Path) -> tuple[int, int]:
    """(size, mtime) of a source image; a missing one is a :class:`DataFormatError` naming it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DataFormatError(path, "an image file", "no such file") from None
    return st.st_size, st.st_mtime_ns


class ImageStore:
    """A store folder, opened for reading; build or update one with :meth:`ensure`."""

    def __init__(self, folder: Path, root: Path) -> None:
        self.folder, self.root = Path(folder), Path(root).resolve()
        self._load_manifest()
        self._rows: dict[str, int] | None = None
        self._index: dict[str, np.ndarray] | None = None
        self._data: np.ndarray | None = None
        self._open()  # now: a later generation may delete this one's files (an open map stays)

    def _load_manifest(self) -> None:
        manifest = json.loads((self.folder / MANIFEST).read_text())
        self.size, self.decoder = int(manifest["size"]), str(manifest["decoder"])
        self.generation = int(manifest["generation"])
        self.count = int(manifest["count"])

    # ---------------------------------------------------------------- reading
    def _open(self) -> None:
        if not (self.folder / f"index-{self.generation}.npz").is_file():
            self._load_manifest()  # a worker reopening after an update: the current generation
        with np.load(self.folder / f"index-{self.generation}.npz") as index:
            self._index = {k: index[k] for k in index.files}
        self._rows = {str(p): i for i, p in enumerate(self._index["path"])}
        data = self.folder / f"images-{self.generation}.u8"
        self._data = (
            np.memmap(data, dtype=np.uint8, mode="r")
            if data.stat().st_size
            else np.zeros(0, np.uint8)
        )

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers reopen the map themselves
        return {**self.__dict__, "_rows": None, "_index": None, "_data": None}

    def _relative(self, path: str | Path) -> str:
        p = Path(path)
        try:
            return p.resolve().relative_to(self.root).as_posix()
        except ValueError:
            return ""

    def read(self, path: str | Path) -> np.ndarray | None:
        """The stored image of ``path`` (a writable copy, long side :attr:`size`), or None."""
        if self._rows is None:
            self._open()
        assert self._rows is not None and self._index is not None and self._data is not None
        row = self._rows.get(self._relative(path))
        if row is None:
            return None
        start = int(self._index["offset"][row])
        h, w = int(self._index["height"][row]), int(self._index["width"][row])
        return np.array(self._data[start : start + h * w]).reshape(h, w)

    def __len__(self) -> int:
        return self.count

    @property
    def identity(self) -> dict[str, Any]:
        """What a feature-cache key records of the store: its decoder (``exact`` pixels are the
        decoded file's, so only ``draft`` changes a key)."""
        return {"decoder": self.decoder} if self.decoder != "exact" else {}

    # ---------------------------------------------------------------- building
    @classmethod
    def folder_for(cls, root: Path, size: int, decoder: str, cache_root: Path) -> Path:
        root = Path(root).resolve()
        tag = hashlib.sha256(str(root).encode()).hexdigest()[:10]
        return Path(cache_root) / f"{root.name}-{tag}-s{size}-{decoder}"

    @classmethod
    def ensure(
        cls,
        paths: Sequence[Path],
        size: int,
        *,
        root: Path | None = None,
        cache_root: Path = DEFAULT_ROOT,
        decoder: str = "exact",
        progress: bool = False,
        workers: int | None = None,
    ) -> ImageStore:
        """The store of ``paths`` (image files under the folder ``root``, by default their
        :func:`common_root`) at long side ``size``: built on first use, updated when images
        are missing or their files changed."""
        if decoder not in DECODERS:
            raise CxrbenchError(f"unknown store decoder {decoder!r}; known: {', '.join(DECODERS)}")
        if size < 1:
            raise CxrbenchError(f"a store's size must be >= 1 pixel, got {size}")
        root = Path(root).resolve() if root is not None else common_root(paths)
        folder = cls.folder_for(root, size, decoder, cache_root)
        wanted = sorted({_relative_to(Path(p), root) for p in paths})
        with exclusive(folder, what="image store"):
            current = cls._current(folder, root, size, decoder)
            todo, keep = cls._plan(current, wanted, root)
            if current is not None and not todo:
                return current
            cls._write(folder, root, size, decoder, current, keep, todo, progress, workers)
        return cls(folder, root)

    @classmethod
    def _current(cls, folder: Path, root: Path, size: int, decoder: str) -> ImageStore | None:
        path = folder / MANIFEST
        if not path.is_file():
            return None
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            log.warning("%s does not load (%s): rebuilding the image store", path, err)
            return None
        expected = {"version": STORE_VERSION, "size": size, "decoder": decoder,
                    "code": code_hash()}  # fmt: skip
        changed = [k for k, v in expected.items() if manifest.get(k) != v]
        if changed:
            log.info("image store %s: %s changed; rebuilding it", folder, ", ".join(changed))
            return None
        return cls(folder, root)

    @staticmethod
    def _plan(
        current: ImageStore | None, wanted: list[str], root: Path
    ) -> tuple[list[str], list[int]]:
        """(images to decode, rows of the current store to keep)."""
        if current is None:
            return wanted, []
        assert current._rows is not None and current._index is not None
        index = current._index
        todo = []
        for rel in wanted:
            row = current._rows.get(rel)
            stamp = _stamp(root / rel)
            if row is None or (int(index["src_size"][row]), int(index["src_mtime"][row])) != stamp:
                todo.append(rel)
        redo = set(todo)
        keep = [i for i, rel in enumerate(index["path"]) if str(rel) not in redo]
        return todo, keep

    @classmethod
    def _write(
        cls,
        folder: Path,
        root: Path,
        size: int,
        decoder: str,
        current: ImageStore | None,
        keep: list[int],
        todo: list[str],
        progress: bool,
        workers: int | None,
    ) -> None:
        from cxrbench.log import progress_bar

        generation = current.generation + 1 if current is not None else 1
        data_path = folder / f"images-{generation}.u8"
        paths, offsets, heights, widths, sizes, mtimes = [], [], [], [], [], []
        offset = 0
        with data_path.open("wb") as out:

            def add(rel: str, image: np.ndarray, stamp: tuple[int, int]) -> None:
                nonlocal offset
                out.write(np.ascontiguousarray(image, dtype=np.uint8).tobytes())
                paths.append(rel)
                offsets.append(offset)
                heights.append(image.shape[0])
                widths.append(image.shape[1])
                sizes.append(stamp[0])
                mtimes.append(stamp[1])
                offset += image.size

            if current is not None and keep:
                assert current._index is not None
                for row in keep:
                    rel = str(current._index["path"][row])
                    stamp = (int(current._index["src_size"][row]),
                             int(current._index["src_mtime"][row]))  # fmt: skip
                    image = current.read(root / rel)
                    assert image is not None
                    add(rel, image, stamp)
            with progress_bar(progress) as bar:
                task = bar.add_task(f"image store {folder.name}", total=len(todo)) if bar else None
                for rel, image in _decoded(todo, root, size, decoder, workers):
                    add(rel, image, _stamp(root / rel))
                    if bar is not None:
                        bar.advance(task)
            out.flush()
            os.fsync(out.fileno())
        index_path = folder / f"index-{generation}.npz"
        tmp = index_path.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            path=np.asarray(paths, dtype=str),
            offset=np.asarray(offsets, dtype=np.int64),
            height=np.asarray(heights, dtype=np.int32),
            width=np.asarray(widths, dtype=np.int32),
            src_size=np.asarray(sizes, dtype=np.int64),
            src_mtime=np.asarray(mtimes, dtype=np.int64),
        )
        os.replace(tmp, index_path)
        manifest = {
            "version": STORE_VERSION,
            "size": size,
            "decoder": decoder,
            "transform": "long side resized to size (cv2 INTER_AREA shrinking, INTER_LINEAR "
            "growing): transforms.resize_long_side, the first half of resize_pad",
            "code": code_hash(),
            "generation": generation,
            "count": len(paths),
            "bytes": offset,
            "root": str(root),
        }
        atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1) + "\n")
        for old in folder.glob("*-*.u8"):  # earlier generations: open maps keep their inode
            if old.name != data_path.name:
                old.unlink(missing_ok=True)
        for old in folder.glob("index-*.npz"):
            if old.name != index_path.name:
                old.unlink(missing_ok=True)
        log.info("image store %s: %d images (%d decoded), %.1f MiB", folder, len(paths),
                 len(todo), offset / 2**20)  # fmt: skip


def _decoded(
    todo: list[str], root: Path, size: int, decoder: str, workers: int | None
) -> Iterator[tuple[str, np.ndarray]]:
    """(relative path, stored image) in ``todo``'s order, decoded by ``workers`` processes
    (default: every core) in chunks."""
    n = workers if workers is not None else (os.cpu_count() or 1)
    chunk = 32
    chunks = [todo[i : i + chunk] for i in range(0, len(todo), chunk)]
    jobs = [([str(root / rel) for rel in part], size, decoder) for part in chunks]
    if n <= 1 or len(chunks) <= 1:
        results: Iterator[list[np.ndarray]] = map(_decode_many, jobs)
        for part, images in zip(chunks, results, strict=True):
            yield from zip(part, images, strict=True)
        return
    import multiprocessing

    # spawned, not forked: a fork of a process whose torch / OpenMP threads are running can hang
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=n, mp_context=spawn, initializer=_worker_init) as pool:
        for part, images in zip(chunks, pool.map(_decode_many, jobs), strict=True):
            yield from zip(part, images, strict=True)


def _worker_init() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core decodes; OpenCV's own threads would contend


def _relative_to(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        raise CxrbenchError(
            f"{path}: not under the dataset folder {root}; an image store holds the images of "
            "one dataset folder"
        ) from None


def common_root(paths: Sequence[str | Path]) -> Path:
    """The deepest folder holding every image of ``paths``: the store's root for a set of a
    dataset's images (the same for pre-training, tasks and ``cxrbench data cache``)."""
    if not paths:
        raise CxrbenchError("an image store needs at least one image")
    return Path(os.path.commonpath([str(Path(p).resolve().parent) for p in paths]))


def dataset_images(dataset: str, folder: Path) -> list[Path]:
    """The images an image store of ``dataset`` holds: for MIMIC-CXR the pre-training pairs'
    (frontal, with a report; train and val), otherwise every image of the official listing."""
    if dataset == "mimic":
        from cxrbench.data.pretrain import TRAIN_SPLITS, load_pairs

        return [p.image_path for split in TRAIN_SPLITS for p in load_pairs(folder, split)]
    from cxrbench.data import formats

    return [Path(r.image_path) for r in formats.get_reader(dataset).read(folder).images]


def read_resized(path: str | Path, resize: int, store: ImageStore | None) -> np.ndarray:
    """The image ``resize_pad(·, resize)`` is applied to: the store's copy when ``store`` holds
    it at that size (pixels identical to decoding with the ``exact`` decoder), else the decoded
    file."""
    if store is not None and store.size == resize:
        image = store.read(path)
        if image is not None:
            return image
    return read_image(path)
