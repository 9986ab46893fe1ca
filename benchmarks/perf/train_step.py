"""Our Lightning pre-training step against a plain PyTorch loop, and whether the loader keeps up.

One method is built at a preset's shapes with the corpus BERT, and one real batch of the corpus is
decoded and collated once. Two ways of training on that batch are then timed, in this one
process, on the same model, loss, batch and optimiser:

* **ours**: the real :class:`~cxrbench.systems.pretrain.PretrainSystem` fitted by the
  ``lightning.Trainer`` the runner builds (``runner.pretrain._trainer``: the preset's precision,
  ``deterministic`` flag, gradient clipping, ``log_every`` logging to a CSV logger, the RNG and
  wall-clock callbacks) over a loader that yields the same pre-collated batch ``warmup + steps``
  times. Its ``ModelCheckpoint`` callbacks are removed and no validation loader is given, so the
  comparison is about the step: checkpoints, validation and the data loader are not included;
  Lightning's loop, hooks, logging, the system's loss check and the LR schedule are.
* **plain**: a ``for`` loop doing what the system asks of the Trainer: ``method.losses(batch)``
  summed with the ``loss_weights`` (under the same autocast), ``zero_grad``, ``backward``, the
  same gradient clipping, AdamW with the system's parameter groups and hyper-parameters, and the
  same warm-up + cosine schedule step.

The two alternate round by round (plain first, then ours first, …) so drift from other work on
the machine hits both; each round starts with ``--warmup`` untimed steps (a fresh optimiser, as a
new fit has). The median step of all rounds is reported per side, then
``ratio lightning_vs_plain X.XX`` (ours ÷ plain; ~1 means Lightning costs nothing per step).

Loader check: the real pre-training loader (``ResumableLoader`` over ``PairDataset`` of the
``train`` pairs with the preset's ``data.workers``, batch size, resize and crop, ``train=True``,
``collate``) is drawn for ``--loader-batches`` batches after its first one (worker start-up), from
decoded image files or, with ``--store``, from the preprocessed image store
(``cxrbench.data.store.ImageStore``, built into a temporary folder first, its build time printed
apart). ``ratio loader_vs_step X.XX`` is the loader's seconds per batch over our step's: below 1
the loader can feed the step. Timings are measured here, never asserted in tests; run it on an
otherwise idle machine.

    .venv/bin/python benchmarks/perf/train_step.py --preset small --method convirt --steps 20

Also printed: torch's thread count and the process's peak resident memory. ``gpu_check.py``
reuses this module's helpers at the papers' shapes on a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import resource
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch

from cxrbench.data.pretrain import PairDataset, collate, load_pairs
from cxrbench.errors import ConfigError
from cxrbench.log import quiet_libraries
from cxrbench.runner.bench import suite_data_root
from cxrbench.runner.pretrain import build_method, resolve_text_model
from cxrbench.runner.resolve import PretrainJob, load_config
from cxrbench.suite import Suite
from cxrbench.systems.pretrain import PretrainSystem
from cxrbench.systems.schedule import param_groups, warmup_cosine

AUTOCAST = {"32-true": None, "bf16-mixed": torch.bfloat16}  # the precisions the presets use
VIT_FALLBACK = {"cpu": "vit_tiny", "gpu": "vit_b16"}  # for a ViT-only method (mpma)


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(
    name: str, preset: str, sets: list[str], steps: int, text_path: Path | None
) -> tuple[PretrainJob, Any, str]:
    """The method's config at ``preset`` for fits of ``steps`` steps (no progress bar), the
    method built from seed 0, and its label. A method that only takes ViTs (mpma) on a ResNet
    preset gets its ViT counterpart (``vit_tiny`` on a CPU preset, ``vit_b16`` on a GPU one, no
    upsampling) and a ``*``."""
    sets = [*sets, "trainer.progress=false", f"trainer.max_steps={steps}"]
    job = load_config(name, preset, sets)
    try:
        torch.manual_seed(0)
        return job, build_method(job, text_path), name
    except ConfigError as err:
        if err.key != "backbone.name":
            raise
    vit = VIT_FALLBACK["gpu" if job.cfg.trainer.accelerator == "gpu" else "cpu"]
    job = load_config(name, preset, [*sets, f"backbone.name={vit}", "backbone.width=null",
                                     "backbone.upsample_to=null"])  # fmt: skip
    torch.manual_seed(0)
    return job, build_method(job, text_path), f"{name}*"


def autocast(job: PretrainJob, device: torch.device) -> Callable[[], Any]:
    """The autocast the Trainer's precision puts around ``training_step`` (none for fp32)."""
    precision = job.cfg.trainer.precision
    if precision not in AUTOCAST:
        raise SystemExit(f"precision {precision!r} is not supported here ({', '.join(AUTOCAST)})")
    dtype = AUTOCAST[precision]
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


