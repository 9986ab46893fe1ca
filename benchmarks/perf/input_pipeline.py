"""The pre-training input pipeline at real MIMIC-CXR-JPG image size: decoding vs the image store.

A real MIMIC-CXR-JPG radiograph is ~2,500 × 3,000 pixels and 1–2 MB of JPEG; pre-training uses it
at ``data.resize`` (256, cropped to 224). This script measures what it costs a loader to turn
such a file into ``resize_pad(image, resize)``, the image the rest of the MGCA chain (crop,
tensor, normalise: the same for every path, printed apart) starts from.

Images: ``--images`` SynthCXR radiographs (MIMIC's finding prevalences and site mix, seeded by
``--seed`` and the image's index, so the files are the same on every run) with long side
``--size-px`` and MIMIC's portrait aspect (width = 2544 / 3056 of the height). Rendering at
2,500 px takes ~1.5 s an image, so each is rendered at a long side of 512 px (the renderer's
grain and lung texture included), upscaled with ``cv2.INTER_CUBIC`` and given a film grain of
std 2 grey levels at full size, then written as grayscale JPEG quality 95 with
``cxrbench.synth.files.write_jpeg`` (about 1.4 MB at the default size; the mean is printed).
The files are freshly written, so they are in the page cache for every path: the timings are
decoding and resizing, not disk reads.

Paths (each ends in ``resize_pad(·, --resize)``):

* ``full_decode``: ``read_image`` (Pillow, full size) — what MGCA does per item, and cxrbench
  without a store;
* ``draft_decode``: ``read_image_draft(path, resize)`` (libjpeg's DCT-domain 1/2–1/8 scaling);
* ``decode_jpeg``: ``torchvision.io.decode_jpeg(read_file(path), mode=GRAY)`` (torchvision's
  libjpeg-turbo), skipped with the reason when it fails;
* ``store``: ``ImageStore.read(path)`` from an ``exact`` store built beforehand (its build time,
  with ``--workers`` processes, and its size on disk are printed, and the ``draft`` store's
  build time too).

Per core: this process with ``cv2.setNumThreads(1)`` and ``torch.set_num_threads(1)``, a plain
loop over all images; two passes over all paths in turn (so drift from other work hits every
path), the faster pass of each path counts; a path whose first pass took under 0.5 s (the store)
goes over the images as many times as makes its second pass last 0.5 s. All cores: a
``torch.utils.data.DataLoader`` with ``--workers`` spawned workers of one OpenCV and one torch
thread each (this process's own thread counts restored), yielding uint8 batches (of images ÷
(4 × workers), at most 32) to this process, as the pre-training loader does (collate and the
transfer included); an untimed pass over a few batches (worker start-up), then the faster of
two timed passes over the images (the store's: over them as many times as makes a pass last
0.5 s, so that it is not mostly its start and end). Images/s is images over that pass's wall
time.

Pixel differences vs ``full_decode``, on the whole ``resize × resize`` images (the zero padding
included, printed as a share): mean and max |diff| in grey levels and the share of pixels that
differ. The ``exact`` store must be 0 (the store's promise; printed, not asserted). Printed: the
machine (cores, CPU model, torch and OpenCV threads, library versions), a table, peak resident
memory, and ``ratio <path>_vs_full_decode X.X`` lines (images/s ÷ full decode's, per core and
``_all_cores``). Target: the store ≥ 20× full decode per core. Timings are measured here, never
asserted; run it on an otherwise idle machine.

    .venv/bin/python benchmarks/perf/input_pipeline.py                        # 200 images, 2,500 px
    .venv/bin/python benchmarks/perf/input_pipeline.py --images 20 --size-px 1200   # smoke run
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cxrbench.data.codecs import read_image, read_image_draft
from cxrbench.data.store import ImageStore
from cxrbench.data.transforms import mgca_image, resize_pad
from cxrbench.synth.cases import sample_findings, site
from cxrbench.synth.files import write_jpeg
from cxrbench.synth.presets import Difficulty
from cxrbench.synth.render import ImageSpec, render

ASPECT = 2544 / 3056  # width / height of a MIMIC-CXR-JPG PA radiograph
NATIVE = 512  # long side the renderer draws at before the upscale
GRAIN = 2.0  # std (grey levels) of the full-size film grain added after the upscale
CROP = 224  # the paper preset's data.crop
PASSES = 2
MIN_PASS_S = 0.5  # per core, a shorter pass is repeated over the images in the next
Loader = Callable[[Path, int, Any], np.ndarray]


# ------------------------------------------------------------------------------------- images
def make_images(folder: Path, n: int, size_px: int, seed: int) -> list[Path]:
    """``n`` SynthCXR radiographs of long side ``size_px`` as JPEG quality 95 (deterministic)."""
    d = Difficulty()
    h, w = size_px, max(8, round(size_px * ASPECT))
    nh = min(NATIVE, size_px)
    nw = max(8, round(nh * ASPECT))
    paths = []
    for i in range(n):
        rng = np.random.default_rng(np.random.SeedSequence([seed, i]))
        findings = sample_findings("mimic", rng, d)
        small = render(ImageSpec(nh, nw, findings, site("mimic", rng)), rng, d).pixels
        big = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) if nh != h else small
        grain = rng.standard_normal((h, w), dtype=np.float32) * GRAIN
        pixels = np.clip(big.astype(np.float32) + grain + 0.5, 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.jpg"
        write_jpeg(path, pixels, quality=95)
        paths.append(path)
    return paths


# -------------------------------------------------------------------------------------- paths
def _full(path: Path, resize: int, store: Any) -> np.ndarray:
    return read_image(path)


def _draft(path: Path, resize: int, store: Any) -> np.ndarray:
    return read_image_draft(path, resize)


def _torchvision(path: Path, resize: int, store: Any) -> np.ndarray:
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    return decode_jpeg(read_file(str(path)), mode=ImageReadMode.GRAY)[0].numpy()


def _store(path: Path, resize: int, store: Any) -> np.ndarray:
    image = store.read(path)
    if image is None:
        raise RuntimeError(f"{path} is not in the image store")
    return image


LOADERS: dict[str, Loader] = {
    "full_decode": _full,
    "draft_decode": _draft,
    "decode_jpeg": _torchvision,
    "store": _store,
}


class Images(Dataset):
    """``resize_pad`` of each image, produced by one of :data:`LOADERS`."""

    def __init__(self, way: str, paths: list[Path], resize: int, store: Any) -> None:
        self.way, self.paths, self.resize, self.store = way, paths, resize, store

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return resize_pad(LOADERS[self.way](self.paths[i], self.resize, self.store), self.resize)


class Cycle(Sampler):
    """The images in order, over and over, :attr:`count` in all (changed between passes: the
    loader draws a new iterator from this process's sampler at each pass)."""

    def __init__(self, n: int) -> None:
        self.n, self.count = n, n

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[int]:
        return (i % self.n for i in range(self.count))


def _one_thread(worker_id: int) -> None:
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def per_core(
    ways: list[str], paths: list[Path], resize: int, store: Any
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Images/s of each path in this process (best of :data:`PASSES` passes, the paths taking
    turns; a pass shorter than :data:`MIN_PASS_S` goes over the images more times in the next)
    and its ``resize_pad`` images."""
    best = dict.fromkeys(ways, 0.0)
    repeat = dict.fromkeys(ways, 1)
    out = {w: np.empty((len(paths), resize, resize), np.uint8) for w in ways}
    for _ in range(PASSES):
        for way in ways:
            load, images = LOADERS[way], out[way]
            start = time.perf_counter()
            for _ in range(repeat[way]):
                for k, path in enumerate(paths):
                    images[k] = resize_pad(load(path, resize, store), resize)
            seconds = time.perf_counter() - start
            best[way] = max(best[way], len(paths) * repeat[way] / seconds)
            repeat[way] = max(repeat[way], math.ceil(MIN_PASS_S / seconds * repeat[way]))
    return best, out


def loader_batch(images: int, workers: int) -> int:
    """The all-core loader's batch size: four batches per worker a pass, at most 32 images."""
    return max(1, min(32, images // (4 * max(1, workers))))


def all_cores(way: str, paths: list[Path], resize: int, store: Any, workers: int) -> float:
    """Images/s of a DataLoader with ``workers`` spawned workers: an untimed pass over a few
    batches (worker start-up), then the best of :data:`PASSES` timed passes, each over the
    images as many times as makes it last :data:`MIN_PASS_S` (judged by a first timed pass)."""
    n = len(paths)
    batch = loader_batch(n, workers)
    sampler = Cycle(n)
    loader = DataLoader(
        Images(way, paths, resize, store),
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        multiprocessing_context="spawn" if workers > 0 else None,
        persistent_workers=workers > 0,
        worker_init_fn=_one_thread if workers > 0 else None,
    )

    def rate(count: int) -> tuple[float, float]:
        sampler.count = count
        start = time.perf_counter()
        drawn = sum(len(b) for b in loader)
        seconds = time.perf_counter() - start
        assert drawn == count
        return count / seconds, seconds

    rate(min(n, 2 * batch * max(1, workers)))
    first, seconds = rate(n)
    count = max(n, math.ceil(n * MIN_PASS_S / seconds))
    rates = [first] if count == n else []
    while len(rates) < PASSES:
        rates.append(rate(count)[0])
    return max(rates)  # the loader and its workers go with this frame


def differences(images: np.ndarray, reference: np.ndarray) -> tuple[float, int, float]:
    """Mean |diff|, max |diff| (grey levels) and the share of pixels that differ."""
    diff = np.abs(images.astype(np.int16) - reference.astype(np.int16))
    return float(diff.mean()), int(diff.max()), float((diff > 0).mean())


# ------------------------------------------------------------------------------------ machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def versions() -> str:
    import PIL
    from PIL import features

    turbo = features.version("libjpeg_turbo") if features.check_feature("libjpeg_turbo") else None
    try:
        import torchvision

        tv = torchvision.__version__
    except ImportError:
        tv = "not installed"
    return (f"Pillow {PIL.__version__} (libjpeg-turbo {turbo or 'no'}), OpenCV {cv2.__version__},"
            f" torch {torch.__version__}, torchvision {tv}")  # fmt: skip


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size-px", type=int, default=2500, help="long side of the images")
    parser.add_argument("--resize", type=int, default=256, help="data.resize of the preset")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch_threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    work = Path(tempfile.mkdtemp(prefix="input-pipeline-"))
    try:
        start = time.perf_counter()
        paths = make_images(work / "images", args.images, args.size_px, args.seed)
        made = time.perf_counter() - start
        h, w = read_image(paths[0]).shape
        mean_mb = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
        print(f"machine: {os.cpu_count()} cores ({cpu_model()}); torch threads {torch_threads}, "
              f"OpenCV threads {cv2_threads}")  # fmt: skip
        print(versions())
        print(f"images: {len(paths)} SynthCXR radiographs {h} x {w} (rendered at {NATIVE} px, "
              f"cubic upscale, grain std {GRAIN}), JPEG q95, mean {mean_mb:.2f} MB, written in "
              f"{made:.1f} s (in the page cache for every path); seed {args.seed}")  # fmt: skip
        print(f"transform: resize_pad to {args.resize} (crop {CROP} later)")

        stores: dict[str, Any] = {}
        for decoder in ("exact", "draft"):
            start = time.perf_counter()
            stores[decoder] = ImageStore.ensure(paths, args.resize, cache_root=work / "store",
                                                decoder=decoder, workers=args.workers)  # fmt: skip
            seconds = time.perf_counter() - start
            size = folder_bytes(stores[decoder].folder) / 2**20
            print(f"store build ({decoder}, {args.workers} workers): {seconds:.1f} s "
                  f"({len(paths) / seconds:.1f} images/s), {size:.1f} MiB on disk")  # fmt: skip
        store = stores["exact"]

        ways = list(LOADERS)
        skipped: dict[str, str] = {}
        try:
            _torchvision(paths[0], args.resize, None)
        except Exception as err:  # torchvision missing, or built without its JPEG decoder
            skipped["decode_jpeg"] = f"{type(err).__name__}: {err}"
            ways.remove("decode_jpeg")
            print(f"decode_jpeg skipped: {skipped['decode_jpeg']}")

        cv2.setNumThreads(1)
        torch.set_num_threads(1)
        single, images = per_core(ways, paths, args.resize, store)
        sample = images["store"][0]
        start = time.perf_counter()
        for _ in range(200):
            mgca_image(sample, args.resize, CROP, train=True)
        rest_us = (time.perf_counter() - start) / 200 * 1e6
        cv2.setNumThreads(cv2_threads)
        torch.set_num_threads(torch_threads)

        multi = {way: all_cores(way, paths, args.resize, store, args.workers) for way in ways}

        full = images["full_decode"]
        diffs = {w: differences(images[w], full) for w in ways}
        padding = float((full == 0).all(axis=0).mean())
        print()
        batch = loader_batch(len(paths), args.workers)
        print(f"per core: 1 process, 1 OpenCV / torch thread, best of {PASSES} passes (of at "
              f"least {MIN_PASS_S} s for the store); all cores: DataLoader, {args.workers} "
              f"spawned workers (1 thread each), batches of {batch}, best of {PASSES} passes "
              "after a warm-up")  # fmt: skip
        head = ("path", "img/s per core", "img/s all cores", "mean |diff|", "max |diff|", "differ")
        print(f"{head[0]:<14} {head[1]:>15} {head[2]:>16} {head[3]:>12} {head[4]:>11} "
              f"{head[5]:>8}")  # fmt: skip
        for way in ways:
            mean, top, share = diffs[way]
            print(f"{way:<14} {single[way]:>15.1f} {multi[way]:>16.1f} {mean:>12.3f} {top:>11d} "
                  f"{share:>7.1%}")  # fmt: skip
        for way, reason in skipped.items():
            print(f"{way:<14} skipped ({reason})")
        print(f"differences: over all {args.resize} x {args.resize} pixels of every image; "
              f"{padding:.1%} of them are zero padding in every image")  # fmt: skip
        identical = diffs["store"][1] == 0
        print(f"store (exact) pixels identical to full decode: {'yes' if identical else 'NO'}")
        print(f"rest of the MGCA chain (crop {CROP}, tensor, normalise) per image, per core: "
              f"{rest_us:.0f} us ({1e6 / rest_us:.0f} images/s), not in the table")  # fmt: skip
        met = single["store"] >= 20 * single["full_decode"]
        print(f"target store >= 20x full decode per core: {'met' if met else 'NOT met'}")
        named = {"store": "store", "draft_decode": "draft", "decode_jpeg": "decode_jpeg"}
        for suffix, rate in (("", single), ("_all_cores", multi)):
            for way, name in named.items():
                if way in ways:
                    ratio = rate[way] / rate["full_decode"]
                    print(f"ratio {name}_vs_full_decode{suffix} {ratio:.1f}")
        main_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        child_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"peak RSS {main_mib:.0f} MiB (largest worker {child_mib:.0f} MiB)")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
