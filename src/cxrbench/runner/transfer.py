"""One transfer job: encoder artifact + task + label fraction + seed → ``result.json``.

The run directory holds ``config.yaml`` (the resolved protocol and its hash),
``checkpoints/{best,last}.ckpt`` and, written last and atomically, ``result.json``: a finished
run is skipped, an interrupted one resumes from ``last.ckpt`` (RNG states included, so it ends
with the same numbers as an uninterrupted run), and a run folder made with another config is
refused.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset

from cxrbench.config import (
    build,
    config_hash,
    load_yaml,
    packaged_config,
    parse_overrides,
    to_plain,
    without_keys,
)
from cxrbench.data.features import FeatureCache, feature_key
from cxrbench.errors import CxrbenchError
from cxrbench.log import quiet_libraries
from cxrbench.models.artifact import load_encoder
from cxrbench.models.backbones import freeze
from cxrbench.report.schema import ResultRecord
from cxrbench.report.store import read_record, write_record
from cxrbench.runner.pretrain import preset_section
from cxrbench.runner.provenance import code_version, device_name
from cxrbench.tasks import TASKS
from cxrbench.tasks.base import Items, Task, TaskConfig, TaskData
from cxrbench.utils.io import atomic_write_text

log = logging.getLogger(__name__)
NON_RESULT_KEYS = ("train.workers", "trainer.progress", "train.feature_batch_size", "data")


@dataclass(frozen=True)
class TransferJob:
    task: Task
    cfg: TaskConfig
    config_hash: str


def load_task(name: str, preset: str = "small", overrides: list[str] | None = None) -> TransferJob:
    """Validate ``configs/task/<name>.yaml`` + the preset's ``transfer:`` + ``--set`` overrides."""
    cls = TASKS.get(name)
    layers = [
        load_yaml(packaged_config("task", name)),
        preset_section(preset, "transfer"),
        parse_overrides(overrides or []),
    ]
    cfg = build(TaskConfig, layers)
    if cfg.dataset != cls.dataset:
        raise CxrbenchError(f"task {name!r} reads {cls.dataset!r}, its config says {cfg.dataset!r}")
    ignored = [*NON_RESULT_KEYS, *([] if cfg.probe.augment else ["probe.policy"])]
    plain = without_keys(to_plain(cfg), ignored)  # the policy only matters when augmenting
    plain["task"] = {"name": name, **cls.describe()}
    return TransferJob(cls(name, cfg), cfg, config_hash(plain))


class _Rows(Dataset[dict[str, Any]]):
    """Cached features (or images, transformed on the fly) with their labels."""

    def __init__(self, items: Items, features: torch.Tensor | None, cfg: TaskConfig, train: bool):
        self.items, self.features, self.cfg, self.train = items, features, cfg, train
        self.labels = torch.from_numpy(items.labels)

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


def _cached_features(
    job: TransferJob, data: TaskData, encoder: Any, sha: str, cache: FeatureCache
) -> dict[str, torch.Tensor]:
    """Features of the train fraction, val and test from the cache (whole parts are cached)."""
    c = job.cfg
    transform = {"resize": c.image.resize, "crop": c.image.crop, "view": "centre"}
    out = {}
    for part, items in (("train", data.train_all), ("val", data.val), ("test", data.test)):
        key = feature_key(sha, job.task.dataset, part, items.ids, transform)
        out[part] = cache.features(
            key, encoder, items.paths, c.image.resize, c.image.crop, c.train.feature_batch_size
        )
    row = {ident: k for k, ident in enumerate(data.train_all.ids)}
    out["train"] = out["train"][[row[i] for i in data.train.ids]]
    return out


def _trainer(job: TransferJob, run_dir: Path) -> tuple[L.Trainer, Any]:
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar
    from lightning.pytorch.loggers import CSVLogger

    from cxrbench.systems.callbacks import RNGState

    quiet_libraries()
    t, c = job.cfg.trainer, job.cfg.train
    best = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor="val/loss",
        mode="min",
        save_last=True,
        enable_version_counter=False,
    )
    callbacks: list[Any] = [
        best,
        RNGState(),
        EarlyStopping(monitor="val/loss", mode="min", patience=c.patience),
    ]
    if t.progress:
        callbacks.append(RichProgressBar(leave=False))
    trainer = L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        precision=t.precision,  # type: ignore[arg-type]
        max_epochs=c.max_epochs,
        default_root_dir=run_dir,
        callbacks=callbacks,
        logger=CSVLogger(run_dir, name="logs"),
        enable_progress_bar=t.progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        deterministic=True,
    )
    return trainer, best


