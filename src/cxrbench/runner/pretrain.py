"""One pre-training job: config → method → Lightning fit → encoder artifact.

The job's config comes resolved (:func:`cxrbench.runner.resolve.load_config`: the method file
sets the method's own parameters, the preset sizes and schedule). The run directory holds
``config.yaml`` (resolved), ``checkpoints/last.ckpt`` (resume point), ``logs/`` and ``encoder/``
(the artifact); the artifact is written last, so its presence means the run finished.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import OmegaConf

from cxrbench.config import Layer, build, load_yaml, to_plain
from cxrbench.data.roots import dataset_folder
from cxrbench.data.store import DEFAULT_ROOT as DEFAULT_STORE_ROOT
from cxrbench.errors import CxrbenchError
from cxrbench.log import quiet_libraries
from cxrbench.methods import METHODS
from cxrbench.methods.base import PretrainConfig, PretrainMethod
from cxrbench.models.artifact import export_encoder
from cxrbench.models.backbones import build_backbone
from cxrbench.runner.resolve import PretrainJob
from cxrbench.runs import ENCODER_DIR, LAST_CHECKPOINT, finished, has_progress, reopen
from cxrbench.utils.io import atomic_write_text, load_checkpoint, sha256_file
from cxrbench.utils.lock import exclusive

log = logging.getLogger(__name__)


def resolve_text_model(job: PretrainJob, mimic_root: Path, progress: bool) -> Path | None:
    """The text model folder: the configured path, or the corpus-trained BERT for ``auto``."""
    if not METHODS.get(job.cfg.method).needs_text:
        return None
    if job.cfg.text.model != "auto":
        return Path(job.cfg.text.model)
    from cxrbench.models.text_corpus import pretrain_text

    text_preset = "tiny" if job.preset == "tiny" else "small"
    summary = pretrain_text(mimic_root, preset=text_preset, seed=0, progress=progress)
    return Path(summary["path"])


def build_method(job: PretrainJob, text_path: Path | None) -> PretrainMethod:
    """Instantiate backbone, text encoder and method (seeded by the caller)."""
    cfg = job.cfg
    cls = METHODS.get(cfg.method)
    b = cfg.backbone
    options: dict[str, Any] = {"tokens_from": b.tokens_from}
    if b.upsample_to is not None:
        options["upsample_to"] = b.upsample_to
    if b.width is not None:
        options["width"] = b.width
    backbone = build_backbone(b.name, weights=b.weights, image_size=cfg.data.crop, **options)
    text = None
    if text_path is not None:
        from cxrbench.models.text import TextEncoder

        freeze: str | int = int(cfg.text.freeze) if cfg.text.freeze.isdigit() else cfg.text.freeze
        text = TextEncoder.from_pretrained(
            text_path, freeze=freeze, max_length=cfg.text.max_length, layers=cfg.text.layers,
            depth=cfg.text.depth,
        )  # fmt: skip
        text.padding = cfg.text.padding
        if getattr(text.model, "pooler", None) is not None:
            text.model.pooler = None  # type: ignore[assignment]  # unused (we take [CLS]); unused parameters break DDP
        if cfg.text.dropout is not None:
            for module in text.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = cfg.text.dropout
    method: PretrainMethod = cls(job.params, backbone, text, cfg)
    return method


def _loaders(
    job: PretrainJob,
    method: PretrainMethod,
    data_root: Path,
    mimic_root: Path,
    store_root: Path = DEFAULT_STORE_ROOT,
) -> tuple[Any, Any, int]:
    """The training and validation loaders and the number of training pairs; with
    ``data.store`` the images come from the image store under ``store_root``."""
    from cxrbench.data.pretrain import PairDataset, collate, load_pairs, pair_store
    from cxrbench.data.resumable import EvalLoader, ResumableLoader

    d = job.cfg.data
    datasets = {}
    store = None
    for split in ("train", "val"):
        own = method.train_dataset(data_root, split)
        if own is None:
            if d.store != "off" and store is None:
                store = pair_store(mimic_root, d.resize, d.store, store_root,
                                   progress=job.cfg.trainer.progress)  # fmt: skip
            pairs = load_pairs(mimic_root, split, d.limit_pairs if split == "train" else None)
            own = PairDataset(pairs, d.resize, d.crop, train=split == "train", store=store)
        datasets[split] = own
    n_train = len(datasets["train"])  # type: ignore[arg-type]
    common: dict[str, Any] = {
        "batch_size": d.batch_size,
        "num_workers": d.workers,
        "collate_fn": collate,
        "persistent_workers": d.workers > 0,
    }
    # order and augmentation from (seed, epoch, item): a resumed run equals an uninterrupted one
    train = ResumableLoader(datasets["train"], seed=job.cfg.seed, drop_last=n_train > d.batch_size,
                            **common)  # fmt: skip
    val = EvalLoader(datasets["val"], shuffle=False, **common)
    return train, val, n_train


def _trainer(job: PretrainJob, run_dir: Path, train: Any) -> L.Trainer:
    from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
    from lightning.pytorch.loggers import CSVLogger

    from cxrbench.runner.checkpoints import AtomicCheckpointIO
    from cxrbench.systems.callbacks import LoaderPosition, RNGState, WallClock

    quiet_libraries()  # Lightning installs its own handlers when first imported
    t = job.cfg.trainer
    last: dict[str, Any] = {"dirpath": run_dir / "checkpoints", "filename": "last",
                            "save_top_k": 1, "enable_version_counter": False}  # fmt: skip
    callbacks: list[Any] = [ModelCheckpoint(**last), RNGState(), WallClock(), LoaderPosition(train)]
    if t.checkpoint_every:  # and every N steps (the same file: the newer state wins)
        callbacks.append(ModelCheckpoint(**last, every_n_train_steps=t.checkpoint_every))
    if t.progress:
        callbacks.append(RichProgressBar(leave=True))
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,  # type: ignore[arg-type]
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        gradient_clip_val=job.cfg.optim.grad_clip,
        log_every_n_steps=t.log_every,
        check_val_every_n_epoch=t.val_every,
        deterministic=t.deterministic,
        default_root_dir=run_dir,
        logger=CSVLogger(run_dir, name="logs"),  # version_N per attempt: resumes keep logs
        callbacks=callbacks,
        enable_progress_bar=t.progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # the train loader shards itself (data/resumable.py)
        plugins=[AtomicCheckpointIO()],
    )


def run_pretrain(
    job: PretrainJob, data_root: Path, run_dir: Path, store_root: Path = DEFAULT_STORE_ROOT
) -> Path:
    """Pre-train (resuming from ``last.ckpt`` when present) and export the encoder artifact.

    Returns the artifact folder ``run_dir/encoder``. A finished run (artifact present with the
    same config hash) is returned as is. One process at a time works in ``run_dir`` (a second
    waits for the first, then finds its artifact). With ``data.store`` the images are read from
    the image store under ``store_root`` (built there on first use).
    """
    run_dir = Path(run_dir)
    with exclusive(run_dir):
        return _run_pretrain(job, Path(data_root), run_dir, Path(store_root))


def _run_pretrain(job: PretrainJob, data_root: Path, run_dir: Path, store_root: Path) -> Path:
    from cxrbench.runner.checkpoints import resume_point
    from cxrbench.systems.callbacks import WallClock
    from cxrbench.systems.pretrain import PretrainSystem

    artifact = run_dir / ENCODER_DIR
    _check_run_dir(run_dir, job)
    if finished("pretrain", run_dir):
        log.info("encoder artifact already exists: %s", artifact)
        return artifact
    reopen(run_dir)  # orphan temp files of killed writes removed
    start = time.perf_counter()
    cls = METHODS.get(job.cfg.method)
    stats: dict[str, Any] = {"pretrain_seed": job.cfg.seed, "preset": job.preset}
    before = 0.0  # training seconds of earlier attempts of this run (resumed)
    text_path = None
    if cls.trains:  # random_init / imagenet read no data
        mimic_root = dataset_folder("mimic", data_root, job.cfg.data)
        text_path = resolve_text_model(job, mimic_root, job.cfg.trainer.progress)
        if text_path is not None:
            atomic_write_text(run_dir / "text_model.txt", f"{text_path.resolve()}\n")
    L.seed_everything(job.cfg.seed, workers=True, verbose=False)
    method = build_method(job, text_path)
    method.train()  # HF models load in eval mode; frozen parts keep eval through their train()
    if cls.trains:
        stats["corpus_fingerprint"] = corpus_fingerprint(mimic_root)
        train, val, n_train = _loaders(job, method, data_root, mimic_root, store_root)
        trainer = _trainer(job, run_dir, train)
        system = PretrainSystem(method, job.cfg)
        last = run_dir / LAST_CHECKPOINT
        trainer.fit(system, train, val, ckpt_path=resume_point(last), weights_only=True)
        if not trainer.is_global_zero:
            return artifact
        # read progress from the checkpoint: with ddp_spawn this process's trainer never stepped
        done = load_checkpoint(last)
        stats.update(train_examples=n_train, steps=int(done["global_step"]),
                     epochs=int(done["epoch"]) + 1)  # fmt: skip
        clock = next(c for c in trainer.callbacks if isinstance(c, WallClock))  # type: ignore[attr-defined]
        before = clock.before
        if before:
            stats["resumed"] = True
    stats["wall_seconds"] = round(before + time.perf_counter() - start, 2)
    export_encoder(method.image_encoder(), artifact, method=job.cfg.method,
                   config_hash=job.config_hash, extra=stats)  # fmt: skip
    log.info("exported %s encoder to %s (%.1f s)", job.cfg.method, artifact, stats["wall_seconds"])
    return artifact


def _check_run_dir(run_dir: Path, job: PretrainJob) -> None:
    """Write the resolved config; refuse a run folder whose progress (a checkpoint or the
    artifact) was made with another config. A folder whose run saved nothing (it failed before
    its first checkpoint) is taken over: it holds nothing to protect."""
    path = run_dir / "config.yaml"
    text = OmegaConf.to_yaml(OmegaConf.create(
        {"config_hash": job.config_hash, "preset": job.preset, **to_plain(job.cfg)}
    ))  # fmt: skip
    if path.is_file():
        stored = load_yaml(path).values.get("config_hash")
        if stored == job.config_hash:
            return
        if has_progress(run_dir):
            raise CxrbenchError(
                f"{run_dir}: holds a run with config hash {stored}, but this run's hash is "
                f"{job.config_hash}; use another --out or delete the folder"
            )
        log.info("%s: its run (config hash %s) saved nothing; starting this one there",
                 run_dir, stored)  # fmt: skip
    atomic_write_text(path, text)


def default_run_dir(job: PretrainJob, out: Path | None = None) -> Path:
    base = Path(out) if out is not None else Path("results/runs/pretrain")
    return base / job.preset / job.cfg.method / f"s{job.cfg.seed}"


def stored_job(run_dir: Path) -> PretrainJob:
    """The job of a pre-training run folder, from its ``config.yaml`` (not re-merged)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise CxrbenchError(f"{run_dir}: no config.yaml; is this a pre-training run folder?")
    stored = load_yaml(path).values
    if "preset" not in stored or "config_hash" not in stored:
        raise CxrbenchError(f"{path}: not a pre-training run's config (no preset / config_hash)")
    preset = str(stored.pop("preset"))
    stored_hash = str(stored.pop("config_hash"))  # the run's own: its config is not re-merged
    job_cfg = build(PretrainConfig, [Layer(str(path), stored)])
    params: Any = build(METHODS.get(job_cfg.method).Config,
                        [Layer(str(path), stored.get("params", {}))])  # fmt: skip
    return PretrainJob(job_cfg, params, preset, stored_hash)


