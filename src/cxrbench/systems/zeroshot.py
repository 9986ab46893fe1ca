"""Zero-shot classification: images scored against text prompts in a method's image–text space.

Nothing is trained. The vision–language artifact (``models/vl_artifact.py``) rebuilds the method;
its :meth:`~cxrbench.methods.base.PretrainMethod.similarity` scores every test image against every
prompt, and a class's score comes from its prompts by the task's prompt style (``params``):

* ``gloria`` — each class has prompts built as GLoRIA's ``generate_chexpert_class_prompts`` does
  (every severity × subtype × location combination, ``prompts_per_class`` of them drawn with
  ``draw_seed``); a class scores the **maximum** similarity over its prompts, and each class's
  scores are standardised over the test images (GLoRIA's ``normalize``: minus the mean, over the
  std, per class); prediction = the highest class.
* ``chexzero`` — each class has a positive and a negative prompt (CheXzero); a class scores the
  softmax probability of its positive prompt against its negative one.

Metrics: ``accuracy`` (multiclass: arg-max against the one-hot label) and ``auroc`` (macro over
classes, one-vs-rest on the class scores); a binary task (one class, e.g. pneumonia vs normal)
records ``auroc`` only. With the ``gloria`` style the record's ``extra.prompt_precision`` holds
GLoRIA's image→text retrieval precision@1/5/10 over all the class prompts
(:func:`prompt_precision`). Predictions are written as classification's (``scores``,
``targets``), so ``cxrbench compare`` resamples them the same way.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from itertools import product
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from cxrbench.data.codecs import read_image
from cxrbench.data.transforms import mgca_image
from cxrbench.errors import ConfigError
from cxrbench.log import progress_bar
from cxrbench.metrics.classification import accuracy, macro_auroc
from cxrbench.systems import SYSTEMS
from cxrbench.systems.base import Evaluated, EvaluationSystem

if TYPE_CHECKING:
    from pathlib import Path

    from cxrbench.methods.base import PretrainMethod
    from cxrbench.tasks.base import Items, Task, TaskConfig, TaskData

STYLES = ("gloria", "chexzero")
PARAMS = ("prompts", "style", "prompts_per_class", "draw_seed", "per_class", "batch_size")


class Images(Dataset[torch.Tensor]):
    """The test images, decoded and resized as the transfer tasks' evaluation transform."""

    def __init__(self, paths: Sequence[Path], resize: int, crop: int) -> None:
        self.paths, self.resize, self.crop = list(paths), resize, crop

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return mgca_image(read_image(self.paths[i]), self.resize, self.crop, train=False)


