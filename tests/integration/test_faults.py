"""Crash safety: exact mid-epoch resume, atomic and verified checkpoints, locked run folders,
configs validated before any work. (More cases, slower ones: ``benchmarks/faults/``.)"""

from __future__ import annotations

import errno
import hashlib
import threading
import time
from pathlib import Path

import pytest
import torch

from cxrbench.errors import ConfigError
from cxrbench.models.artifact import read_meta
from cxrbench.runner.pretrain import run_pretrain
from cxrbench.runner.resolve import load_config, load_task
from cxrbench.systems.pretrain import PretrainSystem
from cxrbench.utils.lock import exclusive


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _job(text_model, *extra: str):
    sets = [f"text.model={text_model}", "text.max_length=32", "trainer.max_epochs=2",
            "trainer.progress=false", "data.batch_size=16", "trainer.checkpoint_every=2",
            *extra]  # fmt: skip
    return load_config("convirt", "tiny", sets)


class Crash(RuntimeError):
    pass


def _crash_at(monkeypatch, cls, step: int) -> None:
    original = cls.training_step

    def crashing(self, batch, batch_idx):
        if self.global_step == step:
            raise Crash(f"simulated crash at step {step}")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(cls, "training_step", crashing)


@pytest.mark.parametrize("workers", [0, 1])
def test_mid_epoch_resume_gives_the_uninterrupted_encoder(
    pairs_corpus, text_model, tmp_path, monkeypatch, workers
) -> None:
    """Checkpoint every 2 steps; crash at step 7 (5 steps per epoch: the last checkpoint is at
    step 6, one batch into the second epoch); resume: the artifact is byte-identical."""
    job = _job(text_model, f"data.workers={workers}")
    straight = run_pretrain(job, pairs_corpus, tmp_path / "a")
    with monkeypatch.context() as m:
        _crash_at(m, PretrainSystem, 7)
        with pytest.raises(Crash):
            run_pretrain(job, pairs_corpus, tmp_path / "b")
    ckpt = torch.load(tmp_path / "b/checkpoints/last.ckpt", weights_only=True)
    loader_state = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert ckpt["global_step"] == 6
    assert loader_state == [{"epoch": 1, "batches": 1, "seed": 0, "samples": 80}]
    resumed = run_pretrain(job, pairs_corpus, tmp_path / "b")
    assert _sha(resumed / "encoder.safetensors") == _sha(straight / "encoder.safetensors")
    assert read_meta(resumed)["extra"]["steps"] == read_meta(straight)["extra"]["steps"] == 10


def test_dense_transfer_resumes_mid_epoch_to_the_same_numbers(
    synth_tiny, tmp_path, monkeypatch
) -> None:
    from cxrbench.data.features import FeatureCache
    from cxrbench.models.artifact import export_encoder
    from cxrbench.models.backbones import build_backbone
    from cxrbench.runner.transfer import run_transfer
    from cxrbench.systems.segmentation import SegmentationSystem

    torch.manual_seed(0)
    artifact = export_encoder(build_backbone("tiny", image_size=64), tmp_path / "enc",
                              method="random_init", config_hash="test")  # fmt: skip
    sets = ["train.max_epochs=2", "train.patience=5", "train.batch_size=8",
            "trainer.progress=false", "trainer.checkpoint_every=3",
            "probe.augment=true", "train.ema=0.9"]  # fmt: skip
    job = load_task("siim_seg", "tiny", sets)
    cache = FeatureCache(tmp_path / "cache")

    def run(name: str):
        return run_transfer(job, artifact, synth_tiny, fraction=1.0, seed=3,
                            run_dir=tmp_path / name, cache=cache)  # fmt: skip

    straight = run("a")
    steps = int(torch.load(tmp_path / "a/checkpoints/last.ckpt", weights_only=True)["global_step"])
    crash = steps // 2 + 2 - (steps // 2) % 3  # past a step checkpoint, inside an epoch
    with monkeypatch.context() as m:
        _crash_at(m, SegmentationSystem, crash)
        with pytest.raises(Crash):
            run("b")
    assert not (tmp_path / "b/result.json").exists()
    resumed = run("b")
    assert resumed.metrics == straight.metrics
    assert _sha(tmp_path / "a/checkpoints/best.ckpt") != ""  # both kept their checkpoints


