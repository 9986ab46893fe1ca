"""PretrainSystem: one LightningModule for every pre-training method.

It asks the method for its named loss terms, weights them (``loss_weights``; 1 for a term not
named), sums and logs each (``train/<term>``, ``val/<term>``), and owns optimisation: AdamW with
decay on matrices only, linear warm-up then cosine decay per step, gradient clipping (through the
Trainer), bf16 autocast on GPUs (Trainer precision). Under DDP the losses that need the global
batch gather it themselves (``losses/distributed.py``); the system is unchanged.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from cxrbench.errors import ConfigError
from cxrbench.methods.base import PretrainConfig, PretrainMethod
from cxrbench.systems.schedule import param_groups, warmup_cosine


class PretrainSystem(L.LightningModule):
    def __init__(self, method: PretrainMethod, cfg: PretrainConfig) -> None:
        super().__init__()
        self.method = method
        self.cfg = cfg
        self._checked_weights = False

    def _total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        if not self._checked_weights:
            unknown = sorted(set(self.cfg.loss_weights) - set(terms))
            if unknown:
                raise ConfigError(
                    None,
                    f"loss_weights.{unknown[0]}",
                    f"method {self.cfg.method!r} has no loss term {unknown[0]!r}; "
                    f"its terms: {', '.join(sorted(terms))}",
                )
            self._checked_weights = True
        weights = self.cfg.loss_weights
        return sum((weights.get(k, 1.0) * v for k, v in terms.items()), torch.zeros(()))

    def _log_terms(self, stage: str, terms: dict[str, torch.Tensor], total: torch.Tensor) -> None:
        batch_size = self.cfg.data.batch_size
        on_step = stage == "train"
        for key, value in terms.items():
            self.log(f"{stage}/{key}", value.detach(), on_step=on_step, on_epoch=True,
                     batch_size=batch_size, sync_dist=not on_step)  # fmt: skip
        self.log(f"{stage}/loss", total.detach(), on_step=on_step, on_epoch=True,
                 prog_bar=True, batch_size=batch_size, sync_dist=not on_step)  # fmt: skip

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.method.on_train_step_start(self.global_step, self.current_epoch)
        terms = self.method.losses(batch)
        total = self._total(terms).to(next(iter(terms.values())).device)
        if not torch.isfinite(total):
            raise FloatingPointError(
                f"non-finite pre-training loss at step {self.global_step}: "
                + ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
            )
        self._log_terms("train", terms, total)
        return total

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        terms = self.method.losses(batch)
        self._log_terms("val", terms, self._total(terms).to(next(iter(terms.values())).device))

    def configure_optimizers(self) -> Any:
        o = self.cfg.optim
        groups = param_groups(self.method.named_parameters(), o.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=(o.betas[0], o.betas[1]))
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = warmup_cosine(optimizer, total, o.warmup, o.min_lr_ratio)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