class Repeat:
    """A loader that yields the same (pre-collated, already placed) batch ``n`` times."""

    def __init__(self, batch: dict[str, Any], n: int) -> None:
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return itertools.repeat(self.batch, self.n)


class StepClock(L.Callback):
    """The time at the end of every training step (after a CUDA sync)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stamps: list[float] = []

    def on_train_batch_end(self, *args: Any) -> None:
        sync(self.device)
        self.stamps.append(time.perf_counter())


def lightning_round(
    system: PretrainSystem, job: PretrainJob, batch: dict, device: torch.device, work: Path
) -> list:
    """Step end times of one fit of the system by the runner's Trainer (checkpoints removed)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from cxrbench.runner.pretrain import _trainer

    loader = Repeat(batch, job.cfg.trainer.max_steps)
    trainer = _trainer(job, work, loader)
    clock = StepClock(device)
    trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, ModelCheckpoint)]
    trainer.callbacks.append(clock)
    trainer.fit(system, loader)
    return clock.stamps


def plain_round(method: Any, job: PretrainJob, batch: dict, device: torch.device) -> list:
    """Step end times of the same optimisation written as a plain loop."""
    o, total = job.cfg.optim, job.cfg.trainer.max_steps
    method.to(device)  # Lightning's teardown moved it back to the CPU
    groups = param_groups(method.named_parameters(), o.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=(o.betas[0], o.betas[1]))
    scheduler = warmup_cosine(optimizer, total, o.warmup, o.min_lr_ratio)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    weights, cast = job.cfg.loss_weights, autocast(job, device)
    stamps = []
    for step in range(total):
        method.on_train_step_start(step, 0)
        with cast():
            terms = method.losses(batch)
            loss = sum(weights.get(k, 1.0) * v for k, v in terms.items())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if o.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, o.grad_clip)
        optimizer.step()
        scheduler.step()
        sync(device)
        stamps.append(time.perf_counter())
    return stamps


def compare(
    method: Any,
    job: PretrainJob,
    batch: dict,
    *,
    warmup: int,
    rounds: int,
    device: torch.device,
    work: Path,
) -> dict[str, dict[str, Any]]:
    """Per side (``plain``, ``lightning``): ``seconds`` (median timed step over all rounds),
    ``windows`` (perf_counter spans of the timed steps) and ``peak`` (CUDA bytes, 0 on a CPU).
    Each round fits ``job.cfg.trainer.max_steps`` steps, the first ``warmup`` untimed."""
    if warmup < 1:
        raise SystemExit("--warmup must be at least 1 (the first step has no start time)")
    torch.use_deterministic_algorithms(job.cfg.trainer.deterministic)  # as the Trainer sets it
    method.to(device)
    system = PretrainSystem(method, job.cfg)
    out: dict[str, dict[str, Any]] = {
        side: {"steps": [], "windows": [], "peak": 0} for side in ("plain", "lightning")
    }
    for r in range(rounds):
        for side in ("plain", "lightning") if r % 2 == 0 else ("lightning", "plain"):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            if side == "plain":
                stamps = plain_round(method, job, batch, device)
            else:
                stamps = lightning_round(system, job, batch, device, work / f"round{r}")
            timed = stamps[warmup - 1 :]
            out[side]["steps"] += [b - a for a, b in itertools.pairwise(timed)]
            out[side]["windows"].append((timed[0], timed[-1]))
            if device.type == "cuda":
                out[side]["peak"] = max(out[side]["peak"], torch.cuda.max_memory_allocated(device))
    method.to(device)
    for side in out.values():
        side["seconds"] = statistics.median(side["steps"])
    return out


def steps_per_round(steps: int, rounds: int) -> int:
    """Timed steps per round so that ``rounds`` rounds time at least ``steps`` steps."""
    return max(1, math.ceil(steps / rounds))


def first_batch(mimic: Path, job: PretrainJob, device: torch.device) -> dict[str, Any]:
    """One training batch of the corpus, decoded, collated and placed once."""
    d = job.cfg.data
    pairs = load_pairs(mimic, "train")[: d.batch_size]
    data = PairDataset(pairs, d.resize, d.crop, train=True)
    batch = collate([data[i] for i in range(len(data))])
    batch["image"] = batch["image"].to(device)
    return batch


