"""SegmentationSystem: a U-Net on the encoder artifact's backbone (mgca protocol, version 1).

What is implemented (PROTOCOLS.md §1, tasks ``siim_seg`` and ``rsna_seg``):

* **Model** (:class:`UNet`): the encoder is the artifact's backbone itself (its weights were
  loaded by :func:`~cxrbench.models.artifact.load_encoder` with a strict key check), wrapped so that
  it yields the six maps ``[input, c1, c2, c3, c4, c5]`` (strides 1, 2, 4, 8, 16, 32) that
  ``segmentation_models_pytorch``'s ``UnetDecoder`` takes; their channels are found by one dry
  forward pass on a zero image. Decoder channels ``(256, 128, 64, 32, 16)`` (smp's U-Net default,
  as MGCA's ``smp.Unet("resnet50")``; ``params.decoder_channels`` overrides them) and smp's
  ``SegmentationHead`` (3×3 convolution, 1 class) give one logit per pixel at the input size.
  Backbones without ``c1``/``c2`` (ViT) get them by bilinear upsampling of ``c3`` to strides 2 and
  4: parameter-free, so the encoder keeps only pre-trained weights and the decoder does the rest.
* **Frozen encoder** (``probe.finetune: false``, the protocol): the backbone stays in eval mode
  (BatchNorm statistics of pre-training) and runs under ``torch.no_grad``; only the decoder and the
  head train. ``probe.finetune: true`` trains the encoder too, with ``lr × optim.encoder_lr_scale``.
  A frozen encoder without augmentation runs once per run: its six maps of every image are kept
  in memory for the run (``systems/frozen_maps.py``, up to ``train.map_cache_gib``; the six maps
  of one 224 px image take about 9 MB for a ResNet-50, so they are not cached on disk like the
  classification features); past that limit, or when augmenting, it runs every epoch.
* **Data**: the image (``read_image``) and its mask (the annotation record's ``mask(h, w)`` at the
  image's own size: SIIM's RLE union, RSNA's filled boxes) are resized together to a
  ``image.crop``-sided square: long side resized, short side zero-padded and centred
  (:func:`resize_pad_pair`), with no crop, so no part of a mask is cut away; ``image.resize`` is
  not used. The mask is resized as 0/255 with the image's interpolation (area when shrinking) and
  thresholded at half coverage, so it stays binary. Images are normalised like ``mgca_image``
  (mean 0.5, std 0.5, 3 channels). ``probe.augment: true`` adds MGCA's training augmentation,
  applied jointly to image and mask with albumentations (:func:`augmenter`).
* **Loss**: ``10 · focal(γ = 2) − log(soft Dice)`` (``losses/segmentation.py``). ``val/loss`` and
  ``test/loss`` are the loss of all pixels of the set at once (:class:`SegLossSums`), so they do not
  depend on the batch size; ``val/loss`` drives early stopping and the best checkpoint.
* **Metric**: Dice per image (threshold 0.5 on the sigmoid), averaged over images
  (:class:`~cxrbench.metrics.segmentation.DiceAccumulator`); logged as ``val/dice`` each epoch and
  ``test/dice`` (the task's metric) at the end, with ``test/loss``, and beside it ``dice_pos`` and
  ``dice_global`` (``metrics/segmentation.py``: they do not reward an all-empty prediction).
* **Optimiser**: AdamW with ``optim.lr``, ``weight_decay``, ``betas`` (protocol: 5e-4, 0.05).

Deviations from MGCA (``mgca/models/ssl_segmenter.py``, ``mgca/datasets/segmentation_dataset.py``):

* MGCA set ``requires_grad = False`` on the encoder but left it in train mode, so its BatchNorm
  statistics drifted with the downstream data; here a frozen encoder is in eval mode.
* MGCA's Dice is a mean of batch means; here the mean over images (``metrics/segmentation.py``).
* MGCA's masks stayed fractional after resizing; here they are binarised at half coverage.
* MGCA augmented (``ShiftScaleRotate``: scale ±10 %, rotation ±10°, no shift, p = 0.5, constant
  zero border) at full resolution, before resizing; here the same affine transform
  (albumentations ``Affine``) is applied after resizing, on the padded square (identical geometry
  for square radiographs, and non-square ones are rotated inside their padding).
* MGCA's ViT used a SETR decoder; here every backbone gets the same U-Net (c1/c2 upsampled).
* RSNA boxes are checked against the image's size when an image is read
  (:func:`~cxrbench.data.formats.rsna.check_boxes_inside`): a box outside its image is a
  ``DataFormatError`` naming the labels file and line, not silently clipped.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from cxrbench.errors import ConfigError, CxrbenchError
from cxrbench.losses.segmentation import SegLossSums, seg_loss
from cxrbench.metrics.segmentation import DiceAccumulator
from cxrbench.models.backbones import freeze, unfreeze
from cxrbench.systems import SYSTEMS, frozen_maps
from cxrbench.systems.base import Prepared, TransferSystem, loader
from cxrbench.tasks.base import Items, Task, TaskConfig, TaskData, probe_mode

DECODER_CHANNELS = (256, 128, 64, 32, 16)
"""Decoder widths, deepest block first (smp's U-Net default, which MGCA used)."""

PARAMS = ("decoder_channels",)
"""The keys of ``cfg.params`` this system reads."""

# MGCA's ShiftScaleRotate(shift_limit=0, scale_limit=0.1, rotate_limit=10, p=0.5, BORDER_CONSTANT)
AUG_SCALE = (0.9, 1.1)
AUG_ROTATE = (-10.0, 10.0)
AUG_P = 0.5


# ------------------------------------------------------------------------------------------ model


class UNet(nn.Module):
    """The artifact backbone as U-Net encoder + smp's ``UnetDecoder`` + a 1-class head.

    ``image_size`` is the side of the (square) training images; it is used for the dry forward
    pass that finds the channels of the six maps. ``forward`` returns logits ``(B, 1, H, W)`` at
    the input's size. ``c1``/``c2`` missing from the backbone's :class:`Features` (ViT) are
    bilinear upsamplings of ``c3`` (see the module docstring)."""

    def __init__(
        self,
        encoder: nn.Module,
        image_size: int,
        decoder_channels: Sequence[int] = DECODER_CHANNELS,
    ) -> None:
        super().__init__()
        from segmentation_models_pytorch.base import SegmentationHead
        from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder

        if len(decoder_channels) != 5:
            raise ConfigError(
                None, "params.decoder_channels", f"needs 5 values, got {list(decoder_channels)}"
            )
        self.encoder = encoder
        self.encoder_channels = self._channels(image_size)
        self.decoder = UnetDecoder(
            encoder_channels=self.encoder_channels,
            decoder_channels=list(decoder_channels),
            n_blocks=5,
        )
        self.head = SegmentationHead(decoder_channels[-1], 1, kernel_size=3)

    def _channels(self, image_size: int) -> list[int]:
        """Channels of ``[input, c1, c2, c3, c4, c5]`` from one forward pass on a zero image."""
        param = next(self.encoder.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None else torch.float32
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            with torch.no_grad():
                zeros = torch.zeros(1, 3, image_size, image_size, device=device, dtype=dtype)
                maps = self.pyramid(zeros)
        except (ValueError, RuntimeError) as err:
            raise ConfigError(
                None, "image.crop", f"the encoder does not take {image_size}px images: {err}"
            ) from err
        finally:
            self.encoder.train(was_training)
        return [int(m.shape[1]) for m in maps]

    def pyramid(self, x: Tensor) -> list[Tensor]:
        """``[x, c1, c2, c3, c4, c5]`` from the encoder (strides 1, 2, 4, 8, 16, 32)."""
        f = self.encoder(x)
        h, w = x.shape[-2:]
        c2 = f.c2 if f.c2 is not None else _upsample(f.c3, math.ceil(h / 4), math.ceil(w / 4))
        c1 = f.c1 if f.c1 is not None else _upsample(f.c3, math.ceil(h / 2), math.ceil(w / 2))
        return [x, c1, c2, f.c3, f.c4, f.c5]

    def decode(self, maps: list[Tensor]) -> Tensor:
        """Logits ``(B, 1, H, W)`` from the six maps."""
        return self.head(self.decoder(maps))

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.pyramid(x))


def _upsample(x: Tensor, h: int, w: int) -> Tensor:
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


# ------------------------------------------------------------------------------------------- data


def resize_pad_pair(
    image: np.ndarray, mask: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Resize a uint8 image and its boolean mask together to a ``size × size`` square.

    Long side to ``size``, short side zero-padded and centred (``transforms.resize_pad``); the
    mask is resized as 0/255 with the same interpolation and kept where it covers half a pixel."""
    from cxrbench.data.transforms import resize_pad

    if image.shape != mask.shape:
        raise ValueError(f"image {image.shape} and mask {mask.shape} differ in size")
    scaled = resize_pad(np.asarray(mask, dtype=bool).astype(np.uint8) * 255, size)
    return resize_pad(image, size), scaled >= 128


def augmenter() -> Any:
    """MGCA's segmentation augmentation as an albumentations ``Compose`` (image + mask).

    Scale in [0.9, 1.1] (one factor for both axes), rotation in [−10°, 10°], no shift, with
    probability 0.5; bilinear for the image, nearest for the mask, zero (black) border."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check at import
    import albumentations as A
    import cv2

    affine = A.Affine(
        scale=AUG_SCALE,
        rotate=AUG_ROTATE,
        translate_percent=0.0,
        keep_ratio=True,
        interpolation=cv2.INTER_LINEAR,
        mask_interpolation=cv2.INTER_NEAREST,
        border_mode=cv2.BORDER_CONSTANT,
        fill=0,
        fill_mask=0,
        p=AUG_P,
    )
    return A.Compose([affine])


def record_mask(record: Any, height: int, width: int) -> np.ndarray:
    """The boolean ``(height, width)`` mask of an annotation record (RSNA boxes checked first)."""
    from cxrbench.data.formats.rsna import RsnaImage, check_boxes_inside

    if isinstance(record, RsnaImage):
        check_boxes_inside(record, height, width)
    mask = np.asarray(record.mask(height, width), dtype=bool)
    if mask.shape != (height, width):
        raise CxrbenchError(
            f"{type(record).__name__}.mask({height}, {width}) gave shape {mask.shape}"
        )
    return mask


class SegmentationRows(Dataset[dict[str, Tensor]]):
    """Items as ``{"image": (3, S, S) float, "mask": (1, S, S) float in {0, 1}}``, S = ``size``."""

    def __init__(self, items: Items, size: int, *, augment: bool) -> None:
        if len(items.targets) != len(items.ids):
            raise CxrbenchError(
                f"segmentation needs one annotation record per image; got {len(items.targets)} "
                f"for {len(items.ids)} images (the task's annotations() must return records)"
            )
        self.items, self.size, self.augment = items, size, augment
        self._augmenter: Any = None

    def __len__(self) -> int:
        return len(self.items.ids)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        from cxrbench.data.codecs import read_image
        from cxrbench.data.transforms import to_tensor

        image = read_image(self.items.paths[i])
        mask = record_mask(self.items.targets[i], *image.shape)
        image, mask = resize_pad_pair(image, mask, self.size)
        if self.augment:
            if self._augmenter is None:
                self._augmenter = augmenter()
            # albumentations draws from its own generator: seed it from torch's, which Lightning
            # seeds per run and per worker, so augmented runs are reproducible
            self._augmenter.set_random_seed(int(torch.randint(0, 2**31 - 1, ())))
            out = self._augmenter(image=image, mask=mask.astype(np.uint8))
            image, mask = out["image"], out["mask"].astype(bool)
        target = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32)).unsqueeze(0)
        return {"image": to_tensor(image), "mask": target}


