"""Frozen-map cache of the dense tasks: an epoch with and without it, and what a grid costs.

For each dense task (``siim_seg``, ``rsna_seg``, ``rsna_det``, ``objectcxr_det`` by default) at a
preset's shapes (``small``: the narrow ResNet-18 at 96 px, the preset's decoder / YOLO widths) and
a label fraction, the script prepares the task's system twice on one encoder, with
``train.map_cache_gib=0`` (images are read, decoded, resized and encoded every epoch: the path
before the cache) and with the cache (``systems/frozen_maps.py``: the encoder runs once over the
run's images), and times, in this one process:

* ``encoder pass``: building the cached parts (every train, val and test image read and encoded
  once); this is what a cached run pays up front;
* one training epoch plus one validation epoch of each variant (the same steps: the decoder /
  head is trained by the same optimiser on the same order), alternating the variants over
  ``--repeats`` rounds in alternating order so load from other work hits both alike; the median
  round is reported.

It prints per task ``ratio cached_vs_uncached_epoch X`` (uncached epoch time / cached, > 1:
the cache is faster), ``ratio run_uncached_vs_cached X`` for a run of ``--epochs`` epochs (the
cached run including its encoder pass), ``ratio grid_vs_encoder_pass X`` (a 3-seed cell of cached
runs against the one encoder pass a disk cache shared by the seeds would save per run: how much a
persistent cache could add), and the process's peak resident memory and the cache's bytes.

The encoder has random weights (timings do not depend on them). Data: ``--root`` (default
``datasets/synth-small``, generated with ``make data`` if missing).

    .venv/bin/python benchmarks/perf/dense_cache.py [--root datasets/synth-small]
        [--preset small] [--fraction 0.1] [--task siim_seg ...] [--epochs 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from _dense import TASKS, parser, peak_mib, preset_encoder, start

from cxrbench.data.features import FeatureCache
from cxrbench.runner.resolve import load_task
from cxrbench.systems import SYSTEMS
from cxrbench.systems.frozen_maps import MapRows


def epoch(prepared: Any, optimiser: torch.optim.Optimizer) -> float:
    """Seconds of one training epoch (forward, loss, backward, step) and one validation epoch."""
    system = prepared.system
    start = time.perf_counter()
    system.train()
    for i, batch in enumerate(prepared.train):
        optimiser.zero_grad()
        loss = system.training_step(batch, i)
        loss.backward()
        optimiser.step()
    system.eval()
    with torch.no_grad():
        system.on_validation_epoch_start()
        for i, batch in enumerate(prepared.val):
            system.validation_step(batch, i)
    return time.perf_counter() - start


def cache_bytes(prepared: Any) -> int:
    """Bytes of the maps held by the cached loaders' datasets."""
    total = 0
    for loader in (prepared.train, prepared.val, prepared.test):
        rows = loader.dataset
        rows = getattr(rows, "items", rows)  # the training loader wraps its dataset (SeededItems)
        if isinstance(rows, MapRows):
            total += sum(m.numel() * m.element_size() for m in rows.maps)
    return total


def measure(task_name: str, args: argparse.Namespace) -> dict[str, float]:
    job = load_task(task_name, args.preset, fraction=args.fraction)
    data = job.task.data(args.root, args.fraction)
    encoder, meta = preset_encoder(job, args.preset)
    system_cls = SYSTEMS.get(job.task.kind)
    unused = FeatureCache(Path("/nonexistent"))  # the dense systems do not use it
    prepared = {}
    job.cfg.train.workers = 0  # both variants read in this process: the same work is timed
    job.cfg.train.map_cache_gib = 0
    L.seed_everything(0, verbose=False)
    prepared["uncached"] = system_cls.prepare(job.task, job.cfg, data, encoder, meta, unused)
    job.cfg.train.map_cache_gib = 64.0
    L.seed_everything(0, verbose=False)
    start = time.perf_counter()
    prepared["cached"] = system_cls.prepare(job.task, job.cfg, data, encoder, meta, unused)
    encoder_pass = time.perf_counter() - start
    if prepared["cached"].probe_mode != "cached":
        mode = prepared["cached"].probe_mode
        raise SystemExit(f"{task_name}: the cached variant did not cache (probe mode {mode})")
    optimisers = {k: p.system.configure_optimizers() for k, p in prepared.items()}
    times: dict[str, list[float]] = {"uncached": [], "cached": []}
    for r in range(args.repeats):
        order = ("uncached", "cached") if r % 2 == 0 else ("cached", "uncached")
        for name in order:
            times[name].append(epoch(prepared[name], optimisers[name]))
    uncached, cached = (statistics.median(times[k]) for k in ("uncached", "cached"))
    run_uncached = args.epochs * uncached
    run_cached = encoder_pass + args.epochs * cached
    return {
        "train images": len(data.train.ids),
        "val images": len(data.val.ids),
        "test images": len(data.test.ids),
        "encoder pass s": encoder_pass,
        "uncached epoch s": uncached,
        "cached epoch s": cached,
        "cache MiB": cache_bytes(prepared["cached"]) / 2**20,
        "cached_vs_uncached_epoch": uncached / cached,
        "run_uncached_vs_cached": run_uncached / run_cached,
        "grid_vs_encoder_pass": 3 * run_cached / encoder_pass,
    }


def main() -> None:
    args = parser(__doc__, epochs=20).parse_args()
    start(args)
    for name in args.task or TASKS:
        result = measure(name, args)
        print(f"\n{name}:")
        for key, value in result.items():
            if key.endswith(("_epoch", "_cached", "_pass")):
                print(f"ratio {key} {value:.2f}")
            elif isinstance(value, float):
                print(f"  {key}: {value:.2f}")
            else:
                print(f"  {key}: {value}")
    print(f"\npeak resident memory: {peak_mib():.0f} MiB")


if __name__ == "__main__":
    main()
