"""Frozen-feature cache: what a 3 fractions × 3 seeds linear-probe grid costs with and without it.

Runs the grid on one encoder artifact twice — with the cache (features extracted once, then
reused by all 9 runs) and without it (every run extracts its own features, what a pipeline with
no cache does) — and prints wall times, the cached grid divided by one feature-extraction pass,
the speed-up, and peak memory. Timings are measured here, never asserted in tests.

    .venv/bin/python benchmarks/perf/probe_grid.py --task rsna_cls --preset tiny
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

from cxrbench.data.features import FeatureCache
from cxrbench.runner.bench import data_root_for
from cxrbench.runner.pretrain import run_pretrain
from cxrbench.runner.resolve import load_config, load_task
from cxrbench.runner.transfer import run_transfer
from cxrbench.suite import Suite


def grid(job, artifact: Path, data_root: Path, work: Path, cached: bool) -> float:
    fractions, seeds = (0.1, 0.5, 1.0), (42, 0, 1)
    shared = FeatureCache(work / "cache")
    start = time.perf_counter()
    for f in fractions:
        for s in seeds:
            cache = shared if cached else FeatureCache(work / f"cache-{f}-{s}")
            run_transfer(
                job,
                artifact,
                data_root,
                fraction=f,
                seed=s,
                run_dir=work / ("c" if cached else "u") / f"f{f}" / f"s{s}",
                cache=cache,
            )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="rsna_cls")
    parser.add_argument("--preset", default="tiny", choices=("tiny", "small"))
    args = parser.parse_args()
    data_root = data_root_for(Suite(preset=args.preset), progress=False)
    work = Path(tempfile.mkdtemp(prefix="probe-grid-"))
    try:
        pre = load_config("random_init", args.preset, ["trainer.progress=false"])
        artifact = run_pretrain(pre, data_root, work / "encoder")
        job = load_task(args.task, args.preset, ["trainer.progress=false"])
        data = job.task.data(data_root, 1.0)
        from cxrbench.data.features import extract_features
        from cxrbench.models.artifact import load_encoder

        encoder, _ = load_encoder(artifact)
        start = time.perf_counter()
        for items in (data.train_all, data.val, data.test):
            extract_features(encoder, items.paths, job.cfg.image.resize, job.cfg.image.crop)
        one_pass = time.perf_counter() - start
        with_cache = grid(job, artifact, data_root, work, cached=True)
        without = grid(job, artifact, data_root, work, cached=False)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"task {args.task}, preset {args.preset}: 3 fractions x 3 seeds = 9 probe runs")
        print(f"one feature-extraction pass      {one_pass:8.1f} s")
        print(
            f"grid with the cache              {with_cache:8.1f} s "
            f"({with_cache / one_pass:.2f} x one pass)"
        )
        print(f"grid without the cache           {without:8.1f} s")
        print(f"speed-up of the cache            {without / with_cache:8.2f} x")
        print(f"peak resident memory             {peak:8.0f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
