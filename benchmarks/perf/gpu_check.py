"""One prepared check for a lent GPU: our pre-training step against a plain loop at the papers'
shapes, with throughput, memory, GPU utilisation and the loader's rate.

For each method (``convirt, mgca, gloria, mflag``; ``--all`` adds ``place, mpma``) the method is
built at the ``paper`` preset's shapes (``configs/trainer/paper.yaml``: ResNet-50 at 224 px
upsampled to 299 inside, batch 72, ``bf16-mixed``; mpma, which only takes ViTs, gets ViT-B/16
at 224 and a ``*``) with random image weights and a BERT-base-sized text model made here (12
layers × 768, 12 heads, MLP 3072, random weights, a WordPiece vocabulary learned from the
corpus's reports, embedding rows padded to Bio_ClinicalBERT's 28,996), saved as a local Hugging
Face folder that ``text.model`` names. Model and batch are ``channels_last``. Then, as
``train_step.py`` does, ours (the real ``PretrainSystem`` fitted by the runner's Trainer,
checkpoints removed, bf16 autocast from its precision) and a plain loop (same model, loss,
batch, AdamW groups, clipping and schedule, the same autocast) alternate over 2 rounds, each
round ``--warmup`` untimed steps then half of ``--steps`` timed ones; per method: pairs/s of each
(median step), their ratio (our step time ÷ the plain one), the peak GPU memory of our fit
(``torch.cuda.max_memory_allocated``) and the mean GPU utilisation during our timed steps
(``nvidia-smi`` polled every 0.2 s in a thread; it averages over its own sample period, so
the edges of a window blur; "n/a" without nvidia-smi).

Loader: the real pre-training loader (``train_step.loader_seconds``: the preset's batch size and
``data.workers``, ``train=True`` transforms) over the corpus's train pairs, decoding the image
files per item against reading the preprocessed image store (``cxrbench.data.store``, built first
into a temporary folder; "n/a" while that module does not exist). The corpus is ``--data-root``
or a SynthCXR ``tiny`` corpus made here with ``cxrbench data synth`` (64 px images: decoding
is cheaper than for real 2-3k px JPEGs, so the decode rate is an upper bound).

Prints one Markdown table with the device name and torch version. A method that fails is
reported in the table and the script exits 1 after the others ran; methods not started within
``--budget-s`` seconds are skipped (and exit 1), so the run fits a device lease.

    bash benchmarks/perf/gpu_check.sh [--steps 30] [--warmup 3] [--methods convirt,mgca] [--all]
        [--data-root PATH]
    bash benchmarks/perf/gpu_check.sh --cpu --steps 2   # CPU smoke: tiny shapes, fp32, < 60 s

``--cpu`` runs the same code on the CPU at the ``tiny`` preset's shapes (64 px, the narrow
ResNet-18, fp32) with a tiny random BERT (2 layers × 64), batch 8, 1 warm-up step and one torch
thread (unless ``OMP_NUM_THREADS`` is set). Timings are printed, never asserted (the
integration test only checks that the table is complete).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from train_step import (
    build,
    compare,
    first_batch,
    loader_seconds,
    open_store,
    quiet,
    steps_per_round,
)

from cxrbench.data.pretrain import load_pairs
from cxrbench.runner.resolve import load_config

METHODS = ("convirt", "mgca", "gloria", "mflag")
MORE = ("place", "mpma")  # --all
ROUNDS = 2
#: the text models: BERT-base's sizes (Bio_ClinicalBERT's vocabulary) on a GPU, a tiny one on CPU
BERT = {
    "gpu": {"hidden": 768, "layers": 12, "heads": 12, "intermediate": 3072, "vocab": 28996},
    "cpu": {"hidden": 64, "layers": 2, "heads": 2, "intermediate": 256, "vocab": 0},
}
LEARNED_VOCAB = {"gpu": 8000, "cpu": 1000}  # WordPiece sizes learned from the reports (at most)
CPU_BATCH = 8


def synth_corpus(work: Path) -> Path:
    """A SynthCXR ``tiny`` corpus made by the CLI (seconds)."""
    out = work / "synth-tiny"
    cmd = [sys.executable, "-m", "cxrbench", "data", "synth", "--preset", "tiny", "--out",
           str(out), "--no-progress"]  # fmt: skip
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


def random_bert(mimic: Path, out: Path, kind: str) -> Path:
    """A BERT with random weights and the sizes of ``BERT[kind]``, its WordPiece vocabulary
    learned from the train reports, saved as a local Hugging Face folder."""
    from transformers import BertConfig, BertModel

    from cxrbench.models.wordpiece import build_tokenizer

    size = BERT[kind]
    texts = [p.text for p in load_pairs(mimic, "train")]
    tokenizer = build_tokenizer(texts, LEARNED_VOCAB[kind], 512)
    config = BertConfig(
        vocab_size=max(len(tokenizer), size["vocab"]), hidden_size=size["hidden"],
        num_hidden_layers=size["layers"], num_attention_heads=size["heads"],
        intermediate_size=size["intermediate"], max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, architectures=["BertModel"],
    )  # fmt: skip
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


class UtilSampler:
    """GPU utilisation (%) polled from ``nvidia-smi`` in a thread, stamped with perf_counter."""

    def __init__(self, every: float = 0.2) -> None:
        self.exe = shutil.which("nvidia-smi")
        self.every = every
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> UtilSampler:
        if self.exe:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0] or "0"
        cmd = [str(self.exe), "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
               f"--id={gpu}"]  # fmt: skip
        while not self._stop.is_set():
            before = time.perf_counter()
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=True)
                value = float(out.stdout.split()[0])
            except (subprocess.SubprocessError, OSError, ValueError, IndexError):
                value = None  # e.g. [N/A] on a MIG slice
            if value is not None:
                self.samples.append(((before + time.perf_counter()) / 2, value))
            self._stop.wait(self.every)

    def mean(self, windows: list[tuple[float, float]]) -> float | None:
        values = [u for t, u in self.samples if any(a <= t <= b for a, b in windows)]
        return statistics.fmean(values) if values else None


def run_method(
    name: str, preset: str, sets: list[str], args: Any, device: torch.device, mimic: Path,
    text: Path, work: Path, sampler: UtilSampler | None,
) -> dict[str, Any]:  # fmt: skip
    """Build ``name`` and time ours against the plain loop; the row of the table."""
    per_round = steps_per_round(args.steps, ROUNDS)
    job, method, label = build(name, preset, sets, args.warmup + per_round, text)
    method.train()
    batch = first_batch(mimic, job, device)
    if device.type == "cuda":
        method.to(device=device, memory_format=torch.channels_last)
        batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
    sides = compare(method, job, batch, warmup=args.warmup, rounds=ROUNDS, device=device,
                    work=work / name)  # fmt: skip
    ours, plain = sides["lightning"], sides["plain"]
    b = job.cfg.data.batch_size
    util = sampler.mean(ours["windows"]) if sampler is not None else None
    row = {
        "method": label,
        "ours": b / ours["seconds"],
        "plain": b / plain["seconds"],
        "ratio": ours["seconds"] / plain["seconds"],
        "mem": f"{ours['peak'] / 2**30:.1f}" if device.type == "cuda" else "n/a",
        "util": "n/a" if util is None else f"{util:.0f}",
    }
    del method, batch, sides
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def loader_rates(preset: str, sets: list[str], mimic: Path, batches: int, work: Path) -> str:
    """The loader line: pairs/s reading the image store vs decoding the files."""
    job = load_config("convirt", preset, [*sets, "trainer.progress=false"])
    d = job.cfg.data
    decode = d.batch_size / loader_seconds(job, mimic, batches)
    start = time.perf_counter()
    store = open_store(job, mimic, work / "store")
    head = f"loader pairs/s (batch {d.batch_size}, {d.workers} workers, {batches} batches):"
    built = time.perf_counter() - start
    stored = d.batch_size / loader_seconds(job, mimic, batches, store)
    return (f"{head} store {stored:.0f} vs decode {decode:.0f} ({stored / decode:.2f} x; "
            f"store built in {built:.1f} s)")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per side, all rounds")
    parser.add_argument("--warmup", type=int, default=None, help="per round; 3 (GPU), 1 (--cpu)")
    parser.add_argument("--methods", default=None, help=f"comma-separated; default {METHODS}")
    parser.add_argument("--all", action="store_true", help=f"also {', '.join(MORE)}")
    parser.add_argument("--data-root", default=None, help="default: a SynthCXR tiny corpus")
    parser.add_argument("--cpu", action="store_true", help="smoke run: tiny shapes on the CPU")
    parser.add_argument("--loader-batches", type=int, default=None, help="20 (GPU), 3 (--cpu)")
    parser.add_argument("--budget-s", type=float, default=420, help="start no method after")
    args = parser.parse_args()
    started = time.perf_counter()
    quiet()
    kind = "cpu" if args.cpu else "gpu"
    if kind == "gpu" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (use --cpu for the CPU smoke run)", file=sys.stderr)
        return 2
    if args.warmup is None:
        args.warmup = 1 if args.cpu else 3
    if args.cpu and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # a smoke run: never oversubscribe a shared CPU
    batches = args.loader_batches or (3 if args.cpu else 20)
    device = torch.device("cuda" if kind == "gpu" else "cpu")
    preset = "paper" if kind == "gpu" else "tiny"
    names = args.methods.split(",") if args.methods else [*METHODS, *(MORE if args.all else ())]
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    rows: list[dict[str, Any]] = []
    failed = 0
    try:
        root = Path(args.data_root) if args.data_root else synth_corpus(work)
        mimic = root / "mimic-cxr-jpg"
        text = random_bert(mimic, work / "bert", kind)
        sets = [f"text.model={text}", "backbone.weights=null"]  # random image weights: no download
        if args.cpu:
            sets.append(f"data.batch_size={CPU_BATCH}")
        job = load_config("convirt", preset, [*sets, "trainer.progress=false"])
        sampler_cm = UtilSampler() if kind == "gpu" else contextlib.nullcontext(None)
        with sampler_cm as sampler:
            for name in names:
                if time.perf_counter() - started > args.budget_s:
                    print(f"{name}: skipped (past --budget-s {args.budget_s:.0f})", flush=True)
                    rows.append({"method": name, "error": "skipped (time budget)"})
                    failed += 1
                    continue
                begun = time.perf_counter()
                try:
                    row = run_method(name, preset, sets, args, device, mimic, text, work, sampler)
                except Exception as err:  # report it, run the others
                    traceback.print_exc()
                    row = {"method": name, "error": f"failed: {type(err).__name__}"}
                    failed += 1
                rows.append(row)
                done = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                 for k, v in row.items() if k != "method")  # fmt: skip
                print(f"{name}: {done} ({time.perf_counter() - begun:.0f} s)", flush=True)
        try:
            loader = loader_rates(preset, sets, mimic, batches, work)
        except Exception as err:
            traceback.print_exc()
            loader = f"loader pairs/s: failed ({type(err).__name__})"
            failed += 1
        b, t = job.cfg.backbone, job.cfg.trainer
        name = torch.cuda.get_device_name(device) if kind == "gpu" else "CPU (--cpu smoke run)"
        size = BERT[kind]
        upsample = f" (upsampled to {b.upsample_to})" if b.upsample_to else ""
        per_round, threads = steps_per_round(args.steps, ROUNDS), torch.get_num_threads()
        print()
        print(f"device: {name}; torch {torch.__version__}; torch threads {threads}")
        print(f"preset {preset}: {b.name} at {job.cfg.data.crop} px{upsample}, batch "
              f"{job.cfg.data.batch_size}, {t.precision}; random BERT {size['layers']} x "
              f"{size['hidden']}; {ROUNDS} rounds x {per_round} timed steps per side after "
              f"{args.warmup} warm-up")  # fmt: skip
        print()
        print("| method | pairs/s ours | pairs/s plain | ratio | peak GPU mem GiB | GPU util % |")
        print("|---|---:|---:|---:|---:|---:|")
        for row in rows:
            if "error" in row:
                print(f"| {row['method']} | {row['error']} | | | | |")
            else:
                print(f"| {row['method']} | {row['ours']:.1f} | {row['plain']:.1f} | "
                      f"{row['ratio']:.2f} | {row['mem']} | {row['util']} |")  # fmt: skip
        print()
        print(loader)
        print("ratio = our step time / the plain loop's (1.00: Lightning costs nothing per step)")
        print(f"elapsed {time.perf_counter() - started:.0f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
