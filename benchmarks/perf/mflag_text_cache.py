"""M-FLAG's frozen-[CLS] cache: training steps with and without it, and trainable parameters.

Builds M-FLAG twice from one seed, ``params.cache_text=true`` and ``false``, and runs the same
full training steps (losses, backward, AdamW step) on the same pre-loaded batches for a few
epochs, at a preset's shapes (``--shapes preset``, ``small`` by default: the narrow ResNet-18 at
96 px, batch 64, the corpus BERT) or at the papers' shapes on a CPU-sized batch (``--shapes
paper``: ResNet-50 at 224 px and a BERT-base-sized model with random weights and the corpus
tokenizer, 112 tokens, ``--batch-size`` 8). After one untimed warm-up step each (on a batch of
other reports), the two variants alternate epoch by epoch, in alternating order, in this one
process, so load from other work hits both alike. The cache fills in the first epoch and serves
every later one, so the script prints the first-epoch and later-epoch times of each, the speed-up
over the epochs run and the speed-up extrapolated to a 50-epoch run. Data loading is excluded
(it runs in DataLoader workers in a real run), which makes the text model's share of a step, and
so the saving, as large as it gets at these shapes.

Memory: the process's peak resident set, the cache's feature bytes, and the resident cost of one
cached report at BERT-base width (768-d) measured in a fresh subprocess, extrapolated to 100k
reports.

Parameters: trainable parameters of M-FLAG and ConVIRT (the suite's ``convirt.yaml``: its text
model is fine-tuned) (a) at the run's shapes and (b) at the papers' shapes, ResNet-50 + a
BERT-base-sized model built locally (``BertConfig()``, random weights, a tiny vocabulary file; no
download), and "x % fewer trainable parameters" (the M-FLAG abstract says 78 %).

    .venv/bin/python benchmarks/perf/mflag_text_cache.py [--root datasets/synth-small]
        [--text-model DIR] [--preset small] [--shapes preset|paper] [--batch-size N]
        [--epochs 3] [--batches 4] [--threads 1]

Without ``--text-model`` the corpus BERT of ``--root`` (``cxrbench pretrain-text``) is used, or a
small one is trained on its reports into a temporary folder. No report text is ever printed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from cxrbench.data.pretrain import PairDataset, collate, load_pairs
from cxrbench.methods.mflag import TextFeatureCache, trainable_parameters
from cxrbench.runner.pretrain import build_method
from cxrbench.runner.resolve import load_config

PAPER_EPOCHS = 50
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def text_model_for(mimic: Path, given: str | None, work: Path, preset: str) -> Path:
    """``--text-model``, else the corpus BERT of the root, else one trained here (temporary)."""
    if given:
        return Path(given)
    text_preset = "tiny" if preset == "tiny" else "small"
    existing = mimic / f"cxrbench-text-bert-{text_preset}"
    if (existing / "config.json").is_file():
        return existing
    from cxrbench.models.text_corpus import PRESETS, corpus_texts
    from cxrbench.models.text_pretrain import train_text_model

    out = work / "bert"
    train_text_model(corpus_texts(mimic), out, **PRESETS[text_preset], max_length=112,
                     progress=False)  # fmt: skip
    return out


def bert_base_folder(tokenizer_dir: Path, out: Path) -> Path:
    """A BERT-base-sized model (random weights) with the tokenizer of ``tokenizer_dir``."""
    import transformers

    out.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, out / name)
    vocab = len(transformers.AutoTokenizer.from_pretrained(str(out), local_files_only=True))
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(vocab_size=vocab)).save_pretrained(out)
    return out


def step(method: Any, optimizer: torch.optim.Optimizer, batch: dict[str, Any]) -> None:
    loss = sum(method.losses(batch).values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def time_variants(
    preset: str, sets: list[str], text: Path, batches: list[dict], warm: dict, epochs: int
) -> dict[str, Any]:
    """Per-epoch seconds of M-FLAG with and without the cache, alternating epoch by epoch."""
    variants: dict[str, Any] = {}
    for name, flag in (("off", "false"), ("on", "true")):
        job = load_config("mflag", preset, [*sets, f"params.cache_text={flag}"])
        torch.manual_seed(0)
        method = build_method(job, text)
        method.train()
        optimizer = torch.optim.AdamW(method.parameters(), lr=job.cfg.optim.lr)
        step(method, optimizer, warm)  # untimed: allocations, kernel selection
        variants[name] = {"method": method, "optimizer": optimizer, "epochs": []}
    for epoch in range(epochs):
        order = ("off", "on") if epoch % 2 == 0 else ("on", "off")
        for name in order:
            v = variants[name]
            start = time.perf_counter()
            for batch in batches:
                step(v["method"], v["optimizer"], batch)
            v["epochs"].append(time.perf_counter() - start)
    return variants


def text_forward_seconds(method: Any, batches: list[dict]) -> float:
    """One uncached pass of the frozen text model over the batches (its share of an epoch)."""
    start = time.perf_counter()
    for batch in batches:
        method._encode(list(batch["text"]), torch.device("cpu"))
    return time.perf_counter() - start


def cache_cost_per_report(width: int = 768, n: int = 50000) -> float:
    """Resident bytes of one cached report of ``width`` floats (rows, tensors, digest, dict)."""
    torch.set_num_threads(1)
    cache = TextFeatureCache()
    before = current_rss()
    chunk = 256
    for start in range(0, n, chunk):
        names = [f"report {i}" for i in range(start, min(n, start + chunk))]
        cache.lookup(names, lambda xs: torch.randn(len(xs), width), torch.device("cpu"))
    return (current_rss() - before) / n


def in_fresh_process(fn: Any) -> Any:
    """``fn()`` in a new interpreter (an RSS delta there is not hidden by memory freed here)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn)