def decoder_channels(params: dict[str, Any]) -> tuple[int, ...]:
    """Validate ``cfg.params`` (unknown keys are errors) and return the decoder channels."""
    for key in params:
        if key not in PARAMS:
            raise ConfigError(
                None,
                f"params.{key}",
                f"unknown setting of the segmentation system; known: {', '.join(PARAMS)}",
            )
    value = params.get("decoder_channels", DECODER_CHANNELS)
    ok = isinstance(value, list | tuple) and len(value) == 5
    if not ok or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in value):
        raise ConfigError(
            None,
            "params.decoder_channels",
            f"must be 5 positive integers (one per decoder block, deepest first), got {value!r}",
        )
    return tuple(value)


# ------------------------------------------------------------------------------------------ system


@SYSTEMS.register("segmentation")
class SegmentationSystem(TransferSystem):
    """U-Net decoder (+ the encoder when fine-tuning) trained with the protocol loss."""

    @classmethod
    def prepare(
        cls,
        task: Task,
        cfg: TaskConfig,
        data: TaskData,
        encoder: nn.Module,
        meta: dict[str, Any],
        cache: Any,
    ) -> Prepared:
        """Build the U-Net on ``encoder`` and the loaders (the feature cache is not used)."""
        system = cls(encoder, cfg)
        parts = (("train", data.train), ("val", data.val), ("test", data.test))
        rows: list[Dataset[Any]] = [
            SegmentationRows(items, cfg.image.crop, augment=part == "train" and cfg.probe.augment)
            for part, items in parts
        ]
        rows, cached = frozen_maps.cached_rows(rows, system.pyramid, cfg)
        train_loader, val, test = (
            loader(r, cfg, train=part == "train") for r, (part, _) in zip(rows, parts, strict=True)
        )
        return Prepared(system, train_loader, val, test, probe_mode(cfg.probe, cached))

    def __init__(self, encoder: nn.Module, cfg: TaskConfig) -> None:
        super().__init__()
        channels = decoder_channels(cfg.params)
        self.cfg = cfg
        self.finetune = cfg.probe.finetune
        # frozen: no gradients, eval mode (a Backbone stays in eval when Lightning calls train())
        (unfreeze if self.finetune else freeze)(encoder)
        self.unet = UNet(encoder, cfg.image.crop, channels)
        self._val = (SegLossSums(), DiceAccumulator())
        self._test = (SegLossSums(), DiceAccumulator())

    @property
    def encoder(self) -> nn.Module:
        return self.unet.encoder

    def head_parameters(self) -> list[nn.Parameter]:
        """What trains in every mode: the decoder and the segmentation head."""
        return [*self.unet.decoder.parameters(), *self.unet.head.parameters()]

    def pyramid(self, image: Tensor) -> list[Tensor]:
        """The frozen encoder's six maps (eval mode, no gradients): what the map cache keeps."""
        self.encoder.eval()
        with torch.no_grad():
            return self.unet.pyramid(image)

    def forward(self, image: Tensor) -> Tensor:
        """Logits ``(B, 1, H, W)``; a frozen encoder runs in eval mode without gradients."""
        if self.finetune:
            return self.unet(image)
        return self.unet.decode(self.pyramid(image))

    def logits(self, batch: dict[str, Any]) -> Tensor:
        """Logits of a batch of images or of cached maps (``systems/frozen_maps.py``)."""
        if "maps" in batch:
            return self.unet.decode(list(batch["maps"]))
        return self(batch["image"])

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = seg_loss(self.logits(batch), batch["mask"])
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(batch["mask"]))
        return loss

    def _evaluate(
        self, batch: dict[str, Tensor], sums: tuple[SegLossSums, DiceAccumulator]
    ) -> None:
        logits = self.logits(batch).float()
        sums[0].update(logits, batch["mask"])
        sums[1].update(torch.sigmoid(logits), batch["mask"])

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self._val)

    def on_validation_epoch_start(self) -> None:
        for acc in self._val:
            acc.reset()

    def on_validation_epoch_end(self) -> None:
        loss, dice = self._val
        self.log("val/loss", loss.compute(), prog_bar=True)
        for key, value in dice.summary().items():
            self.log(f"val/{key}", value, prog_bar=key == "dice")
        for acc in self._val:
            acc.reset()

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self._test)

    def on_test_epoch_start(self) -> None:
        for acc in self._test:
            acc.reset()

    def on_test_epoch_end(self) -> None:
        loss, dice = self._test
        summary = {f"test/{key}": value for key, value in dice.summary().items()}
        self.test_results = {**summary, "test/loss": loss.compute()}
        self.test_predictions = dice.per_image()  # per-image Dice and its pixel counts
        for acc in self._test:
            acc.reset()
        for key, value in self.test_results.items():
            self.log(key, value)

    def configure_optimizers(self) -> Any:
        o = self.cfg.optim
        groups: list[dict[str, Any]] = [{"params": self.head_parameters(), "lr": o.lr}]
        if self.finetune:
            groups.append(
                {
                    "params": [p for p in self.encoder.parameters() if p.requires_grad],
                    "lr": o.lr * o.encoder_lr_scale,
                }
            )
        return self.adamw(groups, o)
