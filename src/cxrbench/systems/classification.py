"""ClassificationSystem: a linear head on a frozen (or fine-tuned) encoder.

Batches carry either cached ``features`` (frozen encoder, no augmentation: the default) or
``image`` tensors (MGCA-exact augmentation, or ``finetune``). Loss: BCE per class for multi-label
tasks, cross-entropy for multi-class ones. Validation loss drives early stopping and checkpoint
selection; the test epoch gathers every prediction and computes the task's metric over the whole
test set (never an average of batch metrics).

:meth:`ClassificationSystem.prepare` decides the probe mode: a frozen encoder without training
augmentation reads features from the frozen-feature cache (``data/features.py``), computed once per
(encoder, dataset, split part, transform) and shared by every fraction, seed and epoch; otherwise
images are loaded and transformed on the fly (``augment``: MGCA's training augmentation).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from cxrbench.data.features import FeatureCache, feature_key, files_stamp
from cxrbench.models.artifact import feature_identity
from cxrbench.systems import SYSTEMS
from cxrbench.systems.base import Prepared, TransferSystem, loader
from cxrbench.tasks.base import Items, Task, TaskConfig, TaskData, probe_mode


class _Rows(Dataset[dict[str, Any]]):
    """Cached features (or images, transformed on the fly) with their labels."""

    def __init__(self, items: Items, features: torch.Tensor | None, cfg: TaskConfig, train: bool):
        self.items, self.features, self.cfg, self.train = items, features, cfg, train
        self.labels = torch.from_numpy(items.labels)
        # cached feature rows draw nothing: their loader skips the per-item seeding
        self.draws_random = features is None

    def __len__(self) -> int:
        return len(self.items.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.features is not None:
            return {"features": self.features[i], "label": self.labels[i]}
        from cxrbench.data.codecs import read_image
        from cxrbench.data.transforms import mgca_image

        augment = self.train and self.cfg.probe.augment
        if augment and self.cfg.probe.policy == "moco2":
            from cxrbench.data.transforms import moco2_image

            image = moco2_image(
                read_image(self.items.paths[i]), self.cfg.image.resize, self.cfg.image.crop
            )
            return {"image": image, "label": self.labels[i]}
        image = mgca_image(
            read_image(self.items.paths[i]),
            self.cfg.image.resize,
            self.cfg.image.crop,
            train=augment,
        )
        return {"image": image, "label": self.labels[i]}


def cached_features(
    task: Task, cfg: TaskConfig, data: TaskData, encoder: nn.Module, sha: str, cache: FeatureCache
) -> dict[str, torch.Tensor]:
    """Features of the train fraction, val and test from the cache (whole parts are cached)."""
    transform = {"resize": cfg.image.resize, "crop": cfg.image.crop, "view": "centre"}
    out = {}
    for part, items in (("train", data.train_all), ("val", data.val), ("test", data.test)):
        key = feature_key(sha, task.dataset, part, items.ids, transform, files_stamp(items.paths))
        out[part] = cache.features(
            key,
            encoder,
            items.paths,
            cfg.image.resize,
            cfg.image.crop,
            cfg.train.feature_batch_size,
        )
    row = {ident: k for k, ident in enumerate(data.train_all.ids)}
    out["train"] = out["train"][[row[i] for i in data.train.ids]]
    return out


@SYSTEMS.register("classification")
class ClassificationSystem(TransferSystem):
    @classmethod
    def prepare(
        cls,
        task: Task,
        cfg: TaskConfig,
        data: TaskData,
        encoder: nn.Module,
        meta: dict[str, Any],
        cache: FeatureCache,
    ) -> Prepared:
        cached = not cfg.probe.augment and not cfg.probe.finetune
        identity = feature_identity(meta)
        feats = cached_features(task, cfg, data, encoder, identity, cache) if cached else None
        head = nn.Linear(meta["feature_dims"]["pooled"], len(data.classes))
        system = cls(
            head, cfg, data.label_kind, task.metric, data.classes, None if cached else encoder
        )
        loaders = []
        for part, items in (("train", data.train), ("val", data.val), ("test", data.test)):
            rows = _Rows(items, feats[part] if feats else None, cfg, train=part == "train")
            workers = 0 if feats else cfg.train.workers
            loaders.append(loader(rows, cfg, train=part == "train", workers=workers))
        train, val, test = loaders
        return Prepared(system, train, val, test, probe_mode(cfg.probe, cached))

    def __init__(
        self,
        head: nn.Module,
        cfg: TaskConfig,
        label_kind: str,
        metric: str,
        class_names: tuple[str, ...],
        encoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.head = head
        self.encoder = encoder
        self.cfg = cfg
        self.label_kind = label_kind
        self.metric = metric
        self.class_names = class_names
        self._test_logits: list[torch.Tensor] = []
        self._test_labels: list[torch.Tensor] = []

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        if "features" in batch:
            return self.head(batch["features"])
        assert self.encoder is not None, "image batches need the encoder"
        if self.cfg.probe.finetune:
            return self.head(self.encoder(batch["image"]).pooled)
        self.encoder.eval()  # frozen: BatchNorm statistics stay those of pre-training
        with torch.no_grad():
            features = self.encoder(batch["image"]).pooled
        return self.head(features.float())

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.label_kind == "multiclass":
            return F.cross_entropy(logits.float(), labels.argmax(dim=1))
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._loss(self(batch), batch["label"])
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(batch["label"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss = self._loss(self(batch), batch["label"])
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=len(batch["label"]))

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._test_logits.append(self(batch).float().cpu())
        self._test_labels.append(batch["label"].float().cpu())

    def on_test_epoch_end(self) -> None:
        from cxrbench.metrics.classification import MetricError, accuracy, macro_auroc

        logits = torch.cat(self._test_logits)
        labels = torch.cat(self._test_labels)
        self._test_logits, self._test_labels = [], []
        loss = float(self._loss(logits, labels))
        results = {"test/loss": loss}
        if self.label_kind == "multiclass":  # softmax scores; AUROC one class against the rest
            results["test/accuracy"] = accuracy(logits.numpy(), labels.numpy())
            scores = torch.softmax(logits, dim=1).numpy()
        else:
            scores = torch.sigmoid(logits).numpy()
        try:
            results["test/auroc"] = macro_auroc(scores, labels.numpy(), list(self.class_names))
        except MetricError:
            if self.metric == "auroc":
                raise  # the headline: its error names the class without positives
        value = results[f"test/{self.metric}"]
        self.test_results = {f"test/{self.metric}": float(value), **results}
        self.test_predictions = {
            "label_kind": np.asarray(self.label_kind),
            "classes": np.asarray([str(c) for c in self.class_names]),
            "targets": labels.numpy(),
            "scores": scores,  # what the metrics above were computed from
        }
        self.log(f"test/{self.metric}", float(value))

    def configure_optimizers(self) -> Any:
        o = self.cfg.optim
        groups: list[dict[str, Any]] = [{"params": list(self.head.parameters()), "lr": o.lr}]
        if self.cfg.probe.finetune and self.encoder is not None:
            groups.append(
                {
                    "params": [p for p in self.encoder.parameters() if p.requires_grad],
                    "lr": o.lr * o.encoder_lr_scale,
                }
            )
        return self.adamw(groups, o)
