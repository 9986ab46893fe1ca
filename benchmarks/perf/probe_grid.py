"""The linear-probe grid (3 fractions × 3 seeds) against one feature-extraction pass.

Runs the grid on one encoder artifact three times: with the frozen-feature cache and the probe's
tensor loop (the default: features extracted once, then 9 probes trained in a plain loop,
``systems/classification.fit_probe``), with the cache and the Lightning Trainer
(``trainer.loop=lightning``: the same numbers, tested), and without the cache (every run
extracts its own features, as a pipeline with no cache does, with the tensor loop). Each grid
starts from an empty cache and includes everything a run does (encoder and split loading, the
record and predictions). Prints wall times, each divided by one feature-extraction pass, the
speed-ups, and peak memory, ending in ``ratio ...`` lines. Timings are measured here, never
asserted in tests.

    .venv/bin/python benchmarks/perf/probe_grid.py --task chexpert_cls --preset small
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import torch

from cxrbench.data.features import FeatureCache
from cxrbench.models.artifact import _LOADED
from cxrbench.runner.bench import suite_data_root
from cxrbench.runner.pretrain import run_pretrain
from cxrbench.runner.resolve import load_config, load_task
from cxrbench.runner.transfer import run_transfer
from cxrbench.suite import Suite
from cxrbench.tasks.base import _DATA_KEPT


def grid(jobs, artifact: Path, data_root: Path, work: Path, cached: bool) -> float:
    """Seconds for the 9 runs; ``jobs``: the task loaded at each fraction."""
    seeds = (42, 0, 1)
    _DATA_KEPT.clear()  # every grid starts cold: its runs read the split CSVs and the encoder
    _LOADED.clear()
    shared = FeatureCache(work / "cache")
    start = time.perf_counter()
    for f, job in jobs.items():
        for s in seeds:
            cache = shared if cached else FeatureCache(work / f"cache-{f}-{s}")
            run_transfer(job, artifact, data_root, fraction=f, seed=s,
                         run_dir=work / "runs" / f"f{f}" / f"s{s}", cache=cache)  # fmt: skip
    shutil.rmtree(work)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="rsna_cls")
    parser.add_argument("--preset", default="tiny", choices=("tiny", "small"))
    args = parser.parse_args()
    data_root = suite_data_root(Suite(preset=args.preset), progress=False)
    work = Path(tempfile.mkdtemp(prefix="probe-grid-"))
    try:
        pre = load_config("random_init", args.preset, ["trainer.progress=false"])
        artifact = run_pretrain(pre, data_root, work / "encoder")
        sets = ["trainer.progress=false"]
        fractions = (0.1, 0.5, 1.0)
        loop = {f: load_task(args.task, args.preset, sets, f) for f in fractions}
        trainer = {f: load_task(args.task, args.preset, [*sets, "trainer.loop=lightning"], f)
                   for f in fractions}  # fmt: skip
        job = loop[1.0]
        data = job.task.data(data_root, 1.0)
        from cxrbench.data.features import extract_features
        from cxrbench.models.artifact import load_encoder

        encoder, _ = load_encoder(artifact)
        start = time.perf_counter()
        for items in (data.train_all, data.val, data.test):
            extract_features(encoder, items.paths, job.cfg.image.resize, job.cfg.image.crop)
        one_pass = time.perf_counter() - start
        with_cache = grid(loop, artifact, data_root, work / "loop", cached=True)
        with_trainer = grid(trainer, artifact, data_root, work / "trainer", cached=True)
        without = grid(loop, artifact, data_root, work / "uncached", cached=False)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        sizes = f"{len(data.train_all.ids)} / {len(data.val.ids)} / {len(data.test.ids)}"
        threads = torch.get_num_threads()
        print(f"task {args.task}, preset {args.preset}: 3 fractions x 3 seeds = 9 probe runs; "
              f"train / val / test images {sizes}; torch threads {threads}")  # fmt: skip
        rows = [
            ("one feature-extraction pass", one_pass),
            ("grid: cache + tensor loop (default)", with_cache),
            ("grid: cache + Lightning Trainer", with_trainer),
            ("grid: no cache, tensor loop", without),
        ]
        for name, seconds in rows:
            print(f"{name:<38} {seconds:8.1f} s  ({seconds / one_pass:5.2f} x one pass)")
        print(f"peak resident memory                   {peak:8.0f} MiB")
        print(f"ratio grid_vs_one_pass {with_cache / one_pass:.2f}")
        print(f"ratio trainer_grid_vs_loop_grid {with_trainer / with_cache:.2f}")
        print(f"ratio uncached_grid_vs_cached_grid {without / with_cache:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
