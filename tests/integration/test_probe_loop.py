"""The linear probe's tensor loop (``systems/classification.fit_probe``) gives the Lightning
Trainer's run: the same selected val loss, test metrics and test scores, for a multi-label and a
multi-class task, at a label fraction and with early stopping and validation every 2nd epoch."""

from __future__ import annotations

import numpy as np
import pytest

from cxrbench.data.features import FeatureCache
from cxrbench.predictions import read_predictions
from cxrbench.runner.pretrain import run_pretrain
from cxrbench.runner.resolve import load_config, load_task
from cxrbench.runner.transfer import run_transfer

# bit for bit on one machine (the same float operations in the same order); the tolerance only
# allows for a BLAS that splits a batched matmul differently from a row-gathered one
ATOL = 1e-6


@pytest.fixture(scope="module")
def encoder(synth_tiny, tmp_path_factory):
    return run_pretrain(
        load_config("random_init", "tiny"), synth_tiny, tmp_path_factory.mktemp("enc")
    )


@pytest.mark.parametrize(
    ("task", "fraction", "sets"),
    [
        ("chexpert_cls", 0.5, ["train.max_epochs=12", "train.patience=2"]),
        ("covidx_cls", 1.0, ["train.max_epochs=7", "train.val_every=2", "train.batch_size=16"]),
    ],
)
def test_tensor_loop_equals_the_trainer(synth_tiny, encoder, tmp_path, task, fraction, sets):
    cache = FeatureCache(tmp_path / "cache")
    runs = {}
    for loop in ("lightning", "auto"):
        job = load_task(task, "tiny", [*sets, f"trainer.loop={loop}", "trainer.progress=false"],
                        fraction)  # fmt: skip
        run_dir = tmp_path / loop
        record = run_transfer(job, encoder, synth_tiny, fraction=fraction, seed=3,
                              run_dir=run_dir, cache=cache)  # fmt: skip
        runs[loop] = (job, record, read_predictions(run_dir / "predictions.npz"), run_dir)
    job_l, lightning, pred_l, dir_l = runs["lightning"]
    job_a, auto, pred_a, dir_a = runs["auto"]
    assert job_l.config_hash == job_a.config_hash  # the loop is not part of the protocol
    assert (dir_l / "checkpoints" / "best.ckpt").is_file()
    assert not (dir_a / "checkpoints").exists()  # the loop trained without the Trainer
    epochs = (dir_a / "logs" / "probe_loop.csv").read_text().splitlines()
    assert epochs[0] == "epoch,val_loss" and len(epochs) > 2
    assert lightning.metrics.keys() == auto.metrics.keys()
    for key, value in lightning.metrics.items():
        assert auto.metrics[key] == pytest.approx(value, abs=ATOL), key
    scores_a, scores_l = pred_a.arrays["scores"], pred_l.arrays["scores"]
    np.testing.assert_allclose(scores_a, scores_l, atol=ATOL, rtol=0)
    np.testing.assert_array_equal(pred_a.arrays["targets"], pred_l.arrays["targets"])
    assert auto.probe_mode == lightning.probe_mode == "cached"


def test_the_trainer_is_kept_where_the_loop_would_differ(synth_tiny, encoder, tmp_path):
    """EMA of the head (or a cosine lr, fp16/bf16, several devices): the Trainer runs."""
    job = load_task("rsna_cls", "tiny", ["train.max_epochs=2", "train.ema=0.9",
                                         "trainer.progress=false"], 1.0)  # fmt: skip
    run_transfer(job, encoder, synth_tiny, fraction=1.0, seed=0, run_dir=tmp_path / "run",
                 cache=FeatureCache(tmp_path / "cache"))  # fmt: skip
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()


def test_an_unknown_loop_is_a_config_error() -> None:
    from cxrbench.errors import ConfigError

    with pytest.raises(ConfigError, match=r"trainer\.loop.*auto, lightning"):
        load_task("rsna_cls", "tiny", ["trainer.loop=fast"])


@pytest.mark.parametrize("augment", [False, True])
def test_image_store_gives_the_same_probe(synth_tiny, encoder, tmp_path, augment):
    """``image.store=exact``: the features (cached probe) and the augmented images (a probe
    that reads images every epoch) are the decoded files', so the result is the same."""
    sets = ["train.max_epochs=3", "trainer.progress=false", f"probe.augment={augment}"]
    records = {}
    for store in ("off", "exact"):
        job = load_task("chexpert_cls", "tiny", [*sets, f"image.store={store}"], 1.0)
        cache = FeatureCache(tmp_path / store / "cache" / "features")
        records[store] = run_transfer(job, encoder, synth_tiny, fraction=1.0, seed=0,
                                      run_dir=tmp_path / store / "run", cache=cache)  # fmt: skip
    assert records["off"].metrics == records["exact"].metrics
    assert records["off"].config_hash == records["exact"].config_hash
    assert list((tmp_path / "exact" / "cache" / "images").glob("*-s*-exact/store.json"))
    assert not (tmp_path / "off" / "cache" / "images").exists()
