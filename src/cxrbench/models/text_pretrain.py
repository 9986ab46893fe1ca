"""A small BERT trained on the corpus reports, for machines that cannot download one.

:func:`train_text_model` builds a WordPiece vocabulary from the training texts with ``tokenizers``
(BERT normaliser with lower-casing, ``BertPreTokenizer``, special tokens ``[PAD] [UNK] [CLS] [SEP]
[MASK]`` as ids 0-4, ASCII letters, digits and punctuation always in the alphabet), wraps it as a
``transformers`` fast BERT tokenizer and trains ``BertForMaskedLM`` from scratch:

- masking: each non-special real token is picked with probability ``mask_prob``; of the picked,
  80 % become ``[MASK]``, 10 % a random non-special token, 10 % stay (BERT); vectorised, drawn from
  an explicit ``torch.Generator``; the MLM head is applied to picked positions only;
- AdamW (betas 0.9/0.98, weight decay 0.01 on matrices only), linear warm-up over 10 % of the
  steps then linear decay to 0, gradient clipping at 1.0, dynamic padding per batch;
- ~5 % of the texts (at least one) are held out by a seeded permutation; the held-out MLM loss
  and masked-token accuracy are measured before and after training on masks drawn once;
- model init, dropout and data order are seeded (the caller's global RNG state is restored), so a
  seed gives bit-identical weights on CPU.

The output is a normal Hugging Face folder: the ``BertModel`` (with an untrained pooler, unused by
cxrbench, so that ``AutoModel`` loads it without missing weights) as ``model.safetensors`` +
``config.json`` (``max_position_embeddings = max_length``), the tokenizer files
(``tokenizer.json``, ``tokenizer_config.json``, ``vocab.txt``) and ``training_summary.json``
(settings, a sha256 of the texts, sizes and the metrics above; never any report text). It is
written to a temporary sibling folder and renamed into place, so an interrupted run leaves nothing.

The vocabulary comes from :mod:`cxrbench.models.wordpiece`; reading a corpus and its presets
are in :mod:`cxrbench.models.text_corpus`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn.functional as F
from rich import progress as rp
from torch import Tensor

from cxrbench.errors import CxrbenchError
from cxrbench.models.wordpiece import build_tokenizer

log = logging.getLogger(__name__)

SUMMARY_FILE = "training_summary.json"
HELDOUT_FRACTION = 0.05

OBJECTIVES = ("mlm", "mlm+sections")
DEFAULT_SECTION_WEIGHT = 1.0
DEFAULT_TEMPERATURE = 0.1
MIN_EVAL_MASKED = 2000
"""The held-out texts are masked repeatedly (up to 20 times) to give about this many predictions."""


@dataclasses.dataclass(frozen=True)
class _Masking:
    """What masking needs: probability, [MASK] id, special-token table, random-token id range."""

    prob: float
    mask_id: int
    special: Tensor
    first_regular: int
    vocab_size: int


Batch = tuple[Tensor, Tensor, Tensor]  # inputs, attention mask, labels (-100 where not predicted)


def model_settings(
    texts: list[str],
    *,
    objective: str = "mlm",
    sections: list[tuple[str, str]] | None = None,
    section_weight: float = DEFAULT_SECTION_WEIGHT,
    temperature: float = DEFAULT_TEMPERATURE,
    **params: Any,
) -> dict[str, Any]:
    """The settings a model trained on ``texts`` with these arguments records (what reuse
    compares): :func:`text_settings`, plus, for a section-matching objective, the objective,
    its weight and temperature and a sha256 of the (findings, impression) pairs. An MLM model's
    settings are what they were before the objective existed."""
    if objective not in OBJECTIVES:
        raise CxrbenchError(f"unknown text objective {objective!r}; known: {', '.join(OBJECTIVES)}")
    if objective != "mlm":
        if sections is None or len(sections) != len(texts):
            raise CxrbenchError(f"objective {objective} needs (findings, impression) per text")
        digest = hashlib.sha256("\0".join(f"{f}\1{i}" for f, i in sections).encode())
        params = {**params, "objective": objective, "section_weight": section_weight,
                  "temperature": temperature, "sections_sha256": digest.hexdigest()}  # fmt: skip
    return text_settings(texts, **params)


def text_settings(texts: list[str], **params: Any) -> dict[str, Any]:
    """The settings identifying a trained model: hyper-parameters plus a digest of the texts."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return {**params, "num_texts": len(texts), "texts_sha256": digest.hexdigest()}


def _encode(tokenizer: Any, texts: list[str], max_length: int) -> tuple[Tensor, Tensor]:
    """Token ids and attention mask (N, max_length) of ``texts`` ([CLS] ... [SEP], truncated)."""
    enc = tokenizer(
        texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
    )
    return enc["input_ids"], enc["attention_mask"]


