"""One transfer job: encoder artifact + task + label fraction + seed → ``result.json``.

The run directory holds ``config.yaml`` (the resolved protocol and its hash),
``checkpoints/{best,last}.ckpt``, ``predictions.npz`` (the test-set predictions the metrics were
computed from, :mod:`cxrbench.predictions`; its sha256 is in the record) and, written last and
atomically, ``result.json``: a finished run is skipped, an interrupted one resumes from
``last.ckpt`` (RNG states included, so it ends with the same numbers as an uninterrupted run),
and a run folder made with another config is refused.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import OmegaConf

from cxrbench.config import load_yaml, to_plain
from cxrbench.data.features import FeatureCache
from cxrbench.errors import CxrbenchError
from cxrbench.log import quiet_libraries
from cxrbench.models.artifact import load_encoder
from cxrbench.models.backbones import freeze
from cxrbench.provenance import code_version, device_name
from cxrbench.report.schema import ResultRecord
from cxrbench.report.store import read_record, write_record
from cxrbench.runner.resolve import TransferJob
from cxrbench.runs import (
    LAST_CHECKPOINT,
    PREDICTIONS_FILE,
    RESULT_FILE,
    finished,
    has_progress,
    reopen,
)
from cxrbench.utils.io import atomic_write_text
from cxrbench.utils.lock import exclusive

log = logging.getLogger(__name__)
#: Lightning's warning about modules in eval mode: expected for a frozen encoder, so silenced there
EVAL_MODE_WARNING = r"Found \d+ module\(s\) in eval mode at the start of training"


def _trainer(
    job: TransferJob, run_dir: Path, monitor: str, mode: str, train: Any
) -> tuple[L.Trainer, Any]:
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar
    from lightning.pytorch.loggers import CSVLogger

    from cxrbench.runner.checkpoints import AtomicCheckpointIO
    from cxrbench.systems.averaging import AverageCallback
    from cxrbench.systems.callbacks import LoaderPosition, RNGState, WallClock

    quiet_libraries()
    t, c = job.cfg.trainer, job.cfg.train
    best = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor=monitor,
        mode=mode,
        save_last=True,
        enable_version_counter=False,
    )
    callbacks: list[Any] = [
        best,
        RNGState(),
        WallClock(),
        EarlyStopping(monitor=monitor, mode=mode, patience=c.patience),
    ]
    if c.ema:  # validate, select and test the weights' moving average (systems/averaging.py)
        callbacks.append(AverageCallback())
    if hasattr(train, "load_state_dict"):  # a ResumableLoader: its position is checkpointed
        callbacks.append(LoaderPosition(train))
    if t.checkpoint_every:  # mid-epoch resume points as well (the same file: newer state wins)
        callbacks.append(ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last",
                                         save_top_k=1, enable_version_counter=False,
                                         every_n_train_steps=t.checkpoint_every))  # fmt: skip
    if t.progress:
        callbacks.append(RichProgressBar(leave=False))
    trainer = L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        precision=t.precision,  # type: ignore[arg-type]
        max_epochs=c.max_epochs,
        check_val_every_n_epoch=c.val_every,  # early stopping's patience counts validations
        default_root_dir=run_dir,
        callbacks=callbacks,
        logger=CSVLogger(run_dir, name="logs"),
        enable_progress_bar=t.progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        deterministic=True,
        use_distributed_sampler=False,  # the train loader orders itself (data/resumable.py)
        plugins=[AtomicCheckpointIO()],
    )
    return trainer, best


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
    row: str | None = None,
) -> ResultRecord:
    """Run (or resume, or skip when done) one transfer job and return its result record.

    The system of the task's kind (``SYSTEMS``) builds the head and the loaders; everything else
    (identity, encoder, seeding, checkpoints, resume, the record) is the same for every kind.
    One process at a time works in ``run_dir``. ``row``: the record's method for an encoder the
    suite names (``Suite.encoders``); by default the artifact's method."""
    if job.fraction is not None and not math.isclose(job.fraction, fraction):
        raise CxrbenchError(
            f"{job.task.name}: the protocol was resolved for fraction {job.fraction:g}, the run "
            f"is at {fraction:g}; load the task with fraction={fraction:g}"
        )
    run_dir = Path(run_dir)
    with exclusive(run_dir):  # a second process waits, then finds the result
        return _run_transfer(job, Path(artifact), Path(data_root), fraction, seed, run_dir,
                             cache, suite, row)  # fmt: skip