def test_a_corrupt_checkpoint_is_set_aside_and_the_run_restarts(
    pairs_corpus, text_model, tmp_path, caplog
) -> None:
    job = _job(text_model, "trainer.max_epochs=1")
    straight = run_pretrain(job, pairs_corpus, tmp_path / "a")
    ckpt = tmp_path / "b/checkpoints/last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes((tmp_path / "a/checkpoints/last.ckpt").read_bytes()[:5000])  # truncated
    resumed = run_pretrain(job, pairs_corpus, tmp_path / "b")
    assert _sha(resumed / "encoder.safetensors") == _sha(straight / "encoder.safetensors")
    aside = list(ckpt.parent.glob("last.ckpt.corrupt-*"))
    assert len(aside) == 1 and "set aside" in caplog.text and str(aside[0]) in caplog.text


def test_a_full_disk_keeps_the_previous_checkpoint(
    pairs_corpus, text_model, tmp_path, monkeypatch
) -> None:
    """ENOSPC while writing the 3rd checkpoint (reported at fsync, as on a delayed-allocation
    file system): the run fails; the checkpoint on disk is the 2nd, whole, with no temp file
    left; with space again, rerunning the same call finishes with the uninterrupted encoder."""
    import os

    job = _job(text_model)
    straight = run_pretrain(job, pairs_corpus, tmp_path / "a")
    real_fsync, calls = os.fsync, []

    def fsync(fd: int) -> None:
        if "checkpoints" in os.readlink(f"/proc/self/fd/{fd}"):
            calls.append(fd)
            if len(calls) == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", fsync)
        with pytest.raises(Exception, match="No space left on device"):
            run_pretrain(job, pairs_corpus, tmp_path / "b")
    state = torch.load(tmp_path / "b/checkpoints/last.ckpt", weights_only=True)
    assert state["global_step"] == 4  # the 2nd save (steps 2, 4); the 3rd never replaced it
    assert sorted(p.name for p in (tmp_path / "b/checkpoints").iterdir()) == ["last.ckpt"]
    resumed = run_pretrain(job, pairs_corpus, tmp_path / "b")
    assert _sha(resumed / "encoder.safetensors") == _sha(straight / "encoder.safetensors")


def test_bad_numbers_are_refused_before_any_work(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"--set.*trainer\.max_epochs.*integer >= 1, got -5"):
        load_config("convirt", "tiny", ["trainer.max_epochs=-5"])
    with pytest.raises(ConfigError, match=r"data\.batch_size.*got 0"):
        load_config("convirt", "tiny", ["data.batch_size=0"])
    with pytest.raises(ConfigError, match=r"seed.*got -1"):
        load_config("convirt", "tiny", ["seed=-1"])
    with pytest.raises(ConfigError, match=r"optim\.lr.*> 0"):
        load_task("rsna_cls", "tiny", ["optim.lr=0"])


def test_a_folder_whose_run_saved_nothing_does_not_block_a_corrected_rerun(
    pairs_corpus, text_model, tmp_path
) -> None:
    from cxrbench.runner.pretrain import _check_run_dir

    bad, good = _job(text_model, "optim.lr=0.5"), _job(text_model, "trainer.max_epochs=1")
    _check_run_dir(tmp_path, bad)  # a run that failed before its first checkpoint
    artifact = run_pretrain(good, pairs_corpus, tmp_path)
    assert read_meta(artifact)["config_hash"] == good.config_hash


def test_a_second_process_waits_for_the_holder_then_proceeds(tmp_path, caplog) -> None:
    order: list[str] = []
    held = threading.Event()

    def first() -> None:
        with exclusive(tmp_path / "run"):
            held.set()
            time.sleep(0.5)
            order.append("first done")

    thread = threading.Thread(target=first)
    thread.start()
    held.wait()
    with exclusive(tmp_path / "run"):
        order.append("second in")
    thread.join()
    assert order == ["first done", "second in"]
    assert "in use by pid" in caplog.text


def test_no_wait_names_the_holder(tmp_path) -> None:
    from cxrbench.errors import CxrbenchError

    with (
        exclusive(tmp_path),
        pytest.raises(CxrbenchError, match=r"in use by pid \d+ on "),
        exclusive(tmp_path, wait=False),
    ):
        pass