def open_store(job: PretrainJob, mimic: Path, cache_root: Path) -> Any:
    """The preprocessed image store of the train images at the preset's ``data.resize`` (built
    into ``cache_root``)."""
    from cxrbench.data.store import ImageStore

    paths = [p.image_path for p in load_pairs(mimic, "train", job.cfg.data.limit_pairs)]
    return ImageStore.ensure(paths, job.cfg.data.resize, cache_root=cache_root, progress=False)


def loader_seconds(job: PretrainJob, mimic: Path, batches: int, store: Any = None) -> float:
    """Seconds per batch of the real pre-training loader, after its first batch (worker start);
    epochs follow one another until ``batches`` more batches were drawn."""
    from cxrbench.data.resumable import ResumableLoader

    d = job.cfg.data
    pairs = load_pairs(mimic, "train", d.limit_pairs)
    data = PairDataset(pairs, d.resize, d.crop, train=True, store=store)
    loader = ResumableLoader(data, seed=job.cfg.seed, batch_size=d.batch_size,
                             drop_last=len(data) > d.batch_size, num_workers=d.workers,
                             collate_fn=collate, persistent_workers=d.workers > 0)  # fmt: skip
    drawn, start = 0, 0.0
    for epoch in itertools.count():
        loader.epoch_sampler.set_epoch(epoch)
        for _ in loader:
            drawn += 1
            if drawn == 1:
                start = time.perf_counter()
            if drawn > batches:
                seconds = (time.perf_counter() - start) / batches
                del loader  # its workers end
                return seconds
    raise AssertionError("unreachable")


def quiet() -> None:
    """Lightning's per-fit remarks and transformers' load bars: nothing a timing run needs."""
    quiet_libraries()
    for message in (".*smaller than the logging interval.*", ".*val_dataloader.*",
                    ".*does not have many workers.*", ".*Tensor Cores.*",
                    ".*module\\(s\\) in eval mode.*"):  # fmt: skip
        warnings.filterwarnings("ignore", message=message)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=("tiny", "small"))
    parser.add_argument("--method", default="convirt")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per side, all rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    parser.add_argument("--loader-batches", type=int, default=10)
    parser.add_argument("--store", action="store_true", help="the loader reads the image store")
    parser.add_argument("--data-root", default=None, help="default: the preset's SynthCXR corpus")
    args = parser.parse_args()
    quiet()
    suite = Suite(preset=args.preset, data_root=args.data_root)
    mimic = suite_data_root(suite, progress=False) / "mimic-cxr-jpg"
    per_round = steps_per_round(args.steps, args.rounds)
    first = load_config(args.method, args.preset, ["trainer.progress=false"])
    text_path = resolve_text_model(first, mimic, progress=False)
    job, method, label = build(args.method, args.preset, [], args.warmup + per_round, text_path)
    method.train()  # HF models load in eval mode (as run_pretrain)
    device = torch.device("cpu")
    batch = first_batch(mimic, job, device)
    d, t = job.cfg.data, job.cfg.trainer
    print(f"preset {args.preset}, method {label}: batch {d.batch_size} at {d.crop} px, "
          f"precision {t.precision}, deterministic {t.deterministic}, log every {t.log_every}, "
          f"grad clip {job.cfg.optim.grad_clip}")  # fmt: skip
    print(f"{args.rounds} alternating rounds x {per_round} timed steps per side, after "
          f"{args.warmup} warm-up steps each; median step")  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="train-step-"))
    try:
        sides = compare(method, job, batch, warmup=args.warmup, rounds=args.rounds,
                        device=device, work=work)  # fmt: skip
        for side in ("plain", "lightning"):
            s = sides[side]["seconds"]
            print(f"{side:<10} {s:8.4f} s/step {d.batch_size / s:9.1f} pairs/s")
        step = sides["lightning"]["seconds"]
        print(f"ratio lightning_vs_plain {step / sides['plain']['seconds']:.2f}")
        store, source = None, "decoded files"
        if args.store:
            start = time.perf_counter()
            store = open_store(job, mimic, work / "store")
            source = "image store"
            print(f"store: built in {time.perf_counter() - start:.1f} s")
        per_batch = loader_seconds(job, mimic, args.loader_batches, store)
        print(f"loader ({source}, {d.workers} workers, {args.loader_batches} batches): "
              f"{per_batch:.4f} s/batch {d.batch_size / per_batch:9.1f} pairs/s")  # fmt: skip
        print(f"ratio loader_vs_step {per_batch / step:.2f}")
        print(f"torch threads {torch.get_num_threads()}, peak RSS {peak_mib():.0f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
