"""M-FLAG — Liu et al., "M-FLAG: Medical Vision-Language Pre-training with Frozen Language Models
and Latent Space Geometry Optimization", MICCAI 2023 (arXiv 2307.08347); official code
cheliu-computation/M-FLAG-MICCAI2023 (``utils/utils_builder.py``, ``utils/utils_trainer.py``,
``pretrain/config.yaml``).

Implemented: a trainable image encoder and a **fully frozen** language model (``text.freeze=all``:
no gradient, eval mode, never updated); the image's global feature ``v`` (raw pooled feature,
2048-d for ResNet-50) and the report's [CLS] feature are projected by two BN-MLPs
(Linear → BN → ReLU → Linear → BN(affine=False), 2048 hidden, 1024 out) to ``p`` and ``q``, and

    L = L_align + L_orth,
    L_align = mean_i 4·(1 − cos(p_i, q_i))                      (BYOL-style, no negatives)
    L_orth  = ½ [Σ_k (C_kk − 1)² + 0.0051 · Σ_{k≠l} C_kl²],  C = vᵀv / B on the raw features

(:mod:`cxrbench.losses.geometry`; both in float32 whatever the autocast precision). The loss terms
are ``align`` and ``orth`` (weight 1 each, as the official sum). Only the image encoder is
exported. :func:`trainable_parameters` counts what is trained (the paper's "78% fewer parameters"
is the trainable count against a method that fine-tunes its BERT; see
``benchmarks/perf/mflag_text_cache.py``).

**[CLS] cache** (``params.cache_text``, on by default; an optimisation, not part of the method):
the language model is frozen, in eval mode and deterministic, and the suite applies no text
augmentation, so a report's [CLS] feature never changes during a run. :class:`TextFeatureCache`
keeps it in memory (keyed by a blake2b digest of the report, on the CPU, detached, in the dtype the
model returned) and runs the language model only on the reports of a batch it has not seen, i.e.
only in the first epoch (under DDP each process caches the reports its shards brought, so with
W processes its misses die out over the first few epochs). It is a plain attribute, never in
``state_dict()`` or a checkpoint; each process holds its own, ``hidden_size`` floats plus ~130
bytes of index per distinct report (~3.2 KiB at 768-d fp32: 0.5–0.7 GB for MIMIC-CXR's training
reports).
It is valid only while nothing changes the frozen model: the method refuses a text encoder that is
not (or no longer) frozen ``all`` (:class:`~cxrbench.errors.ConfigError` on ``text.freeze``), and
the cache empties itself when any text parameter is modified in place (``load_state_dict``, an
optimiser step), swapped, moved or cast, or when ``max_length``/``layers``/the tokenizer change.
Exactness: under the attention mask the [CLS] of a report does not depend on the other reports of
the batch nor on the padding, so a cached row equals a fresh one; numerically, with
``padding="longest"`` the kernels' summation order depends on the padded length, so the uncached
path itself gives a report values differing in the last float bits (≤ 1e-6 measured on the CPU)
from one batch to another — the cache keeps the first. With ``padding="max_length"`` it was
bit-exact in our CPU tests.

Deviations from the official code, and why:

- **Report text**: the suite's MGCA-cleaned ``impression + " " + findings`` (the official
  concatenates the raw strings with no separator, fusing the last word of the impression with the
  first of the findings, and skips a ``'dumb'`` placeholder) — every method of the suite reads the
  same text.
- **Language model and tokenisation**: the run's text model (``text.model``; the official is
  CXR-BERT-general; [CLS] of the last layer with the default ``text.layers=last``, as the official)
  and ``text.max_length`` (112, MGCA's; the official truncates at 512 tokens): set
  ``text.max_length=512`` with a 512-position model to match. Padding to the batch's longest
  report instead of to 512 does not change [CLS] under the attention mask and saves compute.
- **Projectors** have no bias in their Linear layers (the official has): a bias followed by a
  BatchNorm is cancelled by its mean subtraction (zero gradient in training, absorbed by the
  running mean in eval), so the function is the same with 2 × (2048 + 1024) fewer parameters.
- **L_orth normalisation** divides by the actual local batch size (the official divides by the
  configured batch size; equal with its ``drop_last``, but not for a short last or validation
  batch). C is estimated on the local batch, not all-gathered, as in the official code.
- **Precision**: both losses in float32 with autocast off (the official computes the 2048×2048
  Gram matrix under fp16 autocast, where its squared entries can overflow); the run's Trainer
  precision (bf16-mixed on GPUs, no GradScaler) instead of fp16 autocast + GradScaler.
- **Schedule and optimiser**: the suite's linear warm-up + per-step cosine decay (``mflag.yaml``:
  no warm-up and a floor of 1e-8 / 2e-5, as the first cycle of the official schedule) instead of
  ``CosineAnnealingWarmRestarts(T_0 = int(max_epochs·N/4/B·0.4), eta_min=1e-8)``; AdamW weight
  decay on matrices only (the official decays every parameter, biases and BN scales included); the
  run's ``max_epochs`` (the official loop runs ``max_epochs + 1`` = 51 epochs). Like the official,
  ``mflag.yaml`` clips no gradient (the suite's default clips at 1.0).
- **Batch**: the preset's per-process batch (72 in ``paper``; the official uses 512 per process on
  2 GPUs). C is a per-batch estimate, noisier at small batches: ``--set data.batch_size=512``.
- **Images**: the suite's MGCA pipeline (resize 256, random crop 224; the ``paper`` preset also
  upsamples to 299 inside the backbone as MGCA does: ``--set backbone.upsample_to=null`` feeds 224
  as the official) instead of the official's bounding-box crop, min-max scaling and strong
  augmentation (rotation up to 90°, random grayscale, perspective, autocontrast); images are
  reshuffled every epoch (the official ``DistributedSampler`` never calls ``set_epoch``, so every
  epoch has the same order); the backbone initialisation is the run's ``backbone.weights`` (the
  official starts from ImageNet: ``--set backbone.weights=imagenet``).
- **Validation**: the suite also logs ``val/align`` and ``val/orth`` on the validate + test
  reports (the official has no validation); nothing is learned from them.
- **Freezing**: every text parameter is frozen; the official freezes the 12 encoder layers by
  ``requires_grad`` and runs the whole language model under ``no_grad``, so its embeddings get no
  gradient either: the same model.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cxrbench.errors import ConfigError
from cxrbench.losses.geometry import alignment_loss, orthogonality_loss
from cxrbench.methods import METHODS
from cxrbench.methods._heads import bn_mlp
from cxrbench.methods.base import PretrainMethod

log = logging.getLogger(__name__)


@dataclass
class MflagConfig:
    embed_dim: int = 1024  # output of both projectors
    hidden_dim: int = 2048  # hidden width of both projectors
    off_diagonal_weight: float = 0.0051  # Barlow Twins' λ on Σ_{k≠l} C_kl²
    cache_text: bool = True  # keep each report's frozen [CLS] feature in memory (see docstring)


def trainable_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module`` that require a gradient (shared ones counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def text_is_frozen(text: nn.Module | None) -> bool:
    """Whether ``text`` is a fully frozen encoder: built with ``freeze="all"``, no parameter that
    requires a gradient, and in eval mode."""
    if text is None or not getattr(text, "_frozen_all", False) or text.training:
        return False
    return not any(p.requires_grad for p in text.parameters())


class TextFeatureCache:
    """Report → frozen [CLS] feature, in memory, keyed by a blake2b digest of the report.

    Features are detached CPU copies in the dtype the encoder returned, kept as the (M, H) blocks
    the encoder produced (no per-report tensor objects: ~130 bytes of index per report on top of
    the features). :meth:`sync` empties the cache when the fingerprint of the encoder's state
    changes. The report text itself is never stored.
    """

    def __init__(self) -> None:
        self._where: dict[bytes, int] = {}  # digest → global row
        self._blocks: list[Tensor] = []
        self._starts: list[int] = []  # global row of each block's first row
        self._state: tuple[Any, ...] | None = None
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(text: str) -> bytes:
        return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, text: str) -> bool:
        return self.key(text) in self._where

    def __repr__(self) -> str:
        return f"TextFeatureCache({len(self)} reports, {self.nbytes()} bytes)"

    def nbytes(self) -> int:
        """Bytes of tensor storage held by the cached features."""
        return sum(block.untyped_storage().nbytes() for block in self._blocks)

    def clear(self) -> None:
        self._where.clear()
        self._blocks.clear()
        self._starts.clear()
        self._state = None

    def sync(self, state: tuple[Any, ...]) -> None:
        """Empty the cache if the encoder's fingerprint ``state`` differs from the stored one."""
        if state != self._state:
            if self._where:
                log.info("text encoder changed: emptied the [CLS] cache (%d reports)", len(self))
            self.clear()
            self._state = state

    def _row(self, index: int) -> Tensor:
        block = bisect.bisect_right(self._starts, index) - 1
        return self._blocks[block][index - self._starts[block]]

    def lookup(
        self, texts: Sequence[str], encode: Callable[[list[str]], Tensor], device: torch.device
    ) -> Tensor:
        """Features (B, H) of ``texts`` on ``device``; ``encode`` runs only on unseen reports
        (each distinct one once, in first-seen order)."""
        keys = [self.key(t) for t in texts]
        missing: dict[bytes, str] = {}
        for key, text in zip(keys, texts, strict=True):
            if key not in self._where and key not in missing:
                missing[key] = text
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        if missing:
            fresh = encode(list(missing.values())).detach().to("cpu", copy=True)
            if fresh.shape[0] != len(missing):
                raise ValueError(f"encode returned {fresh.shape[0]} rows for {len(missing)}")
            first = len(self._where)
            self._starts.append(first)
            self._blocks.append(fresh)
            self._where.update((key, first + i) for i, key in enumerate(missing))
        return torch.stack([self._row(self._where[key]) for key in keys]).to(device)


