"""Contract 1: a pre-training method.

A method is an ``nn.Module`` built from its validated config; it owns its encoders and heads and
returns **named loss terms** from :meth:`PretrainMethod.losses`. The pre-training system
(``systems/pretrain.py``) weights, sums, logs and optimises them; the method never sees an
optimiser, a logger or Lightning. :meth:`image_encoder` returns the backbone that is exported as the
encoder artifact (contract 2).

Adding a method = ``methods/<key>.py`` (a subclass registered with ``@METHODS.register("<key>")``, a
docstring naming the paper, what is implemented and every deviation) +
``configs/method/<key>.yaml``. Nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from omegaconf import MISSING
from torch import nn

from cxrbench.data.roots import DataRoots

if TYPE_CHECKING:
    from cxrbench.models.backbones import Backbone
    from cxrbench.models.text import TextEncoder


@dataclass
class NoParams:
    """Method parameters of a method that has none."""


@dataclass
class BackboneSpec:
    name: str = "resnet50"
    weights: str | None = None  # None (random), "imagenet", or a local weights file
    upsample_to: int | None = None  # MGCA/GLoRIA feed ResNet-50 a 299-px upsampled input
    tokens_from: str = "c4"
    width: int | None = None  # stem width of the `tiny` ResNet-18 layout (None: its default, 16)


@dataclass
class TextSpec:
    model: str = "auto"  # a local Hugging Face directory, or "auto": the corpus-trained BERT
    freeze: str = "none"  # "none", "all" or the number of lower layers to freeze
    max_length: int = 112
    layers: str = "last"  # "last" or "last4_sum" (GLoRIA)
    dropout: float | None = None  # override every dropout rate of the text model (None: its own)
    padding: str = "longest"  # "longest" in the batch (same features, less compute) or "max_length"
    depth: int | None = None  # keep the first N transformer layers (MGCA: 6 of Bio_ClinicalBERT's)


@dataclass
class OptimSpec:
    lr: float = 2e-5
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup: float = 0.4  # fraction of the optimisation steps spent in linear warm-up (MGCA: 40%)
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    grad_clip: float | None = 1.0


@dataclass
class DataSpec(DataRoots):
    resize: int = 256  # long side resized to this, zero-padded square (MGCA resize_img)
    crop: int = 224  # random crop for training, centre crop for validation
    batch_size: int = 72
    workers: int = 4
    limit_pairs: int | None = None  # use only the first N training pairs (quick runs)
    # read images from the preprocessed image store (data/store.py): off | exact (the decoded
    # files' pixels, bit for bit: out of the config hash) | draft (JPEG DCT-domain downscaling)
    store: str = "off"


@dataclass
class TrainerSpec:
    accelerator: str = "auto"  # cpu | gpu | auto
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp
    precision: str = "32-true"  # bf16-mixed on GPUs
    max_epochs: int = 50
    max_steps: int = -1
    log_every: int = 10
    val_every: int = 1  # validate every N epochs
    deterministic: bool = False
    progress: bool = True
    checkpoint_every: int = 0  # also save last.ckpt every N steps (0: at epoch ends only)


@dataclass
class PretrainConfig:
    """A pre-training run: the merge of preset, method YAML and ``--set`` overrides."""

    method: str = MISSING
    seed: int = 0
    #: "unified": the preset's protocol, the same for every method; "official": the method YAML's
    #: ``official:`` section on top (its paper's recipe where the protocol differs, docs/methods.md)
    recipe: str = "unified"
    backbone: BackboneSpec = field(default_factory=BackboneSpec)
    text: TextSpec = field(default_factory=TextSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    data: DataSpec = field(default_factory=DataSpec)
    trainer: TrainerSpec = field(default_factory=TrainerSpec)
    loss_weights: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)  # validated against the method's Config


class PretrainMethod(nn.Module):
    """Base class of every pre-training method (see the module docstring)."""

    #: dataclass of the method's own parameters (``params:`` in its YAML)
    Config: ClassVar[type] = NoParams
    #: whether the method needs the text encoder (paired reports)
    needs_text: ClassVar[bool] = True
    #: whether there is anything to optimise (``random_init``/``imagenet`` only export)
    trains: ClassVar[bool] = True

    def __init__(
        self, params: Any, backbone: Backbone, text: TextEncoder | None, run: PretrainConfig
    ):
        super().__init__()
        self.params = params
        self.backbone = backbone
        self.text = text
        self.run = run

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Named scalar loss terms for a batch (``image``: (B, 3, H, W), ``text``: list of str)."""
        raise NotImplementedError

    def image_encoder(self) -> Backbone:
        """The module exported as the encoder artifact."""
        return self.backbone

    def on_train_step_start(self, step: int, epoch: int) -> None:
        """Per-step state (prototype normalisation, freezing schedules, queues)."""

    def train_dataset(self, data_root: Path, split: str) -> torch.utils.data.Dataset | None:
        """A method that does not learn from image–report pairs returns its own dataset here."""
        return None

    # ------------------------------------------------ the image–text space (zero-shot, retrieval)
    #: whether the method has a shared image–text space that zero-shot and retrieval tasks score
    #: through :meth:`encode_images`, :meth:`encode_texts` and :meth:`similarity`; such a method
    #: is exported with its text side as well (``models/vl_artifact.py``)
    vl_space: ClassVar[bool] = False

    def encode_images(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the shared space keeps of a batch of images (eval mode, no gradients needed):
        tensors whose first dimension is the batch, so the batches of a split concatenate."""
        raise NotImplementedError(f"{type(self).__name__} has no image–text space")

    def encode_texts(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """What the shared space keeps of a batch of texts (reports or prompts), as
        :meth:`encode_images`."""
        raise NotImplementedError(f"{type(self).__name__} has no image–text space")

    def similarity(
        self, images: dict[str, torch.Tensor], texts: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """``(n_images, n_texts)`` scores, higher for a better match. The default is the cosine
        of the ``"global"`` entries (which :meth:`encode_images` / :meth:`encode_texts` return
        L2-normalised): the global similarity the contrastive methods train."""
        return images["global"] @ texts["global"].t()

    def global_image(self, head: nn.Module, image: torch.Tensor) -> torch.Tensor:
        """``head`` on the pooled image feature, L2-normalised (a global image embedding)."""
        return torch.nn.functional.normalize(head(self.backbone(image).pooled), dim=-1)

    def global_text(self, head: nn.Module, texts: list[str]) -> torch.Tensor:
        """``head`` on the texts' [CLS] features, L2-normalised (a global text embedding)."""
        device = next(head.parameters()).device
        return torch.nn.functional.normalize(head(self.text_cls(texts, device)), dim=-1)

    def text_cls(self, texts: list[str], device: torch.device) -> torch.Tensor:
        """The text tower's [CLS] features of ``texts`` (for :meth:`encode_texts`)."""
        assert self.text is not None, "a method with an image–text space has a text tower"
        tokens = {k: v.to(device) for k, v in self.text.tokenize(list(texts)).items()}
        return self.text(tokens["input_ids"], tokens["attention_mask"]).cls
