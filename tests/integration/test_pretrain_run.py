"""Pre-training runs through the runner: resume after a crash, skip when done, clear errors."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch

from cxrbench.cli import main
from cxrbench.errors import CxrbenchError, DataFormatError
from cxrbench.models.artifact import read_meta
from cxrbench.runner.pretrain import run_pretrain
from cxrbench.runner.resolve import load_config
from cxrbench.systems.pretrain import PretrainSystem


def _sets(text_model, epochs: int = 2) -> list[str]:
    return [f"text.model={text_model}", "text.max_length=32", f"trainer.max_epochs={epochs}",
            "trainer.progress=false", "data.batch_size=16"]  # fmt: skip


def _job(text_model, epochs: int = 2, extra: tuple[str, ...] = ()):
    return load_config("convirt", "tiny", [*_sets(text_model, epochs), *extra])


def test_crash_then_resume_equals_uninterrupted(pairs_corpus, text_model, tmp_path, monkeypatch):
    straight = run_pretrain(_job(text_model), pairs_corpus, tmp_path / "a")

    original = PretrainSystem.training_step

    def crash_in_second_epoch(self, batch, batch_idx):
        if self.current_epoch == 1 and batch_idx == 1:
            raise RuntimeError("simulated crash")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(PretrainSystem, "training_step", crash_in_second_epoch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pretrain(_job(text_model), pairs_corpus, tmp_path / "b")
    assert (tmp_path / "b" / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "b" / "encoder").exists()  # no half-written artifact
    monkeypatch.setattr(PretrainSystem, "training_step", original)
    resumed = run_pretrain(_job(text_model), pairs_corpus, tmp_path / "b")

    a = safetensors.torch.load_file(straight / "encoder.safetensors")
    b = safetensors.torch.load_file(resumed / "encoder.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    assert read_meta(resumed)["extra"]["steps"] == read_meta(straight)["extra"]["steps"]


def test_finished_run_is_skipped_and_other_config_refused(pairs_corpus, text_model, tmp_path):
    first = run_pretrain(_job(text_model, 1), pairs_corpus, tmp_path)
    stamp = (first / "encoder.json").stat().st_mtime_ns
    assert run_pretrain(_job(text_model, 1), pairs_corpus, tmp_path) == first
    assert (first / "encoder.json").stat().st_mtime_ns == stamp
    with pytest.raises(CxrbenchError, match="config hash"):
        run_pretrain(_job(text_model, 2), pairs_corpus, tmp_path)


def test_cli_pretrain_and_errors(pairs_corpus, text_model, tmp_path, capsys) -> None:
    args = ["pretrain", "--method", "random_init", "--data-root", str(pairs_corpus),
            "--preset", "tiny", "--out", str(tmp_path), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    artifact = capsys.readouterr().out.strip().splitlines()[-1]
    assert read_meta(__import__("pathlib").Path(artifact))["method"] == "random_init"
    assert main([*args[:2], "convirtt", *args[3:]]) == 2
    assert "Did you mean 'convirt'" in capsys.readouterr().err
    bad_text = ["--set", f"text.model={tmp_path}"]
    assert main(["pretrain", "--method", "convirt", *args[3:], *bad_text]) == 2
    assert "not a Hugging Face text model folder" in capsys.readouterr().err


def test_corpus_without_usable_pairs_is_a_clear_error(tmp_path, text_model) -> None:
    from tests.helpers import write_pairs_corpus

    folder = write_pairs_corpus(tmp_path, n=8, n_val=2)
    for report in folder.rglob("s5*.txt"):
        report.write_text("FINAL REPORT\n EXAMINATION: CHEST\n INDICATION: ___\n")
    with pytest.raises(DataFormatError, match="no usable image-report pairs"):
        run_pretrain(_job(text_model, 1), tmp_path, tmp_path / "run")


def test_two_process_ddp_on_gloo(pairs_corpus, text_model, tmp_path) -> None:
    """DDP with 2 CPU processes (gloo): the global-batch loss and export work end to end."""
    sets = [f"text.model={text_model}", "text.max_length=32", "trainer.max_epochs=1",
            "trainer.progress=false", "data.batch_size=8", "trainer.devices=2",
            "trainer.strategy=ddp_spawn"]  # fmt: skip
    job = load_config("convirt", "tiny", sets)
    artifact = run_pretrain(job, pairs_corpus, tmp_path)
    meta = read_meta(artifact)
    assert meta["extra"]["steps"] == 80 // (8 * 2)  # each step sees 2 × 8 pairs
    init = run_pretrain(load_config("random_init", "tiny", ["trainer.progress=false"]),
                        pairs_corpus, tmp_path / "init")  # fmt: skip
    trained = safetensors.torch.load_file(artifact / "encoder.safetensors")
    initial = safetensors.torch.load_file(init / "encoder.safetensors")
    assert any(not torch.equal(trained[k], initial[k]) for k in trained)


def test_report_text_never_reaches_logs(pairs_corpus, text_model, tmp_path, caplog, capfd):
    """Patient text stays out of logs and output: pre-train with INFO logging on and look for
    every report sentence of the corpus in what was logged and printed."""
    import logging

    from cxrbench.data.pretrain import load_pairs
    from cxrbench.models.text_corpus import pretrain_text

    caplog.set_level(logging.DEBUG)
    pretrain_text(pairs_corpus, tmp_path / "bert", preset="tiny", progress=False)
    run_pretrain(_job(text_model, 1), pairs_corpus, tmp_path / "run")
    printed = capfd.readouterr()
    seen = caplog.text + printed.out + printed.err
    texts = {p.text for p in load_pairs(pairs_corpus / "mimic-cxr-jpg", "train")}
    assert texts and not any(t in seen for t in texts)
    assert "pleural effusion" not in seen.lower()


def test_export_from_a_checkpoint_equals_the_finished_artifact(pairs_corpus, text_model, tmp_path):
    artifact = run_pretrain(_job(text_model, 1), pairs_corpus, tmp_path / "run")
    assert main(["export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "exp")]) == 0
    a = safetensors.torch.load_file(artifact / "encoder.safetensors")
    b = safetensors.torch.load_file(tmp_path / "exp" / "encoder.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_meta(tmp_path / "exp")["config_hash"] == read_meta(artifact)["config_hash"]


def test_image_store_gives_the_same_encoder(pairs_corpus, text_model, tmp_path) -> None:
    """``data.store=exact`` (built on first use, read by loader workers): the same config hash
    and the same encoder, bit for bit, as decoding the files."""
    from cxrbench.models.artifact import encoder_sha256

    files = run_pretrain(_job(text_model, 1), pairs_corpus, tmp_path / "files")
    job = _job(text_model, 1, ("data.store=exact", "data.workers=1"))
    assert job.config_hash == _job(text_model, 1).config_hash
    stored = run_pretrain(job, pairs_corpus, tmp_path / "store", tmp_path / "images")
    [folder] = (tmp_path / "images").iterdir()
    assert (folder / "store.json").is_file()
    assert encoder_sha256(stored) == encoder_sha256(files)