def paper_shape_counts(tmp: Path) -> tuple[int, int, int]:
    """Trainable parameters of M-FLAG and ConVIRT, total of M-FLAG: ResNet-50 + BERT-base."""
    import transformers

    from cxrbench.methods.convirt import ConVIRT
    from cxrbench.methods.mflag import MFLAG
    from cxrbench.models.backbones import build_backbone
    from cxrbench.models.text import TextEncoder

    vocab = tmp / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "lung"]) + "\n")
    tokenizer = transformers.BertTokenizer(vocab_file=str(vocab))
    bert = transformers.BertModel(transformers.BertConfig(), add_pooling_layer=False)
    sets = [f"text.model={tmp}"]
    conv = load_config("convirt", "paper", sets)
    mflag = load_config("mflag", "paper", sets)
    backbone = build_backbone("resnet50", weights=None, image_size=224)
    freeze = conv.cfg.text.freeze
    text = TextEncoder(bert, tokenizer, freeze=int(freeze) if freeze.isdigit() else freeze)
    convirt_count = trainable_parameters(ConVIRT(conv.params, backbone, text, conv.cfg))
    frozen = TextEncoder(bert, tokenizer, freeze=mflag.cfg.text.freeze)  # freezes ``bert``
    method = MFLAG(mflag.params, backbone, frozen, mflag.cfg)
    total = sum(p.numel() for p in method.parameters())
    return trainable_parameters(method), convirt_count, total


