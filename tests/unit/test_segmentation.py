"""Segmentation: the protocol loss, the U-Net on every backbone kind, learning, frozen mode, the
siim_seg/rsna_seg tasks on SynthCXR tiny and one end-to-end transfer run."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from cxrbench.errors import ConfigError
from cxrbench.losses.segmentation import (
    SMOOTH,
    SegLossSums,
    focal_loss,
    seg_loss,
    soft_dice,
    soft_dice_loss,
)
from cxrbench.metrics.segmentation import mean_dice
from cxrbench.models.backbones import build_backbone
from cxrbench.predictions import read_predictions
from cxrbench.systems.segmentation import (
    SegmentationRows,
    SegmentationSystem,
    UNet,
    resize_pad_pair,
)
from cxrbench.tasks.base import Items, TaskConfig

# ------------------------------------------------------------------------------------------- loss


def test_focal_loss_matches_a_hand_computation() -> None:
    logits = [2.0, -1.0, 0.5, -3.0]
    targets = [1.0, 0.0, 0.0, 1.0]
    expected = 0.0
    for x, t in zip(logits, targets, strict=True):
        p = 1 / (1 + math.exp(-x))
        p_t = p if t == 1 else 1 - p
        expected += -((1 - p_t) ** 2) * math.log(p_t)
    expected /= len(logits)
    got = focal_loss(torch.tensor(logits).view(1, 1, 2, 2), torch.tensor(targets).view(1, 1, 2, 2))
    assert float(got) == pytest.approx(expected, rel=1e-5)
    gamma0 = focal_loss(torch.tensor(logits), torch.tensor(targets), gamma=0.0)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor(logits), torch.tensor(targets)
    )
    assert float(gamma0) == pytest.approx(float(bce), rel=1e-6)  # γ = 0 is plain BCE


def test_soft_dice_and_protocol_loss_by_hand() -> None:
    logits = torch.tensor([[0.0, 0.0], [2.0, -2.0]]).view(1, 1, 2, 2)
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).view(1, 1, 2, 2)
    p = torch.sigmoid(logits)
    dice = (2 * float((p * targets).sum()) + SMOOTH) / (float(p.sum()) + 2 + SMOOTH)
    assert float(soft_dice(logits, targets)) == pytest.approx(dice, rel=1e-6)
    expected = 10 * float(focal_loss(logits, targets)) - math.log(dice)
    assert float(seg_loss(logits, targets)) == pytest.approx(expected, rel=1e-6)


def _ellipse_mask(size: int = 32) -> torch.Tensor:
    mask = np.zeros((size, size), np.uint8)
    cv2.ellipse(mask, (size // 2, size // 2), (size // 4, size // 6), 30.0, 0, 360, 1, -1)
    return torch.from_numpy(mask).float().view(1, 1, size, size)


def test_protocol_loss_is_minimal_for_a_perfect_prediction() -> None:
    mask = _ellipse_mask()
    perfect = 20.0 * (2 * mask - 1)
    assert float(soft_dice_loss(perfect, mask)) == pytest.approx(0.0, abs=1e-6)  # −log(1)
    assert float(seg_loss(perfect, mask)) == pytest.approx(0.0, abs=1e-4)
    unsure = torch.zeros_like(mask)
    wrong = -perfect
    assert 0 < float(seg_loss(unsure, mask)) < float(seg_loss(wrong, mask))
    assert float(seg_loss(wrong, mask)) > 10


@pytest.mark.parametrize("scale", [1.0, 50.0])
def test_loss_gradients_are_finite_on_empty_masks(scale: float) -> None:
    logits = scale * torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    logits.requires_grad_(True)
    empty = torch.zeros(2, 1, 16, 16)
    loss = seg_loss(logits, empty)
    loss.backward()
    assert torch.isfinite(loss) and loss >= 0
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert float(logits.grad.abs().sum()) > 0
    # an empty target with an empty (confident) prediction is close to the minimum
    assert float(seg_loss(torch.full((1, 1, 8, 8), -20.0), torch.zeros(1, 1, 8, 8))) < 1e-3


def test_loss_needs_matching_shapes() -> None:
    with pytest.raises(ValueError, match="one shape"):
        seg_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4))


def test_loss_sums_give_the_loss_of_the_whole_set() -> None:
    g = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(7, 1, 12, 12, generator=g)
    targets = (torch.rand(7, 1, 12, 12, generator=g) > 0.7).float()
    sums = SegLossSums()
    for chunk in (slice(0, 3), slice(3, 4), slice(4, 7)):
        sums.update(logits[chunk], targets[chunk])
    assert sums.compute() == pytest.approx(float(seg_loss(logits, targets)), rel=1e-5)
    sums.reset()
    with pytest.raises(ValueError, match="zero pixels"):
        sums.compute()


# ------------------------------------------------------------------------------------------ model


def _cfg(finetune: bool = False, crop: int = 64, **params) -> TaskConfig:
    cfg = TaskConfig()
    cfg.probe.finetune = finetune
    cfg.image.crop = crop
    cfg.params = dict(params)
    return cfg


@pytest.mark.parametrize(
    ("name", "size", "channels"),
    [
        ("tiny", 64, [3, 16, 16, 32, 64, 128]),
        ("tiny", 96, [3, 16, 16, 32, 64, 128]),
        ("resnet18", 64, [3, 64, 64, 128, 256, 512]),
        ("vit_tiny", 64, [3, 192, 192, 192, 192, 192]),  # c1/c2 upsampled from c3
    ],
)
def test_unet_output_has_the_input_size(name: str, size: int, channels: list[int]) -> None:
    torch.manual_seed(0)
    unet = UNet(build_backbone(name, image_size=size), size)
    assert unet.encoder_channels == channels
    maps = unet.pyramid(torch.zeros(2, 3, size, size))
    assert [m.shape[-1] for m in maps] == [size // s for s in (1, 2, 4, 8, 16, 32)]
    assert unet(torch.randn(2, 3, size, size)).shape == (2, 1, size, size)


def test_params_are_validated() -> None:
    backbone = build_backbone("tiny", image_size=64)
    with pytest.raises(ConfigError, match=r"params\.decoder_channel.*unknown"):
        SegmentationSystem(backbone, _cfg(decoder_channel=[1, 2, 3, 4, 5]))
    with pytest.raises(ConfigError, match=r"params\.decoder_channels.*5 positive integers"):
        SegmentationSystem(backbone, _cfg(decoder_channels=[64, 32, 16]))
    small = SegmentationSystem(backbone, _cfg(decoder_channels=[32, 16, 16, 8, 8]))
    assert small(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    with pytest.raises(ConfigError, match=r"image\.crop"):  # a ViT takes one size only
        SegmentationSystem(build_backbone("vit_tiny", image_size=64), _cfg(crop=96))


# ------------------------------------------------------------------------------------------- data


def test_resize_pad_pair_keeps_image_and_mask_aligned_and_binary() -> None:
    image = np.zeros((40, 80), np.uint8)
    mask = np.zeros((40, 80), bool)
    image[10:30, 20:60], mask[10:30, 20:60] = 200, True
    out_image, out_mask = resize_pad_pair(image, mask, 64)
    assert out_image.shape == out_mask.shape == (64, 64) and out_mask.dtype == bool
    assert not out_mask[:16].any() and not out_mask[48:].any()  # the zero padding (rows 0-15)
    assert (out_image[out_mask] > 150).all() and (out_image[~out_mask] < 60).mean() > 0.95
    assert out_mask.sum() == 32 * 16  # 20x40 of 40x80, resized by 0.8


@dataclass(frozen=True)
class _Box:
    def mask(self, height: int, width: int) -> np.ndarray:
        out = np.zeros((height, width), bool)
        out[16:48, 20:44] = True
        return out


def test_augmentation_moves_image_and_mask_together(tmp_path: Path) -> None:
    image = np.full((64, 64), 40, np.uint8)
    image[16:48, 20:44] = 220
    path = tmp_path / "x.png"
    Image.fromarray(image).save(path)
    items = Items(["x"], [path], np.ones((1, 1), np.float32), (_Box(),))
    plain = SegmentationRows(items, 64, augment=False)[0]
    rows = SegmentationRows(items, 64, augment=True)
    changed = 0
    for seed in range(8):
        torch.manual_seed(seed)
        first = rows[0]
        torch.manual_seed(seed)
        assert torch.equal(first["image"], rows[0]["image"])  # reproducible from torch's seed
        mask, img = first["mask"][0].bool(), first["image"][0]
        assert set(first["mask"].unique().tolist()) <= {0.0, 1.0}
        assert img[mask].mean() > 0.5 and img[~mask].mean() < -0.3  # still aligned
        changed += int(not torch.equal(first["mask"], plain["mask"]))
    assert changed >= 2  # p = 0.5 per sample


# ------------------------------------------------------------------------------------- learning


def _ellipses(n: int = 8, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Bright ellipses on noise: normalised images (n, 3, s, s) and masks (n, 1, s, s)."""
    from cxrbench.data.transforms import to_tensor

    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(n):
        mask = np.zeros((size, size), np.uint8)
        centre = (int(rng.integers(16, size - 16)), int(rng.integers(16, size - 16)))
        axes = (int(rng.integers(6, 14)), int(rng.integers(6, 14)))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        image = rng.normal(80, 20, (size, size)) + 100 * mask
        images.append(to_tensor(np.clip(image, 0, 255).astype(np.uint8)))
        masks.append(torch.from_numpy(mask).float()[None])
    return torch.stack(images), torch.stack(masks)


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, masks: torch.Tensor) -> None:
        self.images, self.masks = images, masks

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "mask": self.masks[i]}