def _cat(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The batches' entries concatenated; entries of several dimensions whose second one varies
    by batch (a text's words, padded to its batch's longest) are zero-padded to the longest."""
    out = {}
    for key in parts[0] if parts else ():
        tensors = [p[key] for p in parts]
        if tensors[0].ndim >= 2:
            width = max(t.shape[1] for t in tensors)
            tensors = [F.pad(t, (0, 0) * (t.ndim - 2) + (0, width - t.shape[1])) for t in tensors]
        out[key] = torch.cat(tensors)
    return out


@torch.no_grad()
def encode_images(
    method: PretrainMethod, items: Items, cfg: TaskConfig, what: str = "images"
) -> dict[str, torch.Tensor]:
    """:meth:`PretrainMethod.encode_images` over ``items``, batch by batch, in order."""
    data = Images(items.paths, cfg.image.resize, cfg.image.crop)
    batch = cfg.train.eval_batch_size or cfg.train.batch_size
    loader = DataLoader(data, batch_size=batch, shuffle=False, num_workers=cfg.train.workers)
    parts = []
    with progress_bar(cfg.trainer.progress, transient=True) as bar:
        task = bar.add_task(f"encoding {len(data)} {what}", total=len(data)) if bar else None
        for images in loader:
            parts.append(method.encode_images(images))
            if bar is not None:
                bar.advance(task, len(images))
    return _cat(parts)


@torch.no_grad()
def encode_texts(
    method: PretrainMethod, texts: Sequence[str], batch: int
) -> dict[str, torch.Tensor]:
    """:meth:`PretrainMethod.encode_texts` over ``texts``, in batches of ``batch``."""
    return _cat(
        [method.encode_texts(list(texts[i : i + batch])) for i in range(0, len(texts), batch)]
    )


# ------------------------------------------------------------------------------------ prompts


def class_prompts(params: dict[str, Any], classes: Sequence[str]) -> dict[str, Any]:
    """Each class's prompts of the task's prompt set and style (see the module docstring):
    ``gloria``: a list of prompts; ``chexzero``: ``{"positive": str, "negative": str}``."""
    style = params.get("style", "gloria")
    sets = params.get("prompts") or {}
    if style not in STYLES:
        raise ConfigError(None, "params.style", f"one of {', '.join(STYLES)}, got {style!r}")
    if not isinstance(sets, dict) or style not in sets:
        raise ConfigError(None, f"params.prompts.{style}", "the prompt set of this style")
    chosen = sets[style]
    out: dict[str, Any] = {}
    for name in classes:
        if name not in chosen:
            raise ConfigError(None, f"params.prompts.{style}.{name}", "prompts for this class")
        entry = chosen[name]
        if style == "chexzero":
            if not isinstance(entry, dict) or set(entry) != {"positive", "negative"}:
                raise ConfigError(None, f"params.prompts.chexzero.{name}",
                                  "a positive and a negative prompt")  # fmt: skip
            out[name] = {"positive": str(entry["positive"]), "negative": str(entry["negative"])}
            continue
        if not isinstance(entry, list) or not all(isinstance(w, list) and w for w in entry):
            raise ConfigError(None, f"params.prompts.gloria.{name}",
                              "a list of word lists (severity, subtype, location)")  # fmt: skip
        combos = [" ".join(w for w in words if w) for words in product(*entry)]
        n = int(params.get("prompts_per_class", 5))
        rng = random.Random(f"{params.get('draw_seed', 0)}/{name}")
        out[name] = sorted(rng.sample(combos, min(n, len(combos))))
    return out


def prompt_hash(prompts: dict[str, Any]) -> str:
    """sha256[:16] of the prompts actually scored (recorded with every result)."""
    return hashlib.sha256(json.dumps(prompts, sort_keys=True).encode()).hexdigest()[:16]


def check_params(params: dict[str, Any], known: Sequence[str] = PARAMS) -> None:
    for key in params:
        if key not in known:
            raise ConfigError(None, f"params.{key}", f"unknown setting; known: {', '.join(known)}")


def prompt_precision(
    method: PretrainMethod,
    images: dict[str, torch.Tensor],
    prompts: dict[str, list[str]],
    targets: np.ndarray,
    batch: int,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """GLoRIA's image→text retrieval on the 5×200 set: each image ranks every class prompt
    (all classes' together); precision@K is the share of its top K that are prompts of its own
    class, averaged over the images (K larger than a class's prompt count caps it below 1)."""
    texts = [t for entry in prompts.values() for t in entry]
    owner = np.repeat(np.arange(len(prompts)), [len(e) for e in prompts.values()])
    sims = method.similarity(images, encode_texts(method, texts, batch)).float().numpy()
    order = np.argsort(-sims, axis=1, kind="stable")
    label = targets.argmax(axis=1)
    return {f"p@{k}": float((owner[order[:, :k]] == label[:, None]).mean()) for k in ks
            if k <= len(texts)}  # fmt: skip


def class_scores(
    method: PretrainMethod,
    images: dict[str, torch.Tensor],
    prompts: dict[str, Any],
    style: str,
    batch: int,
) -> np.ndarray:
    """``(n_images, n_classes)`` scores of the classes (module docstring)."""
    columns = []
    for entry in prompts.values():
        if style == "chexzero":
            texts = encode_texts(method, [entry["positive"], entry["negative"]], batch)
            pair = method.similarity(images, texts).float()
            columns.append(pair.softmax(dim=1)[:, 0])
        else:
            texts = encode_texts(method, entry, batch)
            columns.append(method.similarity(images, texts).float().amax(dim=1))
    scores = torch.stack(columns, dim=1).double().numpy()
    if style == "gloria" and len(scores) > 1:
        std = scores.std(axis=0)
        scores = (scores - scores.mean(axis=0)) / np.where(std > 0, std, 1.0)
    return scores


@SYSTEMS.register("zeroshot")
class ZeroShotSystem(EvaluationSystem):
    """Scores the test images against the class prompts (module docstring)."""

    @classmethod
    def evaluate(
        cls, task: Task, cfg: TaskConfig, data: TaskData, method: PretrainMethod
    ) -> Evaluated:
        params = dict(cfg.params)
        check_params(params)
        style = str(params.get("style", "gloria"))
        binary = len(data.classes) == 1  # e.g. pneumonia vs normal: AUROC only
        names = list(data.classes)
        prompts = class_prompts(params, names)
        batch = int(params.get("batch_size", 64))
        images = encode_images(method, data.test, cfg)
        scores = class_scores(method, images, prompts, style, batch)
        targets = data.test.labels
        results = {"test/auroc": macro_auroc(scores, targets)}
        if not binary:
            results["test/accuracy"] = accuracy(scores, targets)
        predictions = {
            "label_kind": np.asarray("multilabel" if binary else "multiclass"),
            "classes": np.asarray(names),
            "targets": targets.astype(np.float32),
            "scores": scores.astype(np.float32),
        }
        extra: dict[str, Any] = {"prompts_sha256": prompt_hash(prompts), "prompt_style": style,
                                 "test_images": len(data.test.ids)}  # fmt: skip
        if style == "gloria" and not binary:
            extra["prompt_precision"] = prompt_precision(method, images, prompts, targets, batch)
        return Evaluated(results, predictions, extra)


__all__ = [
    "ZeroShotSystem",
    "class_prompts",
    "class_scores",
    "encode_images",
    "encode_texts",
    "prompt_hash",
]
