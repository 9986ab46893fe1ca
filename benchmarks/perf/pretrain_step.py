"""Pre-training cost per method: one optimisation step (forward, backward, AdamW) on the same batch.

Every registered image–report method is built at a preset's shapes with the corpus BERT and timed
on one real batch of the corpus (decoded once, so data loading is not timed), after warm-up
steps. Prints per method: seconds per step, pairs per second, the time relative to ConVIRT (the
baseline, measured in the same run), trainable / total parameters (the text model included) and
the process's peak resident memory after that method. Timings are measured here, never asserted
in tests; run it on an otherwise idle machine.

    .venv/bin/python benchmarks/perf/pretrain_step.py --preset small --steps 10

A method marked ``*`` only takes ViTs (mpma) and runs with ``vit_tiny`` instead of the preset's
ResNet.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from cxrbench.data.pretrain import PairDataset, collate, load_pairs
from cxrbench.errors import ConfigError
from cxrbench.methods import METHODS
from cxrbench.runner.bench import suite_data_root
from cxrbench.runner.pretrain import build_method, resolve_text_model
from cxrbench.runner.resolve import load_config
from cxrbench.suite import Suite


def step_time(method: torch.nn.Module, batch: dict, steps: int, warmup: int) -> float:
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-5)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        terms = method.losses(batch)  # type: ignore[operator]
        loss = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]  # the median step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=("tiny", "small"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--methods", nargs="*", default=None, help="default: every method")
    args = parser.parse_args()
    names = args.methods or [n for n in METHODS.names() if METHODS.get(n).needs_text]
    names = ["convirt", *[n for n in names if n != "convirt"]]
    data_root = suite_data_root(Suite(preset=args.preset), progress=False)
    mimic = data_root / "mimic-cxr-jpg"
    first = load_config("convirt", args.preset, ["trainer.progress=false"])
    text_path = resolve_text_model(first, mimic, progress=False)
    d = first.cfg.data
    pairs = load_pairs(mimic, "train")[: d.batch_size]
    data = PairDataset(pairs, d.resize, d.crop, train=True)
    batch = collate([data[i] for i in range(len(data))])
    threads = torch.get_num_threads()
    print(f"preset {args.preset}: batch {d.batch_size}, {d.crop} px, torch threads {threads}, "
          f"median of {args.steps} steps after {args.warmup}")  # fmt: skip
    print(f"{'method':<10} {'s/step':>7} {'pairs/s':>8} {'× convirt':>9} "
          f"{'trainable':>11} {'total':>11} {'peak RSS':>9}")  # fmt: skip
    base = None
    for name in names:
        sets = ["trainer.progress=false"]
        try:
            job = load_config(name, args.preset, sets)
            torch.manual_seed(0)
            method = build_method(job, text_path)
        except ConfigError:  # a ViT-only method (mpma) on a ResNet preset: its ViT counterpart
            sets += ["backbone.name=vit_tiny", "backbone.width=null"]
            job = load_config(name, args.preset, sets)
            torch.manual_seed(0)
            method = build_method(job, text_path)
            name = f"{name}*"
        method.train()
        seconds = step_time(method, batch, args.steps, args.warmup)
        base = base or seconds
        trainable = sum(p.numel() for p in method.parameters() if p.requires_grad)
        total = sum(p.numel() for p in method.parameters())
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{name:<10} {seconds:7.2f} {d.batch_size / seconds:8.1f} {seconds / base:9.2f} "
              f"{trainable:11,} {total:11,} {peak:7.0f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
