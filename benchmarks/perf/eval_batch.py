"""Validation batch size of the dense tasks: a val pass at the training batch size and bigger.

Every evaluation in cxrbench sums over the whole split (``SegLossSums``, the Dice and mAP
accumulators, batch-size-weighted mean losses), so ``train.eval_batch_size`` changes float
rounding and speed only and is left out of the config hash. This script measures the speed: for
each dense task at a preset's shapes (``small``: the narrow ResNet-18 at 96 px, the frozen maps
computed once, as the runs do), it times, in this one process,

* one validation pass (``validation_step`` over the val split, then the epoch's metrics) with
  the val loader at ``train.batch_size`` and at ``--eval-batch-size``, alternating the two over
  ``--repeats`` rounds in alternating order, the median round reported;
* one training epoch, for scale,

and prints ``ratio val_pass_train_batch_vs_eval_batch X`` (> 1: the bigger batch is faster),
``ratio run_before_vs_after X`` for a run of ``--epochs`` epochs validated every
``train.val_every`` (the encoder pass and the test pass left out), the largest difference
between the two passes' scores, and the peak resident memory.

The encoder and the head have random weights (timings do not depend on them). Data: ``--root``
(default ``datasets/synth-small``).

    .venv/bin/python benchmarks/perf/eval_batch.py [--task rsna_seg ...] [--eval-batch-size 64]
"""

from __future__ import annotations

import argparse
import statistics
import time
from copy import deepcopy
from pathlib import Path
from typing import Any

import lightning as L
import torch
from _dense import TASKS, parser, peak_mib, preset_encoder, start

from cxrbench.data.features import FeatureCache
from cxrbench.runner.resolve import load_task
from cxrbench.systems import SYSTEMS
from cxrbench.systems.base import loader


def val_pass(system: Any, val: Any) -> tuple[float, dict[str, float]]:
    """Seconds of one validation pass and the epoch metrics it logged (those of its epoch end:
    per-step logs, which Lightning would average, are left out)."""
    logged: dict[str, float] = {}
    system.log = lambda *a, **k: None
    start = time.perf_counter()
    system.eval()
    with torch.no_grad():
        system.on_validation_epoch_start()
        for i, batch in enumerate(val):
            system.validation_step(batch, i)
        system.log = lambda key, value, **_: logged.__setitem__(key, float(value))
        system.on_validation_epoch_end()
    return time.perf_counter() - start, logged


def train_epoch(system: Any, train: Any, optimiser: torch.optim.Optimizer) -> float:
    system.log = lambda *a, **k: None
    start = time.perf_counter()
    system.train()
    for i, batch in enumerate(train):
        optimiser.zero_grad()
        system.training_step(batch, i).backward()
        optimiser.step()
    return time.perf_counter() - start


def measure(task_name: str, args: argparse.Namespace) -> dict[str, Any]:
    job = load_task(task_name, args.preset, fraction=args.fraction)
    data = job.task.data(args.root, args.fraction)
    encoder, meta = preset_encoder(job, args.preset)
    job.cfg.train.workers = 0
    L.seed_everything(0, verbose=False)
    prepared = SYSTEMS.get(job.task.kind).prepare(
        job.task, job.cfg, data, encoder, meta, FeatureCache(Path("/nonexistent"))
    )
    big_cfg = deepcopy(job.cfg)
    big_cfg.train.eval_batch_size = args.eval_batch_size
    collate = prepared.val.collate_fn
    loaders = {
        "train batch": prepared.val,
        "eval batch": loader(
            prepared.val.dataset, big_cfg, train=False, workers=0, collate_fn=collate
        ),
    }
    system = prepared.system
    times: dict[str, list[float]] = {k: [] for k in loaders}
    scores: dict[str, dict[str, float]] = {}
    for r in range(args.repeats):
        for name in list(loaders) if r % 2 == 0 else list(loaders)[::-1]:
            seconds, scores[name] = val_pass(system, loaders[name])
            times[name].append(seconds)
    epoch = statistics.median(
        train_epoch(system, prepared.train, system.configure_optimizers())
        for _ in range(args.repeats)
    )
    small, big = (statistics.median(times[k]) for k in loaders)
    validations = args.epochs // job.cfg.train.val_every
    keys = scores["train batch"].keys() & scores["eval batch"].keys()
    return {
        "val images": len(data.val.ids),
        "batch sizes": f"{job.cfg.train.batch_size} vs {args.eval_batch_size}",
        "train epoch s": epoch,
        "val pass s (train batch)": small,
        "val pass s (eval batch)": big,
        "largest score difference": max(
            abs(scores["train batch"][k] - scores["eval batch"][k]) for k in keys
        ),
        "val_pass_train_batch_vs_eval_batch": small / big,
        "run_before_vs_after": (args.epochs * epoch + validations * small)
        / (args.epochs * epoch + validations * big),
    }


def main() -> None:
    p = parser(__doc__, epochs=30)
    p.add_argument("--eval-batch-size", type=int, default=64)
    args = p.parse_args()
    start(args)
    for name in args.task or TASKS:
        print(f"\n{name}:")
        for key, value in measure(name, args).items():
            if key.startswith(("val_pass_", "run_")):
                print(f"ratio {key} {value:.2f}")
            elif isinstance(value, float):
                print(f"  {key}: {value:.3g}")
            else:
                print(f"  {key}: {value}")
    print(f"\npeak resident memory: {peak_mib():.0f} MiB")


if __name__ == "__main__":
    main()