def _load_trained(method: PretrainMethod, ckpt: Path) -> None:
    state = load_checkpoint(ckpt)["state_dict"]
    prefix = "method."
    method.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})


def export_checkpoint(run_dir: Path, ckpt: Path | None = None, out: Path | None = None) -> Path:
    """Export the encoder of a (possibly unfinished) run from a Lightning checkpoint."""

    run_dir = Path(run_dir)
    job = stored_job(run_dir)
    ckpt = ckpt or run_dir / LAST_CHECKPOINT
    method = build_method(job, _text_path_for_export(job, run_dir))
    _load_trained(method, ckpt)
    target = Path(out) if out is not None else run_dir / "encoder"
    extra = {"pretrain_seed": job.cfg.seed, "checkpoint": str(ckpt)}
    return export_encoder(
        method.image_encoder(),
        target,
        method=job.cfg.method,
        config_hash=job.config_hash,
        extra=extra,
    )


def export_vl_from_run(run_dir: Path, data_root: Path | None = None) -> Path:
    """Write ``RUN/vl``, the vision–language artifact (``models/vl_artifact.py``), of a finished
    pre-training run, for zero-shot and retrieval tasks; returns it (as is when present).

    A trained method's text side and heads come from ``checkpoints/last.ckpt``, saved after the
    last step; a method that trains nothing (``random_init``) is rebuilt from its seed with the
    text tower every method starts from (``text.model``, ``auto``: the corpus BERT, which needs
    ``data_root``). Either way the image encoder rebuilt alongside must hash to the run's encoder
    artifact, or nothing is written: the heads belong to exactly that encoder."""
    from cxrbench.models.artifact import encoder_bytes, read_meta
    from cxrbench.models.vl_artifact import VL_DIR, VL_META, VLArtifactError, export_vl

    run_dir = Path(run_dir)
    target = run_dir / VL_DIR
    with exclusive(run_dir):
        if (target / VL_META).is_file():
            return target
        if not finished("pretrain", run_dir):
            raise CxrbenchError(f"{run_dir}: the pre-training has not finished (no encoder yet)")
        job = stored_job(run_dir)
        cls = METHODS.get(job.cfg.method)
        if not cls.vl_space:
            raise VLArtifactError(
                f"{run_dir}: method {job.cfg.method!r} has no image–text space (zero-shot and "
                "retrieval tasks need one)"
            )
        L.seed_everything(job.cfg.seed, workers=True, verbose=False)
        if cls.trains:
            method = build_method(job, _text_path_for_export(job, run_dir))
            _load_trained(method, run_dir / LAST_CHECKPOINT)
        else:
            if job.cfg.text.model != "auto":
                text_path = Path(job.cfg.text.model)
            elif data_root is None:
                raise CxrbenchError(f"{run_dir}: the corpus text model needs a data root")
            else:
                from cxrbench.models.text_corpus import pretrain_text

                mimic_root = dataset_folder("mimic", Path(data_root), job.cfg.data)
                text_preset = "tiny" if job.preset == "tiny" else "small"
                text_path = Path(pretrain_text(mimic_root, preset=text_preset, seed=0,
                                               progress=False)["path"])  # fmt: skip
            method = build_method(job, text_path)
        encoder = read_meta(run_dir / ENCODER_DIR)
        rebuilt = hashlib.sha256(encoder_bytes(method.image_encoder())).hexdigest()
        if rebuilt != encoder["sha256"]:
            raise VLArtifactError(
                f"{run_dir}: the image encoder rebuilt for the text side (sha256 {rebuilt}) is "
                f"not the run's encoder artifact ({encoder['sha256']}); its checkpoint is not "
                "the final state, so no vision–language artifact is written"
            )
        method.eval()
        return export_vl(method, target, encoder_sha256=str(encoder["sha256"]),
                         params=to_plain(job.params), pretrain_config=to_plain(job.cfg),
                         config_hash=job.config_hash, extra={"preset": job.preset})  # fmt: skip


def _text_path_for_export(job: PretrainJob, run_dir: Path) -> Path | None:
    text_file = run_dir / "text_model.txt"
    if not METHODS.get(job.cfg.method).needs_text:
        return None
    if not text_file.is_file():
        raise CxrbenchError(f"{run_dir}: no text_model.txt; is this a pre-training run folder?")
    return Path(text_file.read_text().strip())


def corpus_fingerprint(mimic_root: Path) -> str:
    """sha256 (16 hex) of the official split and metadata files: which images and splits."""
    digest = hashlib.sha256()
    for name in ("mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-metadata.csv.gz"):
        path = Path(mimic_root) / name
        digest.update(sha256_file(path).encode() if path.is_file() else b"-")
    return digest.hexdigest()[:16]
