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

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from cxrbench.data.features import FeatureCache, feature_key, files_stamp
from cxrbench.data.store import ImageStore, read_resized
from cxrbench.models.artifact import feature_identity
from cxrbench.systems import SYSTEMS
from cxrbench.systems.base import Prepared, TransferSystem, loader
from cxrbench.tasks.base import Items, Task, TaskConfig, TaskData, probe_mode
from cxrbench.utils.io import atomic_write_text


class _Rows(Dataset[dict[str, Any]]):
    """Cached features (or images, transformed on the fly) with their labels."""

    def __init__(
        self,
        items: Items,
        features: torch.Tensor | None,
        cfg: TaskConfig,
        train: bool,
        store: ImageStore | None = None,
    ):
        self.items, self.features, self.cfg, self.train = items, features, cfg, train
        self.store = store
        self.labels = torch.from_numpy(items.labels)
        # cached feature rows draw nothing: their loader skips the per-item seeding
        self.draws_random = features is None

    def __len__(self) -> int:
        return len(self.items.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.features is not None:
            return {"features": self.features[i], "label": self.labels[i]}
        from cxrbench.data.transforms import mgca_image

        augment = self.train and self.cfg.probe.augment
        raw = read_resized(self.items.paths[i], self.cfg.image.resize, self.store)
        if augment and self.cfg.probe.policy == "moco2":
            from cxrbench.data.transforms import moco2_image

            image = moco2_image(raw, self.cfg.image.resize, self.cfg.image.crop)
            return {"image": image, "label": self.labels[i]}
        image = mgca_image(
            raw,
            self.cfg.image.resize,
            self.cfg.image.crop,
            train=augment,
        )
        return {"image": image, "label": self.labels[i]}


def image_store(
    task: Task, cfg: TaskConfig, data: TaskData, cache: FeatureCache
) -> ImageStore | None:
    """The image store of the task's images (``image.store``), beside the feature cache
    (``<cache>/../images``); None when off."""
    if cfg.image.store == "off":
        return None
    paths = [p for items in (data.train_all, data.val, data.test) for p in items.paths]
    return ImageStore.ensure(paths, cfg.image.resize,
                             cache_root=cache.root.parent / "images",
                             decoder=cfg.image.store, progress=cfg.trainer.progress)  # fmt: skip


def cached_features(
    task: Task,
    cfg: TaskConfig,
    data: TaskData,
    encoder: nn.Module,
    sha: str,
    cache: FeatureCache,
    store: ImageStore | None = None,
) -> dict[str, torch.Tensor]:
    """Features of the train fraction, val and test from the cache (whole parts are cached)."""
    transform = {"resize": cfg.image.resize, "crop": cfg.image.crop, "view": "centre",
                 **(store.identity if store is not None else {})}  # fmt: skip
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
            store=store,
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
        store = image_store(task, cfg, data, cache)
        feats = None
        if cached:
            feats = cached_features(task, cfg, data, encoder, identity, cache, store)
        head = nn.Linear(meta["feature_dims"]["pooled"], len(data.classes))
        system = cls(
            head, cfg, data.label_kind, task.metric, data.classes, None if cached else encoder
        )
        loaders = []
        for part, items in (("train", data.train), ("val", data.val), ("test", data.test)):
            rows = _Rows(items, feats[part] if feats else None, cfg, part == "train", store)
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
        logits = torch.cat(self._test_logits)
        labels = torch.cat(self._test_labels)
        self._test_logits, self._test_labels = [], []
        self.log(f"test/{self.metric}", self._finish_test(logits, labels))

    def _finish_test(self, logits: torch.Tensor, labels: torch.Tensor) -> float:
        """``test_results`` and ``test_predictions`` from the whole test set's logits; the
        headline metric's value."""
        from cxrbench.metrics.classification import MetricError, accuracy, macro_auroc

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
        value = float(results[f"test/{self.metric}"])
        self.test_results = {f"test/{self.metric}": value, **results}
        self.test_predictions = {
            "label_kind": np.asarray(self.label_kind),
            "classes": np.asarray([str(c) for c in self.class_names]),
            "targets": labels.numpy(),
            "scores": scores,  # what the metrics above were computed from
        }
        return value

    def fit_without_trainer(self, prepared: Prepared, run_dir: Path) -> float | None:
        """The linear probe on cached features as a tensor loop (:func:`fit_probe`), when the
        run is one the loop reproduces: cached features, fp32, one device, no weight averaging,
        a constant lr. Anything else (and ``trainer.loop: lightning``) takes the Trainer."""
        c = self.cfg
        if (
            c.trainer.loop != "auto"
            or self.encoder is not None
            or c.train.ema
            or c.optim.schedule != "constant"
            or c.trainer.devices != 1
            or c.trainer.precision not in FP32
        ):
            return None
        return fit_probe(self, prepared, run_dir / "logs" / "probe_loop.csv")

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


FP32 = ("32-true", "32", 32)  # the Trainer precisions with no autocast


def _rows(loader: Any) -> _Rows:
    """The cached-feature rows behind a loader (a training loader wraps them in SeededItems)."""
    from cxrbench.data.resumable import SeededItems

    rows = loader.dataset
    if isinstance(rows, SeededItems):
        rows = rows.items
    assert isinstance(rows, _Rows) and rows.features is not None
    return rows


def _backward(system: ClassificationSystem, x: torch.Tensor, labels: torch.Tensor) -> None:
    """The gradients of the system's loss on one batch in the head's ``.grad``. Multi-label BCE
    (mean): written out, ``(σ(z) − y) / numel`` back through the linear layer, which is what
    autograd computes, kernel for kernel (bit-identical, tested), at a third of its cost;
    cross-entropy: autograd (its log-softmax backward kernel rounds differently from the
    written-out form)."""
    head = system.head
    if _autograd(system) or not isinstance(head, nn.Linear):
        with torch.enable_grad():
            system._loss(head(x), labels).backward()
        return
    logits = F.linear(x, head.weight, head.bias)
    grad = (logits.sigmoid() - labels.float()).div_(logits.numel())
    head.weight.grad = grad.t().mm(x)
    if head.bias is not None:
        head.bias.grad = grad.sum(0)


def _autograd(system: ClassificationSystem) -> bool:
    """Whether :func:`_backward` takes autograd (cross-entropy, or a head that is not one
    ``nn.Linear``) rather than the written-out BCE gradient."""
    return system.label_kind == "multiclass" or not isinstance(system.head, nn.Linear)


class _AdamW:
    """``torch.optim.AdamW``'s single-tensor update (the one it takes for CPU tensors), op for
    op, without the optimizer's per-step bookkeeping (hooks, the graph-capture health check,
    which queries NVML for CUDA on every step), which cost more than the update of a linear
    head itself. Each parameter group's tensors are moved into one flat buffer (the parameters
    become views of it), so the update is 8 elementwise ops per group, not per tensor; the ops
    are elementwise, so the values are the same. Bit-identical to ``torch.optim.AdamW`` (tested
    through the probe). Call it inside ``torch.no_grad()``."""

    def __init__(self, system: ClassificationSystem) -> None:
        optimizer = system.configure_optimizers()
        if not isinstance(optimizer, torch.optim.AdamW) or any(
            g["amsgrad"] or g["maximize"] or g["fused"] or g["capturable"] or g["differentiable"]
            for g in optimizer.param_groups
        ):
            raise TypeError(f"the probe loop replays a plain AdamW's update, not {optimizer!r}")
        self.groups = []
        for g in optimizer.param_groups:
            params = [p for p in g["params"] if p.requires_grad]
            if not params:
                continue
            flat = torch.cat([p.detach().reshape(-1) for p in params])
            grad = torch.zeros_like(flat)
            views, offset = [], 0
            for p in params:
                n = p.numel()
                p.data = flat[offset : offset + n].view_as(p)  # the parameter lives in ``flat``
                views.append((p, grad[offset : offset + n].view_as(p)))
                offset += n
            hyper = tuple(float(g[k]) for k in ("lr", "weight_decay", "eps"))
            betas = (float(g["betas"][0]), float(g["betas"][1]))
            moments = (torch.zeros_like(flat), torch.zeros_like(flat))
            self.groups.append((flat, grad, views, moments, hyper, betas))
        self.step = 0.0  # torch keeps a float32 tensor: integers, exactly as a Python float

    def zero_grad(self) -> None:
        for _, _, views, *_ in self.groups:
            for p, _ in views:
                p.grad = None

    def __call__(self) -> None:
        self.step += 1
        for flat, grad, views, (exp_avg, exp_avg_sq), (lr, decay, eps), (b1, b2) in self.groups:
            for p, view in views:
                if p.grad is None:
                    raise RuntimeError("the probe loop's AdamW needs every parameter's gradient")
                view.copy_(p.grad)
            bias_correction1 = 1 - b1**self.step
            bias_correction2 = 1 - b2**self.step
            step_size = lr / bias_correction1
            bias_correction2_sqrt = bias_correction2**0.5
            flat.mul_(1 - lr * decay)
            exp_avg.lerp_(grad, 1 - b1)
            exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
            flat.addcdiv_(exp_avg, denom, value=-step_size)


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


@torch.no_grad()
def _mean_loss(system: ClassificationSystem, rows: _Rows, batch_size: int) -> torch.Tensor:
    """The epoch's val loss as Lightning's ``log(on_epoch=True, batch_size=b)`` computes it: the
    float32 sum of batch losses times batch sizes, divided by the number of rows."""
    total, count = torch.tensor(0.0), torch.tensor(0)
    assert rows.features is not None
    for part in _batches(len(rows), batch_size):
        labels = rows.labels[part]
        total = total + system._loss(system.head(rows.features[part]), labels) * len(labels)
        count = count + len(labels)
    return total / count


def fit_probe(system: ClassificationSystem, prepared: Prepared, log_path: Path) -> float:
    """Train, select and test a linear head on cached features without a Lightning Trainer.

    The same run as ``run_transfer``'s Trainer makes of it, step for step: the head as
    ``prepare`` initialised it, the training loader's order (its :class:`EpochSampler`: a
    function of the seed and epoch) and batch size, the system's loss and AdamW, validation every
    ``train.val_every`` epochs with the loss averaged as Lightning averages logged values, the
    best checkpoint kept on a strictly lower val loss (a non-finite one counts as +inf, as in
    ``ModelCheckpoint``), early stopping after ``train.patience`` validations without a strictly
    lower val loss or at a non-finite one (``EarlyStopping``), then the test of the kept head in
    the test loader's batches. What it leaves out is the Trainer's cost: per-step hooks,
    callbacks, loaders that collate one row at a time, checkpoint files (a killed loop starts
    again; it takes seconds). It runs at the process's torch thread count, as the Trainer does:
    on one thread a (48 × D) · (D × C) product rounds differently from two (measured: weights 1
    ulp apart after 200 steps at D = 256). On this machine it gives the Trainer's numbers bit for
    bit (``tests/integration/test_probe_loop.py``; the 9 CheXpert / RSNA / COVIDx cells of a
    ``small`` encoder at 1 / 10 / 100%: identical predictions). Writes the val loss of every
    validation to ``log_path`` (CSV). Returns the selected (best) val loss.
    """
    selected = _fit_probe(system, prepared, log_path)
    _test(system, prepared)
    return selected


def _fit_probe(system: ClassificationSystem, prepared: Prepared, log_path: Path) -> float:
    c = system.cfg.train
    train, val = _rows(prepared.train), _rows(prepared.val)
    assert train.features is not None
    sampler = prepared.train.epoch_sampler  # type: ignore[attr-defined]
    batch = int(prepared.train.batch_size or c.batch_size)
    eval_batch = int(prepared.val.batch_size or batch)
    step = _AdamW(system)
    best_score, best_state = torch.tensor(math.inf), None
    stop_best, waited = torch.tensor(math.inf), 0
    lines = ["epoch,val_loss"]
    system.train()
    with torch.no_grad():  # gradients: written out, or autograd inside _backward
        for epoch in range(c.max_epochs):
            order = torch.from_numpy(sampler.order(epoch))
            for part in _batches(len(order), batch):
                index = order[part]
                step.zero_grad()
                _backward(system, train.features[index], train.labels[index])
                step()
            if (epoch + 1) % c.val_every:
                continue
            system.eval()
            current = _mean_loss(system, val, eval_batch)
            system.train()
            lines.append(f"{epoch},{float(current):.9g}")
            score = current if torch.isfinite(current) else torch.tensor(math.inf)
            if best_state is None or bool(score < best_score):  # ModelCheckpoint: kept if better
                best_score = score
                best_state = {k: v.detach().clone() for k, v in system.head.state_dict().items()}
            if not torch.isfinite(current):  # EarlyStopping's check_finite
                break
            if bool(current < stop_best):
                stop_best, waited = current, 0
            else:
                waited += 1
                if waited >= c.patience:
                    break
    atomic_write_text(log_path, "\n".join(lines) + "\n")
    if best_state is not None:  # the Trainer tests the best checkpoint when there is one
        system.head.load_state_dict(best_state)
    return float(best_score) if best_state is not None else math.nan


def _test(system: ClassificationSystem, prepared: Prepared) -> None:
    """The test pass of the kept head, in the test loader's batches."""
    system.eval()
    test = _rows(prepared.test)
    assert test.features is not None
    test_batch = int(prepared.test.batch_size or 1)
    with torch.no_grad():
        logits = [
            system.head(test.features[part]).float() for part in _batches(len(test), test_batch)
        ]
    system._finish_test(torch.cat(logits), test.labels.float())