def _dice(system: SegmentationSystem, images: torch.Tensor, masks: torch.Tensor) -> float:
    was = system.training
    system.eval()
    with torch.no_grad():
        dice = mean_dice(torch.sigmoid(system(images)), masks)
    system.train(was)
    return dice


def test_trainable_unet_overfits_a_handful_of_ellipses() -> None:
    """finetune: true, lr 5e-4 and no weight decay: Dice > 0.8 within 150 optimiser steps."""
    import lightning as L

    torch.manual_seed(0)
    images, masks = _ellipses()
    cfg = _cfg(finetune=True)
    cfg.optim.weight_decay = 0.0
    cfg.optim.encoder_lr_scale = 1.0
    system = SegmentationSystem(build_backbone("tiny", image_size=64), cfg)
    assert all(p.requires_grad for p in system.encoder.parameters())
    before = _dice(system, images, masks)

    class StopWhenLearned(L.Callback):
        def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
            if trainer.current_epoch % 10 == 9 and _dice(system, images, masks) > 0.9:
                trainer.should_stop = True

    loader = torch.utils.data.DataLoader(_Pairs(images, masks), batch_size=8)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=150, max_epochs=150, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[StopWhenLearned()], num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(system, loader)
    after = _dice(system, images, masks)
    assert trainer.global_step <= 150
    assert before < 0.5 and after > 0.8, (before, after, trainer.global_step)