def _loaders(job: TransferJob, data: TaskData, feats: dict[str, torch.Tensor] | None) -> list[Any]:
    c = job.cfg.train
    loaders = []
    for part, items in (("train", data.train), ("val", data.val), ("test", data.test)):
        rows = _Rows(items, feats[part] if feats else None, job.cfg, train=part == "train")
        workers = 0 if feats else c.workers
        loaders.append(
            DataLoader(
                rows,
                batch_size=c.batch_size,
                shuffle=part == "train",
                num_workers=workers,
                persistent_workers=workers > 0,
            )
        )
    return loaders


def run_transfer(
    job: TransferJob,
    artifact: Path,
    data_root: Path,
    *,
    fraction: float,
    seed: int,
    run_dir: Path,
    cache: FeatureCache,
    suite: str = "adhoc",
) -> ResultRecord:
    """Run (or resume, or skip when done) one transfer job and return its result record."""
    from cxrbench.systems.classification import ClassificationSystem

    run_dir = Path(run_dir)
    result = run_dir / "result.json"
    _claim(run_dir, job, artifact)
    if result.is_file():
        return read_record(result)
    start = time.perf_counter()
    encoder, meta = load_encoder(Path(artifact))
    data = job.task.data(Path(data_root), fraction)
    cached = not job.cfg.probe.augment and not job.cfg.probe.finetune
    if not job.cfg.probe.finetune:
        freeze(encoder)
    feats = _cached_features(job, data, encoder, meta["sha256"], cache) if cached else None
    L.seed_everything(seed, workers=True, verbose=False)
    head = torch.nn.Linear(meta["feature_dims"]["pooled"], len(data.classes))
    system = ClassificationSystem(
        head, job.cfg, data.label_kind, job.task.metric, data.classes, None if cached else encoder
    )
    trainer, best = _trainer(job, run_dir)
    train, val, test = _loaders(job, data, feats)
    last = run_dir / "checkpoints" / "last.ckpt"
    trainer.fit(system, train, val, ckpt_path=last if last.is_file() else None, weights_only=True)
    trainer.test(
        system, test, ckpt_path=best.best_model_path or None, verbose=False, weights_only=True
    )
    metrics = {**system.test_results, "val/loss": float(best.best_model_score or float("nan"))}
    record = ResultRecord(
        suite=suite,
        method=str(meta["method"]),
        task=job.task.name,
        task_version=job.task.version,
        fraction=fraction,
        seed=seed,
        pretrain_seed=int(meta.get("extra", {}).get("pretrain_seed", 0)),
        metric=f"test/{job.task.metric}",
        higher_is_better=job.task.higher_is_better,
        metrics=metrics,
        config_hash=job.config_hash,
        code_version=code_version(),
        encoder_sha256=str(meta["sha256"]),
        split_hash=data.split_hash,
        data_fingerprint=data.fingerprint,
        probe_mode="cached" if cached else "augment",
        wall_seconds=round(time.perf_counter() - start, 2),
        device=device_name(trainer.strategy.root_device),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    write_record(result, record)
    return record


def _claim(run_dir: Path, job: TransferJob, artifact: Path) -> None:
    """Write the run's identity once; a folder holding another config or encoder is refused."""
    from cxrbench.models.artifact import encoder_sha256

    identity = {
        "config_hash": job.config_hash,
        "encoder_sha256": encoder_sha256(artifact),
        "task": job.task.name,
        "protocol": to_plain(job.cfg),
    }
    path = run_dir / "config.yaml"
    if path.is_file():
        stored = load_yaml(path).values
        for key in ("config_hash", "encoder_sha256"):
            if stored.get(key) != identity[key]:
                raise CxrbenchError(
                    f"{run_dir}: holds a run with {key} {stored.get(key)}, this run has "
                    f"{identity[key]}; delete the folder (or pass --force) to re-run it"
                )
        return
    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(identity)))