def _run_transfer(
    job: TransferJob,
    artifact: Path,
    data_root: Path,
    fraction: float,
    seed: int,
    run_dir: Path,
    cache: FeatureCache,
    suite: str,
    row: str | None = None,
) -> ResultRecord:
    from cxrbench.systems import SYSTEMS, averaging

    result = run_dir / RESULT_FILE
    _claim(run_dir, job, artifact)
    if finished("transfer", run_dir):
        return read_record(result)
    reopen(run_dir)  # orphan temp files of killed writes removed
    start = time.perf_counter()
    system_cls = SYSTEMS.get(job.task.kind)
    if not system_cls.trains:  # zero-shot, retrieval: an EvaluationSystem
        return _run_evaluation(job, system_cls, artifact, data_root, fraction, seed, run_dir,
                               suite, row, start)  # fmt: skip
    encoder, meta = load_encoder(Path(artifact))
    data = job.task.data(Path(data_root), fraction)
    if not job.cfg.probe.finetune:
        freeze(encoder)
    L.seed_everything(seed, workers=True, verbose=False)
    prepared = system_cls.prepare(job.task, job.cfg, data, encoder, meta, cache)
    system = prepared.system
    if job.cfg.train.ema:  # before the trainer: its callback and every checkpoint need it
        averaging.attach(system, job.cfg.train.ema)
    selected = system.fit_without_trainer(prepared, run_dir)
    if selected is not None:  # trained, selected and tested without a Trainer (seconds)
        earlier, device = 0.0, device_name(torch.device("cpu"))
    else:
        earlier, selected, device = _fit_and_test(job, system, prepared, system_cls, run_dir)
    predictions_sha256 = _write_predictions(run_dir, job, system, data.test.ids)
    metrics = {**system.test_results, system_cls.monitor: selected}
    record = _record(
        job, meta, data, suite=suite, row=row, fraction=fraction, seed=seed, metrics=metrics,
        probe_mode=prepared.probe_mode,
        wall_seconds=round(earlier + time.perf_counter() - start, 2),  # all attempts
        device=device, predictions_sha256=predictions_sha256,
        extra=_encoder_source(meta) if row else {},
    )  # fmt: skip
    write_record(result, record)  # last: the run's "finished" marker
    return record


def _fit_and_test(
    job: TransferJob, system: Any, prepared: Any, system_cls: Any, run_dir: Path
) -> tuple[float, float, str]:
    """Fit (resuming from ``last.ckpt``) and test the best checkpoint with a Lightning Trainer;
    (training seconds of earlier attempts, the selected monitor value, the device's name)."""
    from cxrbench.runner.checkpoints import resume_point
    from cxrbench.systems.callbacks import WallClock

    trainer, best = _trainer(job, run_dir, system_cls.monitor, system_cls.monitor_mode,
                             prepared.train)  # fmt: skip
    last = run_dir / LAST_CHECKPOINT
    with warnings.catch_warnings():
        if not job.cfg.probe.finetune:  # a frozen encoder is in eval mode on purpose
            warnings.filterwarnings("ignore", message=EVAL_MODE_WARNING)
        trainer.fit(
            system,
            prepared.train,
            prepared.val,
            ckpt_path=resume_point(last),
            weights_only=True,
        )
    clock = next(c for c in trainer.callbacks if isinstance(c, WallClock))  # type: ignore[attr-defined]
    # seconds of the attempts before this one: read now, as testing from the best checkpoint
    # restores the clock's state of that checkpoint
    earlier = clock.before
    trainer.test(
        system,
        prepared.test,
        ckpt_path=best.best_model_path or None,
        verbose=False,
        weights_only=True,
    )
    selected = float(best.best_model_score if best.best_model_score is not None else float("nan"))
    return earlier, selected, device_name(trainer.strategy.root_device)


def _record(
    job: TransferJob,
    meta: dict[str, Any],
    data: Any,
    *,
    suite: str,
    row: str | None,
    fraction: float,
    seed: int,
    metrics: dict[str, float],
    probe_mode: str,
    wall_seconds: float,
    device: str,
    predictions_sha256: str,
    extra: dict[str, Any],
) -> ResultRecord:
    """The record of a finished run: the job's identity, the encoder's (``meta``: its method,
    sha256 and pre-training seed) and the data's (split hash, fingerprint), with the results."""
    return ResultRecord(
        suite=suite,
        method=row or str(meta["method"]),
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
        probe_mode=probe_mode,
        wall_seconds=wall_seconds,
        device=device,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        predictions_sha256=predictions_sha256,
        extra=extra,
    )