def test_frozen_encoder_does_not_change_and_stays_in_eval_mode() -> None:
    torch.manual_seed(0)
    images, masks = _ellipses(n=4)
    system = SegmentationSystem(build_backbone("tiny", image_size=64), _cfg(finetune=False))
    encoder_state = {k: v.clone() for k, v in system.encoder.state_dict().items()}
    decoder_state = {k: v.clone() for k, v in system.unet.decoder.state_dict().items()}
    optimizer = system.configure_optimizers()
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in system.encoder.parameters()}
    system.train()  # what Lightning does at the start of fitting
    for _ in range(3):
        loss = seg_loss(system(images), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not system.encoder.training and system.unet.decoder.training
    assert not any(p.requires_grad for p in system.encoder.parameters())
    for key, value in system.encoder.state_dict().items():  # weights and BatchNorm statistics
        assert torch.equal(value, encoder_state[key]), key
    changed = [
        not torch.equal(v, decoder_state[k]) for k, v in system.unet.decoder.state_dict().items()
    ]
    assert any(changed)


# -------------------------------------------------------------------------------- tasks (synth)


def test_siim_seg_on_synth_tiny(synth_tiny: Path) -> None:
    from cxrbench.data.codecs import image_size
    from cxrbench.data.splits import make_splits
    from cxrbench.runner.resolve import load_task
    from cxrbench.tasks import TASKS

    cls = TASKS.get("siim_seg")
    assert (cls.kind, cls.dataset, cls.metric) == ("segmentation", "siim", "dice")
    job = load_task("siim_seg", "tiny")
    assert (job.cfg.train.batch_size, job.cfg.optim.weight_decay) == (8, 0.05)
    data = job.task.data(synth_tiny, 1.0)
    positives = int(data.train.labels[:, 0].sum())
    assert positives > 0 and len(data.train.ids) == 2 * positives  # balanced
    assert len(data.train.targets) == len(data.train.ids)
    order = make_splits("siim", job.task.folder(synth_tiny)).fraction(1.0)  # the fixed order
    negative = {
        i for i, row in zip(data.train_all.ids, data.train_all.labels, strict=True) if row[0] == 0
    }
    negatives_all = [i for i in order if i in negative]
    chosen = [i for i, row in zip(data.train.ids, data.train.labels, strict=True) if row[0] == 0]
    assert chosen == negatives_all[: len(chosen)]  # the first negatives of the fixed order
    for items in (data.train, data.val, data.test):
        for path, label, record in zip(items.paths, items.labels, items.targets, strict=True):
            assert bool(record.mask(*image_size(path)).any()) == bool(label[0])
    assert int(data.val.labels.sum()) < len(data.val.ids)  # val keeps its negatives
    limited = load_task("siim_seg", "tiny", ["train.val_limit=6"]).task.data(synth_tiny, 1.0)
    assert len(limited.val.ids) == 6 and set(limited.val.ids) < set(data.val.ids)
    assert (limited.train.ids, limited.test.ids) == (data.train.ids, data.test.ids)
    assert limited.fingerprint != data.fingerprint  # the val images are part of the identity

    from cxrbench.systems import SYSTEMS

    encoder = build_backbone("tiny", image_size=64)
    job.cfg.train.map_cache_gib = 0  # images every epoch (the cache: the next test)
    prepared = SYSTEMS.get("segmentation").prepare(job.task, job.cfg, data, encoder, {}, None)
    assert prepared.probe_mode == "frozen"
    for loader in (prepared.train, prepared.val, prepared.test):
        batch = next(iter(loader))
        assert batch["image"].shape == (8, 3, 64, 64) and batch["mask"].shape == (8, 1, 64, 64)
        assert set(batch["mask"].unique().tolist()) <= {0.0, 1.0}
    masks = torch.cat([b["mask"] for b in prepared.train])
    assert int((masks.flatten(1).amax(1) > 0).sum()) == positives


def test_rsna_seg_end_to_end_on_synth_tiny(synth_tiny: Path, tmp_path: Path) -> None:
    import json

    from cxrbench.data.features import FeatureCache
    from cxrbench.models.artifact import export_encoder
    from cxrbench.runner.resolve import load_task
    from cxrbench.runner.transfer import run_transfer

    torch.manual_seed(0)
    artifact = export_encoder(build_backbone("tiny", image_size=64), tmp_path / "enc",
                              method="random_init", config_hash="test")  # fmt: skip
    job = load_task("rsna_seg", "tiny", ["train.max_epochs=1", "trainer.progress=false"])
    assert job.cfg.train.batch_size == 16 and job.task.kind == "segmentation"
    cache = FeatureCache(tmp_path / "cache")
    started = time.perf_counter()
    record = run_transfer(
        job, artifact, synth_tiny, fraction=1.0, seed=0, run_dir=tmp_path / "run", cache=cache
    )
    # the run's own seconds: testing from the best checkpoint must not add that checkpoint's clock
    assert 0 < record.wall_seconds <= time.perf_counter() - started
    stored = json.loads((tmp_path / "run" / "result.json").read_text())
    assert record.metric == "test/dice" and record.probe_mode == "cached"
    assert 0.0 <= stored["metrics"]["test/dice"] <= 1.0
    assert math.isfinite(stored["metrics"]["test/loss"]) and "val/loss" in stored["metrics"]
    preds = read_predictions(tmp_path / "run" / "predictions.npz", record.predictions_sha256)
    recomputed = preds.metrics()
    assert set(recomputed) == {"test/dice", "test/dice_pos", "test/dice_global"}
    assert recomputed == {k: stored["metrics"][k] for k in recomputed}
    assert len(preds) == len(preds.arrays["dice"]) and preds.kind == "segmentation"


def test_cached_maps_give_the_logits_and_masks_of_the_image_path(synth_tiny) -> None:
    """systems/frozen_maps.py: the frozen encoder's maps computed once give the decoder what
    the image path gives it (to float rounding), mask for mask, in the same order; a limit
    the maps exceed falls back to images."""
    from cxrbench.runner.resolve import load_task
    from cxrbench.systems import SYSTEMS

    job = load_task("siim_seg", "tiny")
    data = job.task.data(synth_tiny, 0.5)
    encoder = build_backbone("tiny", image_size=64)
    system_cls = SYSTEMS.get("segmentation")
    job.cfg.train.map_cache_gib = 0
    plain = system_cls.prepare(job.task, job.cfg, data, encoder, {}, None)
    job.cfg.train.map_cache_gib = 4.0
    cached = system_cls.prepare(job.task, job.cfg, data, encoder, {}, None)
    assert (plain.probe_mode, cached.probe_mode) == ("frozen", "cached")
    cached.system.unet.decoder.load_state_dict(plain.system.unet.decoder.state_dict())
    cached.system.unet.head.load_state_dict(plain.system.unet.head.state_dict())
    for a, b in ((plain.test, cached.test), (plain.train, cached.train)):
        batch_a, batch_b = next(iter(a)), next(iter(b))
        assert "image" not in batch_b and len(batch_b["maps"]) == 6
        torch.testing.assert_close(batch_a["mask"], batch_b["mask"], rtol=0, atol=0)
        with torch.no_grad():
            want = plain.system.logits(batch_a)
            got = cached.system.logits(batch_b)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    job.cfg.train.map_cache_gib = 1e-6  # a few KiB: the maps do not fit
    assert system_cls.prepare(job.task, job.cfg, data, encoder, {}, None).probe_mode == "frozen"


def test_eval_batch_size_changes_neither_the_scores_nor_the_config_hash(synth_tiny) -> None:
    """``train.eval_batch_size``: validation is the same sums over the whole split in bigger
    batches, so loss and every Dice agree to float rounding; the run's identity is unchanged."""
    from cxrbench.runner.resolve import load_task
    from cxrbench.systems import SYSTEMS

    small = load_task("siim_seg", "tiny")
    big = load_task("siim_seg", "tiny", ["train.eval_batch_size=64"])
    assert big.config_hash == small.config_hash
    data = small.task.data(synth_tiny, 0.5)
    encoder = build_backbone("tiny", image_size=64)
    system_cls = SYSTEMS.get("segmentation")
    scores = []
    for job in (small, big):
        prepared = system_cls.prepare(job.task, job.cfg, data, encoder, {}, None)
        torch.manual_seed(0)  # the same decoder weights for both
        system = system_cls(encoder, job.cfg).eval()
        loss, dice = system._val
        with torch.no_grad():
            batches = list(prepared.val)
            for batch in batches:
                system._evaluate(batch, (loss, dice))
        scores.append(({"loss": loss.compute(), **dice.summary()}, len(batches)))
    (a, n_small), (b, n_big) = scores
    assert n_big < n_small  # the val split really went in bigger batches
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-5 for k in a)
