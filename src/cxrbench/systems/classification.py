"""ClassificationSystem: a linear head on a frozen (or fine-tuned) encoder.

Batches carry either cached ``features`` (frozen encoder, no augmentation: the default) or
``image`` tensors (MGCA-exact augmentation, or ``finetune``). Loss: BCE per class for multi-label
tasks, cross-entropy for multi-class ones. Validation loss drives early stopping and checkpoint
selection; the test epoch gathers every prediction and computes the task's metric over the whole
test set (never an average of batch metrics).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.tasks.base import TaskConfig


class ClassificationSystem(L.LightningModule):
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
        self.test_results: dict[str, float] = {}

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
        from cxrbench.metrics.classification import accuracy, macro_auroc

        logits = torch.cat(self._test_logits)
        labels = torch.cat(self._test_labels)
        self._test_logits, self._test_labels = [], []
        loss = float(self._loss(logits, labels))
        if self.metric == "accuracy":
            value = accuracy(logits.numpy(), labels.numpy())
        else:
            scores = torch.sigmoid(logits).numpy()
            value = macro_auroc(scores, labels.numpy(), class_names=list(self.class_names))
        self.test_results = {f"test/{self.metric}": float(value), "test/loss": loss}
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
        return torch.optim.AdamW(
            groups, weight_decay=o.weight_decay, betas=(o.betas[0], o.betas[1])
        )