def fewer(ours: int, theirs: int) -> str:
    share = 100 * (1 - ours / theirs)
    return f"{share:.1f} % fewer" if share >= 0 else f"{-share:.1f} % more"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="datasets/synth-small", help="a data root (synth)")
    parser.add_argument("--text-model", default=None, help="a local HF text model folder")
    parser.add_argument("--preset", default="small", choices=("tiny", "small"))
    parser.add_argument("--shapes", default="preset", choices=("preset", "paper"))
    parser.add_argument("--batch-size", type=int, default=None, help="paper shapes: 8")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batches", type=int, default=4, help="distinct batches per epoch")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="mflag-cache-"))
    try:
        per_report = in_fresh_process(cache_cost_per_report)
        root = Path(args.root)
        if not root.exists():
            from cxrbench.synth import generate

            root = work / "synth"
            generate(root, "tiny", seed=0, workers=1, progress=False, scale=0.5)
        mimic = root / "mimic-cxr-jpg"
        text = text_model_for(mimic, args.text_model, work, args.preset)
        sets = ["trainer.progress=false"]
        batch_size = args.batch_size
        if args.shapes == "paper":
            text = bert_base_folder(text, work / "bert-base")
            batch_size = batch_size or 8
            sets += ["backbone.name=resnet50", "backbone.width=null", "data.resize=256",
                     "data.crop=224", "text.max_length=112"]  # fmt: skip
        sets.append(f"text.model={text}")
        if batch_size:
            sets.append(f"data.batch_size={batch_size}")
        job = load_config("mflag", args.preset, sets)
        d = job.cfg.data
        pairs = load_pairs(mimic, "train")[: (args.batches + 1) * d.batch_size]
        data = PairDataset(pairs, d.resize, d.crop, train=True)
        batches = [collate([data[i] for i in range(s, min(len(data), s + d.batch_size))])
                   for s in range(0, len(data), d.batch_size)]  # fmt: skip
        warm, batches = batches[-1], batches[:-1]
        runs = time_variants(args.preset, sets, text, batches, warm, args.epochs)
        off, on = runs["off"]["epochs"], runs["on"]["epochs"]
        cache = runs["on"]["method"].text_cache
        text_pass = text_forward_seconds(runs["off"]["method"], batches)
        peak_train = peak_mib()

        n_pairs = sum(len(b["text"]) for b in batches)
        bert = runs["on"]["method"].text
        print(f"{args.shapes} shapes ({args.preset} preset): {len(batches)} batches of "
              f"{d.batch_size} ({n_pairs} pairs) at {d.crop} px, backbone "
              f"{job.cfg.backbone.name}, text {bert.num_layers} layers x {bert.hidden_size}, "
              f"{job.cfg.text.max_length} tokens max; {args.epochs} epochs, "
              f"{args.threads} thread(s)")  # fmt: skip
        print(f"epoch 1, cache off / on (fills)    {off[0]:8.2f} s / {on[0]:8.2f} s")
        later_off = sum(off[1:]) / max(1, len(off) - 1)
        later_on = sum(on[1:]) / max(1, len(on) - 1)
        print(f"later epochs, cache off / on       {later_off:8.2f} s / {later_on:8.2f} s (mean)")
        print(f"frozen text model alone, 1 epoch   {text_pass:8.2f} s "
              f"({100 * text_pass / later_off:.0f} % of an uncached epoch)")  # fmt: skip
        print(f"speed-up over {args.epochs} epochs              {sum(off) / sum(on):8.2f} x")
        paper = (PAPER_EPOCHS * later_off) / (on[0] + (PAPER_EPOCHS - 1) * later_on)
        print(f"speed-up extrapolated to {PAPER_EPOCHS} epochs   {paper:8.2f} x")
        print(f"cache: {len(cache)} reports, {cache.nbytes() / 1024:.0f} KiB of features, "
              f"{cache.hits} hits / {cache.misses} misses")  # fmt: skip
        print(f"cache cost per report at 768-d     {per_report:8.0f} B "
              f"(100k reports: {per_report * 1e5 / 2**20:.0f} MiB)")  # fmt: skip
        print(f"peak resident memory (training)    {peak_train:8.0f} MiB")

        del runs
        m = trainable_parameters(build_method(job, text))
        c = trainable_parameters(build_method(load_config("convirt", args.preset, sets), text))
        print(f"trainable parameters, these shapes: M-FLAG {m:,} vs ConVIRT {c:,}: {fewer(m, c)}")
        m, c, total = paper_shape_counts(work)
        print(f"trainable parameters, ResNet-50 + BERT-base: M-FLAG {m:,} (of {total:,}) vs "
              f"ConVIRT {c:,}: {fewer(m, c)} (paper: 78 %)")  # fmt: skip
        print(f"peak resident memory (all)         {peak_mib():8.0f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