def mask_tokens(
    ids: Tensor, attention: Tensor, masking: _Masking, generator: torch.Generator
) -> Batch:
    """BERT's 80/10/10 masking of ``ids`` (B, L); returns ``(inputs, attention, labels)``."""
    candidates = attention.bool() & ~masking.special[ids]
    picked = candidates & (torch.rand(ids.shape, generator=generator) < masking.prob)
    action = torch.rand(ids.shape, generator=generator)
    low, high = masking.first_regular, masking.vocab_size
    random_ids = torch.randint(low, high, ids.shape, generator=generator)
    inputs = torch.where(picked & (action < 0.8), masking.mask_id, ids)
    inputs = torch.where(picked & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    labels = torch.where(picked, ids, -100)
    return inputs, attention, labels


def _batch(ids: Tensor, attention: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """Rows ``index`` trimmed to the longest sequence among them (dynamic padding)."""
    rows, mask = ids[index], attention[index]
    length = max(int(mask.sum(dim=1).max()), 1)
    return rows[:, :length], mask[:, :length]


def _length_batches(lengths: Tensor, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """Shuffled batches of similar lengths: shuffle, sort pools of 50 batches, shuffle batches."""
    batches: list[Tensor] = []
    for pool in torch.randperm(len(lengths), generator=generator).split(batch_size * 50):
        batches.extend(pool[torch.argsort(lengths[pool], stable=True)].split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def _mlm_terms(model: Any, batch: Batch, device: torch.device) -> tuple[Tensor, Tensor, int]:
    """Summed cross-entropy, number correct and number of predicted tokens of one batch."""
    inputs, attention, labels = (t.to(device) for t in batch)
    hidden = model.bert(input_ids=inputs, attention_mask=attention).last_hidden_state
    picked = labels != -100
    logits = model.cls(hidden[picked]).float()
    target = labels[picked]
    loss = F.cross_entropy(logits, target, reduction="sum")
    correct = (logits.argmax(dim=-1) == target).sum()
    return loss, correct, int(target.numel())


@torch.no_grad()
def evaluate(model: Any, batches: list[Batch], device: torch.device) -> dict[str, float]:
    """Held-out MLM loss (mean over masked tokens) and masked-token accuracy."""
    was_training = model.training
    model.eval()
    terms = [_mlm_terms(model, batch, device) for batch in batches]
    model.train(was_training)
    count = sum(n for _, _, n in terms)
    return {
        "loss": sum(float(loss) for loss, _, _ in terms) / max(count, 1),
        "accuracy": sum(int(correct) for _, correct, _ in terms) / max(count, 1),
        "masked_tokens": count,
    }


def _optimizer(model: Any, lr: float, total_steps: int) -> tuple[Any, Any]:
    """AdamW (decay on matrices only) and a linear warm-up/decay schedule over ``total_steps``."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)
    warmup = max(1, total_steps // 10)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _progress(enabled: bool) -> rp.Progress:
    columns = (rp.BarColumn(), rp.MofNCompleteColumn(), rp.TimeElapsedColumn())
    return rp.Progress(rp.TextColumn("{task.description}"), *columns, disable=not enabled)


def _section_loss(
    model: Any, sections: _Sections, index: Tensor, temperature: float, device: torch.device
) -> Tensor | None:
    """Symmetric InfoNCE between the [CLS] features of the findings and the impression of the
    studies of ``index`` that have both (the other studies in the batch are the negatives);
    None when fewer than two have both."""
    index = index[sections.both[index]]
    if len(index) < 2:
        return None
    feats = []
    for ids, attention in (sections.findings, sections.impression):
        rows, mask = _batch(ids, attention, index)
        hidden = model.bert(input_ids=rows.to(device), attention_mask=mask.to(device))
        feats.append(F.normalize(hidden.last_hidden_state[:, 0].float(), dim=-1))
    logits = feats[0] @ feats[1].T / temperature
    target = torch.arange(len(index), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


@dataclasses.dataclass(frozen=True)
class _Sections:
    """Tokenised findings and impressions, row-aligned with the training texts; ``both``: the
    rows whose report has both sections (only those enter the section-matching loss)."""

    findings: tuple[Tensor, Tensor]
    impression: tuple[Tensor, Tensor]
    both: Tensor


def _fit(
    model: Any,
    data: tuple[Tensor, Tensor],
    masking: _Masking,
    params: dict[str, Any],
    device: torch.device,
    progress: bool,
    sections: _Sections | None = None,
) -> list[float]:
    """Train ``model`` with MLM on ``data`` (and, with ``sections``, the section-matching loss
    weighted by ``params["section_weight"]``); return the mean MLM loss of each epoch."""
    ids, attention = data
    lengths = attention.sum(dim=1)
    epochs, batch_size = params["epochs"], params["batch_size"]
    steps = epochs * math.ceil(ids.shape[0] / batch_size)
    optimizer, scheduler = _optimizer(model, params["lr"], steps)
    generator = torch.Generator().manual_seed(params["seed"])
    history: list[float] = []
    model.train()
    with _progress(progress) as bar:
        task = bar.add_task("text MLM", total=steps)
        for epoch in range(epochs):
            loss_sum, count = 0.0, 0
            for chunk in _length_batches(lengths, batch_size, generator):
                batch = mask_tokens(*_batch(ids, attention, chunk), masking, generator)
                loss, _, n = _mlm_terms(model, batch, device)
                total = loss / max(n, 1)
                if sections is not None:
                    matched = _section_loss(model, sections, chunk, params["temperature"], device)
                    if matched is not None:
                        total = total + params["section_weight"] * matched
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                loss_sum, count = loss_sum + float(loss.detach()), count + n
                text = f"text MLM epoch {epoch + 1}/{epochs} loss {loss_sum / max(count, 1):.3f}"
                bar.update(task, advance=1, description=text)
            history.append(loss_sum / max(count, 1))
    return history


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the global RNGs for model init and dropout, restoring the caller's state afterwards."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _split_heldout(texts: list[str], seed: int) -> tuple[list[int], list[int]]:
    """Seeded split into the indices of the training texts and of ~5 % held-out texts (at
    least one), each in order."""
    if len(texts) < 2:
        raise CxrbenchError(f"training a text model needs at least 2 texts, got {len(texts)}")
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    held = max(1, round(len(texts) * HELDOUT_FRACTION))
    return sorted(order[held:]), sorted(order[:held])


def _masking(tokenizer: Any, vocab_size: int, prob: float) -> _Masking:
    """Masking settings; the special tokens must be the first ids (as :func:`build_tokenizer`)."""
    special_ids = sorted(int(i) for i in tokenizer.all_special_ids)
    if special_ids != list(range(len(special_ids))):
        raise CxrbenchError(f"special tokens must be the first ids, got {special_ids}")
    special = torch.zeros(vocab_size, dtype=torch.bool)
    special[torch.tensor(special_ids)] = True
    return _Masking(prob, int(tokenizer.mask_token_id), special, len(special_ids), vocab_size)


def _eval_batches(
    data: tuple[Tensor, Tensor], masking: _Masking, batch_size: int, seed: int
) -> list[Batch]:
    """Held-out batches masked once, repeated to ~``MIN_EVAL_MASKED`` predictions (own seed)."""
    generator = torch.Generator().manual_seed(seed + 1_000_003)
    ids, attention = data
    candidates = int((attention.bool() & ~masking.special[ids]).sum())
    repeats = min(20, max(1, math.ceil(MIN_EVAL_MASKED / max(masking.prob * candidates, 1.0))))
    index = torch.arange(ids.shape[0]).repeat(repeats)
    return [
        mask_tokens(*_batch(ids, attention, chunk), masking, generator)
        for chunk in index.split(batch_size)
    ]


def _bert_config(tokenizer: Any, params: dict[str, Any]) -> Any:
    from transformers import BertConfig

    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=params["hidden"],
        num_hidden_layers=params["layers"],
        num_attention_heads=params["heads"],
        intermediate_size=params["intermediate"],
        max_position_embeddings=params["max_length"],
        pad_token_id=tokenizer.pad_token_id,
        architectures=["BertModel"],
    )


def _train(
    texts: list[str],
    params: dict[str, Any],
    device: torch.device,
    progress: bool,
    sections: list[tuple[str, str]] | None = None,
) -> tuple[Any, Any, dict[str, Any]]:
    """Tokenizer, trained ``BertForMaskedLM`` and the metrics of the summary."""
    from transformers import BertForMaskedLM

    train_rows, held_rows = _split_heldout(texts, params["seed"])
    train_texts, held_texts = [texts[i] for i in train_rows], [texts[i] for i in held_rows]
    tokenizer = build_tokenizer(train_texts, params["vocab_size"], params["max_length"])
    config = _bert_config(tokenizer, params)
    masking = _masking(tokenizer, config.vocab_size, params["mask_prob"])
    train_data = _encode(tokenizer, train_texts, params["max_length"])
    held_data = _encode(tokenizer, held_texts, params["max_length"])
    held = _eval_batches(held_data, masking, params["batch_size"], params["seed"])
    matching = None
    if sections is not None:
        pairs = [sections[i] for i in train_rows]
        matching = _Sections(
            _encode(tokenizer, [f for f, _ in pairs], params["max_length"]),
            _encode(tokenizer, [i for _, i in pairs], params["max_length"]),
            torch.tensor([bool(f and i) for f, i in pairs]),
        )
    with _seeded(params["seed"], device):
        model: Any = BertForMaskedLM(config)
        model.to(device)
        before = evaluate(model, held, device)
        history = _fit(model, train_data, masking, params, device, progress, matching)
        after = evaluate(model, held, device)
    metrics = {
        "vocab_size": config.vocab_size,
        "num_parameters": sum(p.numel() for p in model.bert.parameters()),
        "num_train": len(train_texts),
        "num_heldout": len(held_texts),
        "heldout_before": before,
        "heldout_after": after,
        "train_loss_per_epoch": history,
    }
    return model.cpu(), tokenizer, metrics


def _encoder_state(model: Any, seed: int) -> dict[str, Tensor]:
    """``BertModel`` weights: the trained ones plus a seeded, untrained pooler."""
    from transformers import BertModel

    with _seeded(seed, torch.device("cpu")):
        encoder = BertModel(model.config, add_pooling_layer=True)
    missing, unexpected = encoder.load_state_dict(model.bert.state_dict(), strict=False)
    if unexpected or any(not key.startswith("pooler.") for key in missing):
        raise CxrbenchError(f"unexpected BERT weight layout: missing {missing}, extra {unexpected}")
    return {key: value.contiguous() for key, value in encoder.state_dict().items()}


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to overwrite a non-empty folder that is not a trained text model."""
    stray = out_dir.exists() and not (out_dir / SUMMARY_FILE).is_file()
    if stray and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CxrbenchError(
            f"{out_dir}: exists and is not a cxrbench text model (no {SUMMARY_FILE}); "
            "choose another output folder"
        )


def _write_folder(folder: Path, model: Any, tokenizer: Any, summary: dict[str, Any]) -> None:
    """Weights (safetensors), config, tokenizer files, ``vocab.txt`` and the summary."""
    state = _encoder_state(model, summary["settings"]["seed"])
    safetensors.torch.save_file(state, str(folder / "model.safetensors"), {"format": "pt"})
    model.config.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    (folder / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in vocab), "utf-8")
    (folder / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True), "utf-8")
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)


def _save(model: Any, tokenizer: Any, out_dir: Path, summary: dict[str, Any]) -> None:
    """Write the model folder to a temporary sibling, then rename it to ``out_dir``."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        _write_folder(tmp, model, tokenizer, summary)
        if out_dir.exists():
            trash = tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent)
            os.replace(out_dir, Path(trash) / out_dir.name)
            os.replace(tmp, out_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def train_text_model(
    texts: list[str],
    out_dir: Path,
    *,
    vocab_size: int = 4000,
    layers: int = 4,
    hidden: int = 256,
    heads: int = 4,
    intermediate: int = 1024,
    max_length: int = 112,
    epochs: int = 3,
    batch_size: int = 64,
    lr: float = 5e-4,
    mask_prob: float = 0.15,
    seed: int = 0,
    progress: bool = True,
    device: str = "cpu",
    objective: str = "mlm",
    sections: list[tuple[str, str]] | None = None,
    section_weight: float = DEFAULT_SECTION_WEIGHT,
    temperature: float = DEFAULT_TEMPERATURE,
) -> dict[str, Any]:
    """Train a small BERT on ``texts`` and save it to ``out_dir``; return the summary.

    ``objective``: ``mlm`` (masked-language modelling only) or ``mlm+sections`` (plus
    CXR-BERT-style section matching: ``sections[i]`` is text ``i``'s cleaned (findings,
    impression), ``""`` where missing; each batch's studies with both sections contribute a
    symmetric InfoNCE between the [CLS] features of their findings and impression, at
    ``temperature``, weighted by ``section_weight``). See the module docstring for the recipe
    and the folder layout. An existing model folder at ``out_dir`` is replaced; any other
    non-empty folder there is an error.
    """
    settings = model_settings(
        texts, objective=objective, sections=sections, section_weight=section_weight,
        temperature=temperature, vocab_size=vocab_size, layers=layers, hidden=hidden,
        heads=heads, intermediate=intermediate, max_length=max_length, epochs=epochs,
        batch_size=batch_size, lr=lr, mask_prob=mask_prob, seed=seed,
    )  # fmt: skip
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    start = time.perf_counter()
    model, tokenizer, metrics = _train(texts, settings, torch.device(device), progress,
                                       sections if objective != "mlm" else None)  # fmt: skip
    summary = {
        "format": "cxrbench-text-bert",
        "settings": settings,
        **metrics,
        "train_seconds": round(time.perf_counter() - start, 2),
        "device": device,
        "torch_version": torch.__version__,
    }
    _save(model, tokenizer, out_dir, summary)
    before, after = summary["heldout_before"], summary["heldout_after"]
    log.info(
        "text model %s: held-out MLM loss %.3f -> %.3f, masked-token accuracy %.3f -> %.3f",
        out_dir, before["loss"], after["loss"], before["accuracy"], after["accuracy"],
    )  # fmt: skip
    return summary