def vision_language(artifact: Path, data_root: Path) -> Path:
    """The vision–language artifact of an encoder artifact: ``vl/`` beside it, written from the
    pre-training run folder it sits in when missing (``runner.pretrain.export_vl_from_run``)."""
    from cxrbench.models.vl_artifact import VL_DIR, VL_META, VLArtifactError

    run = Path(artifact).parent
    if (run / VL_DIR / VL_META).is_file():
        return run / VL_DIR
    if not (run / "config.yaml").is_file():
        raise VLArtifactError(
            f"{artifact}: no vision–language artifact beside it ({run / VL_DIR}), and it is not "
            "in a pre-training run folder to export one from; zero-shot and retrieval tasks need "
            "the method's text side (an imported image encoder has none)"
        )
    from cxrbench.runner.pretrain import export_vl_from_run

    log.info("exporting the text side of %s for zero-shot / retrieval tasks", run)
    return export_vl_from_run(run, data_root)


def _run_evaluation(
    job: TransferJob,
    system_cls: Any,
    artifact: Path,
    data_root: Path,
    fraction: float,
    seed: int,
    run_dir: Path,
    suite: str,
    row: str | None,
    start: float,
) -> ResultRecord:
    """A task kind that trains nothing: the method rebuilt from its vision–language artifact is
    evaluated once (no checkpoints: a killed run simply starts again)."""
    from cxrbench.models.vl_artifact import load_vl

    quiet_libraries()
    vl_dir = vision_language(artifact, data_root)
    method, vl_meta = load_vl(vl_dir, artifact)
    data = job.task.data(data_root, fraction)
    L.seed_everything(seed, workers=True, verbose=False)
    evaluated = system_cls.evaluate(job.task, job.cfg, data, method)
    predictions_sha256 = _write_predictions(run_dir, job, evaluated, data.test.ids)
    meta = {"method": vl_meta["method"], "sha256": vl_meta["encoder_sha256"],
            "extra": {"pretrain_seed": vl_meta["pretrain_config"].get("seed", 0)}}  # fmt: skip
    record = _record(
        job, meta, data, suite=suite, row=row, fraction=fraction, seed=seed,
        metrics=dict(evaluated.test_results), probe_mode=evaluated.probe_mode,
        wall_seconds=round(time.perf_counter() - start, 2),
        device=device_name(torch.device("cpu")), predictions_sha256=predictions_sha256,
        extra={**evaluated.extra, "vl_heads_sha256": vl_meta["heads_sha256"],
               "text_sha256": vl_meta["text_files"].get("model.safetensors", "")},
    )  # fmt: skip
    write_record(run_dir / RESULT_FILE, record)
    return record


def _encoder_source(meta: dict[str, Any]) -> dict[str, Any]:
    """Where a given encoder came from, for its table label: the imported checkpoint's format
    and sha256 (``cxrbench import``), or the method that pre-trained it."""
    imported = meta.get("extra", {}).get("imported")
    if imported:
        return {"encoder_source": {"imported": imported["format"],
                                   "checkpoint_sha256": imported["source_sha256"]}}  # fmt: skip
    return {"encoder_source": {"method": meta["method"]}}


def _write_predictions(run_dir: Path, job: TransferJob, system: Any, ids: list[str]) -> str:
    """Write the system's ``test_predictions`` with the test ids as ``predictions.npz`` (before
    the record, atomically); its sha256, or "" for a system that hands over none."""
    from cxrbench.predictions import write_predictions

    arrays = dict(getattr(system, "test_predictions", None) or {})
    if not arrays:
        return ""
    seen = arrays.pop("image_ids", None)  # the ids the system saw, when its batches carry them
    if seen is not None and [str(i) for i in seen] != [str(i) for i in ids]:
        raise CxrbenchError(
            f"{job.task.name}: the test loader gave {len(seen)} images not in the order of the "
            f"test split's {len(ids)} ids; predictions could not be matched to images"
        )
    arrays.update(kind=job.task.kind, task=job.task.name, ids=[str(i) for i in ids])
    return write_predictions(run_dir / PREDICTIONS_FILE, arrays)


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
        differs = [k for k in ("config_hash", "encoder_sha256") if stored.get(k) != identity[k]]
        if not differs:
            return
        key = differs[0]
        if has_progress(run_dir):
            raise CxrbenchError(
                f"{run_dir}: holds a run with {key} {stored.get(key)}, this run has "
                f"{identity[key]}; delete the folder (or pass --force) to re-run it"
            )
        log.info("%s: its run (%s %s) saved nothing; starting this one there", run_dir, key,
                 stored.get(key))  # fmt: skip
    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(identity)))