@METHODS.register("mflag")
class MFLAG(PretrainMethod):
    vl_space = True  # zero-shot / retrieval: cosine of the global image and report embeddings
    Config = MflagConfig

    def __init__(self, params: MflagConfig, backbone: Any, text: Any, run: Any) -> None:
        super().__init__(params, backbone, text, run)
        if not text_is_frozen(text):
            raise ConfigError(
                None,
                "text.freeze",
                "M-FLAG trains against a fully frozen language model: set text.freeze=all "
                f"(got {getattr(getattr(run, 'text', None), 'freeze', None)!r})",
            )
        self.image_proj = bn_mlp(backbone.feature_dims["pooled"], params.hidden_dim,
                                 params.embed_dim)  # fmt: skip
        self.text_proj = bn_mlp(text.hidden_size, params.hidden_dim, params.embed_dim)
        # a plain attribute (not a module or buffer): never part of state_dict() or a checkpoint
        self.text_cache: TextFeatureCache | None = TextFeatureCache() if params.cache_text else None

    def _require_frozen_text(self) -> None:
        if not text_is_frozen(self.text):
            if self.text_cache is not None:
                self.text_cache.clear()
            raise ConfigError(
                None,
                "text.freeze",
                "M-FLAG's language model must stay frozen ('all', eval mode, no gradient); it was "
                "unfrozen after the method was built (a cached [CLS] feature would be stale)",
            )

    def _text_state(self) -> tuple[Any, ...]:
        """Fingerprint of everything the [CLS] feature depends on: the parameters (in-place
        version counter, dtype, device, storage), ``max_length``, ``layers`` and the tokenizer."""
        text = self.text
        assert text is not None
        tensors = tuple(
            (getattr(p, "_version", 0), p.dtype, p.device, p.data_ptr()) for p in text.parameters()
        )
        return (text.max_length, text.layers, id(text.tokenizer), tensors)

    def _encode(self, texts: list[str], device: torch.device) -> Tensor:
        """[CLS] features of ``texts`` from the frozen language model."""
        assert self.text is not None
        tokens = self.text.tokenize(texts)
        ids, mask = tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
        return self.text(ids, mask).cls

    def text_features(self, texts: list[str], device: torch.device) -> Tensor:
        """Frozen [CLS] features (B, H) of ``texts``, from the cache when it is on."""
        self._require_frozen_text()
        if self.text_cache is None:
            return self._encode(list(texts), device)
        self.text_cache.sync(self._text_state())
        return self.text_cache.lookup(texts, lambda miss: self._encode(miss, device), device)

    def embed(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """Raw pooled image features ``v`` and projected image / report embeddings ``p``, ``q``."""
        image = batch["image"]
        pooled = self.backbone(image).pooled
        cls = self.text_features(list(batch["text"]), image.device)
        return pooled, self.image_proj(pooled), self.text_proj(cls)

    def encode_images(self, image: Tensor) -> dict[str, Tensor]:
        return {"global": self.global_image(self.image_proj, image)}

    def encode_texts(self, texts: list[str]) -> dict[str, Tensor]:
        device = next(self.text_proj.parameters()).device
        return {"global": F.normalize(self.text_proj(self.text_features(texts, device)), dim=-1)}

    def losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        pooled, p, q = self.embed(batch)
        return {
            "align": alignment_loss(p, q),
            "orth": orthogonality_loss(pooled, self.params.off_diagonal_weight),
        }
