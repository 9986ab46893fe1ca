"""Image backbones behind one feature API: ResNet-50/18, ViT-B/16 and two CPU-sized presets.

Input: 3 channels (grayscale replicated) normalised as :data:`NORMALIZATION`. Output:
:class:`Features`: ``pooled`` (global), ``c3``/``c4``/``c5`` (strides 8/16/32), ``tokens`` (local).

- **ResNet** (``resnet50``, the protocol default; ``resnet18``; ``tiny``): c3/c4/c5 are layer2/3/4
  of one pass, ``pooled`` the average-pooled c5, ``tokens`` the flattened c4 (MGCA/GLoRIA's local
  features) or c5 (``tokens_from="c5"``). Keys are torchvision's minus ``fc``. ``upsample_to``
  (default None) bilinearly resizes the input (``align_corners=True``) before conv1 as MGCA/GLoRIA
  do with 299; strides then refer to the resized image (224 → 299: a 19×19 c4 grid).
- ``tiny``: ResNet-18 layout (BasicBlock, 2-2-2-2), stem ``w``, stage widths ``w, 2w, 4w, 8w``;
  ``width=16`` by default: c3/c4/c5 of 32/64/128 channels, ``pooled`` 128.
- **ViT** (``vit_b16``: dim 768, depth 12, 12 heads; ``vit_tiny``: dim 192, depth 4 by default, 3
  heads; patch 16): torchvision's encoder and keys (minus ``heads``), fixed input size, only
  ``tokens_from="c4"``/``upsample_to=None``. ``pooled`` = final-LayerNorm [CLS], ``tokens`` = patch
  tokens. The pyramid has no parameters so the encoder holds only pre-trained weights (learned
  adapters such as ViTDet's deconvolutions belong to task heads): c4 = patch-token map (stride 16),
  c3 = its bilinear 2× upsampling (stride 8), c5 = its 2×2 max-pooling (stride 32, as ViTDet).
  ``clip_vit_b32`` (CheXzero's CLIP image tower, for imported checkpoints): patch 32, so the
  strides are 16/32/64; ``ln_pre``, QuickGELU, eps 1e-5 (:class:`CLIPViTBackbone`).

:func:`build_backbone` records every option, defaults included, in ``backbone.config`` for the
encoder artifact to rebuild the module; ``weights`` is not part of it (the artifact carries them).
"""

from __future__ import annotations

import inspect
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Self, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import ResNet18_Weights, ResNet50_Weights, ViT_B_16_Weights, WeightsEnum
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1
from torchvision.models.vision_transformer import Encoder, interpolate_embeddings

from cxrbench.errors import ConfigError, CxrbenchError
from cxrbench.registry import Registry
from cxrbench.utils.io import read_safetensors, torch_load

log = logging.getLogger(__name__)

NORMALIZATION: dict[str, list[float]] = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
"""Input normalisation of every backbone (MGCA's): ``(x - 0.5) / 0.5`` on 3 replicated channels."""

BACKBONES: Registry[Callable[..., Backbone]] = Registry("backbone")
M = TypeVar("M", bound=nn.Module)


@dataclass
class Features:
    """What every backbone returns: maps (B, C, H, W); ``tokens`` (B, N, Dt) on ``token_grid``.

    ``c1`` (stride 2, the stem) and ``c2`` (stride 4) exist for convolutional backbones only: the
    full-resolution skips of a U-Net decoder. They are not part of ``feature_dims``."""

    pooled: Tensor
    c3: Tensor
    c4: Tensor
    c5: Tensor
    tokens: Tensor
    token_grid: tuple[int, int]
    c1: Tensor | None = None
    c2: Tensor | None = None


class Backbone(nn.Module):
    """Base class. ``feature_dims``: pooled/c3/c4/c5/tokens; ``strides``: c3/c4/c5/tokens;
    ``token_grid``: (h, w) of ``tokens`` at ``input_size``; ``head_prefixes``: classifier keys of a
    torchvision checkpoint that weight loading skips."""

    head_prefixes: tuple[str, ...] = ()

    def __init__(self, name: str, input_size: int, imagenet: WeightsEnum | None) -> None:
        super().__init__()
        self.name = name
        self.input_size = input_size
        self.imagenet_weights = imagenet
        self.config: dict[str, Any] = {"name": name, "image_size": input_size}
        self.feature_dims: dict[str, int] = {}
        self.strides: dict[str, int] = {}
        self.token_grid: tuple[int, int] = (0, 0)
        self._frozen = False
        # set by set_input_normalization; not part of the state dict (the artifact records it)
        self.register_buffer("_input_scale", None, persistent=False)
        self.register_buffer("_input_shift", None, persistent=False)

    def forward(self, x: Tensor) -> Features:  # pragma: no cover - abstract
        raise NotImplementedError

    def set_input_normalization(self, mean: list[float], std: list[float]) -> None:
        """Every task normalises images as :data:`NORMALIZATION`; an encoder trained with other
        statistics (an imported checkpoint's) gets its own back exactly, as the first step of
        :meth:`forward`: ``x' = x·(s_p / s) + (m_p − m) / s``, where ``x = (u − m_p) / s_p``."""
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise CxrbenchError(
                f"normalisation needs 3 means and 3 positive stds, got {mean}, {std}"
            )
        base_m, base_s = NORMALIZATION["mean"], NORMALIZATION["std"]
        if list(mean) == base_m and list(std) == base_s:
            self._input_scale = self._input_shift = None
            return
        scale = [b / s for b, s in zip(base_s, std, strict=True)]
        shift = [(b - m) / s for b, m, s in zip(base_m, mean, std, strict=True)]
        self._input_scale = torch.tensor(scale).view(1, 3, 1, 1)
        self._input_shift = torch.tensor(shift).view(1, 3, 1, 1)

    def _normalized(self, x: Tensor) -> Tensor:
        scale, shift = self._input_scale, self._input_shift
        if scale is None or shift is None:
            return x
        return x * scale.to(x.dtype) + shift.to(x.dtype)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters that still require gradients (empty after :func:`freeze`)."""
        return [p for p in self.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> Self:
        """Like ``nn.Module.train``, but a frozen backbone stays in eval mode (BatchNorm fixed)."""
        return super().train(mode and not self._frozen)


def freeze(module: M) -> M:
    """Stop gradients into ``module`` and put it in eval mode; returns it.

    Backbones inside ``module`` stay in eval mode even when a parent later calls ``.train()``
    (Lightning does at the start of fitting); other frozen modules must be put back into eval by
    their owner.
    """
    return _set_frozen(module, True)


def unfreeze(module: M) -> M:
    """Undo :func:`freeze`: gradients on, train mode."""
    return _set_frozen(module, False)


def _set_frozen(module: M, frozen: bool) -> M:
    module.requires_grad_(not frozen)
    for sub in module.modules():
        if isinstance(sub, Backbone):
            sub._frozen = frozen
    return module.train(not frozen)


class ResNetBackbone(Backbone):
    """A torchvision-layout ResNet trunk (conv1, bn1, layer1..4; no fc) with configurable widths."""

    head_prefixes = ("fc.",)

    def __init__(
        self, name: str, block: type[BasicBlock | Bottleneck], layers: tuple[int, int, int, int],
        widths: tuple[int, int, int, int], *, image_size: int, tokens_from: str = "c4",
        upsample_to: int | None = None, imagenet: WeightsEnum | None = None,
    ) -> None:  # fmt: skip
        super().__init__(name, image_size, imagenet)
        if tokens_from not in ("c4", "c5"):
            raise ConfigError(None, "tokens_from", f"must be 'c4' or 'c5', got {tokens_from!r}")
        self.tokens_from = tokens_from
        self.upsample_to = upsample_to
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes, dims, stages = widths[0], [], []
        for i, (planes, blocks) in enumerate(zip(widths, layers, strict=True)):
            stage, inplanes = _make_stage(block, inplanes, planes, blocks, 1 if i == 0 else 2)
            stages.append(stage)
            dims.append(inplanes)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.feature_dims = {"pooled": dims[3], "c3": dims[1], "c4": dims[2], "c5": dims[3]}
        self.feature_dims["tokens"] = self.feature_dims[tokens_from]
        self.strides = {"c3": 8, "c4": 16, "c5": 32, "tokens": 16 if tokens_from == "c4" else 32}
        side = math.ceil((upsample_to or image_size) / self.strides["tokens"])  # ceil per stride 2
        self.token_grid = (side, side)
        _init_resnet(self)

    def forward(self, x: Tensor) -> Features:
        """One pass through the trunk; every map is an intermediate of that pass."""
        x = self._normalized(x)
        if self.upsample_to is not None:
            size = (self.upsample_to, self.upsample_to)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        c1 = self.relu(self.bn1(self.conv1(x)))
        c2 = self.layer1(self.maxpool(c1))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        pooled = torch.flatten(F.adaptive_avg_pool2d(c5, 1), 1)
        src = c4 if self.tokens_from == "c4" else c5
        tokens = src.flatten(2).transpose(1, 2)  # a view for channels_last maps
        return Features(pooled, c3, c4, c5, tokens, (src.shape[-2], src.shape[-1]), c1, c2)


def _make_stage(
    block: type[BasicBlock | Bottleneck], inplanes: int, planes: int, blocks: int, stride: int
) -> tuple[nn.Sequential, int]:
    """One ResNet stage with torchvision's module names (``0.downsample.0`` etc.)."""
    out = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != out:
        downsample = nn.Sequential(conv1x1(inplanes, out, stride), nn.BatchNorm2d(out))
    stage = [block(inplanes, planes, stride, downsample)]
    stage += [block(out, planes) for _ in range(1, blocks)]
    return nn.Sequential(*stage), out


def _init_resnet(module: nn.Module) -> None:
    """torchvision's ResNet initialisation: Kaiming-normal convolutions, unit BatchNorm."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


class ViTBackbone(Backbone):
    """A ViT encoder with torchvision's module names (conv_proj, class_token, encoder; no heads)."""

    head_prefixes = ("heads.",)

    def __init__(
        self, name: str, image_size: int, *, depth: int, dim: int, heads: int, mlp_dim: int,
        patch: int = 16, imagenet: WeightsEnum | None = None, tokens_from: str = "c4",
        upsample_to: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(name, image_size, imagenet)
        if tokens_from != "c4" or upsample_to is not None:
            msg = f"ViT backbones take only 'c4' and None, got {tokens_from!r} and {upsample_to!r}"
            raise ConfigError(None, "tokens_from/upsample_to", msg)
        if image_size % patch:
            raise ConfigError(None, "image_size", f"must be a multiple of {patch}: {image_size}")
        self.patch = patch
        side = image_size // patch
        self.conv_proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.encoder = Encoder(side * side + 1, depth, heads, dim, mlp_dim, 0.0, 0.0, norm)
        fan_in = 3 * patch * patch
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(self.conv_proj.bias)  # type: ignore[arg-type]
        self.feature_dims = dict.fromkeys(("pooled", "c3", "c4", "c5", "tokens"), dim)
        self.strides = {"c3": patch // 2, "c4": patch, "c5": 2 * patch, "tokens": patch}
        self.token_grid = (side, side)

    def _encode(self, x: Tensor) -> Tensor:
        """[CLS] + patch tokens → the encoder's output (position embedding, blocks, final norm)."""
        return self.encoder(x)

    def forward(self, x: Tensor) -> Features:
        """Patchify, prepend [CLS], run the encoder, then build the parameter-free pyramid."""
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"{self.name} takes {self.input_size}px, got {list(x.shape[2:])}")
        x = self.conv_proj(self._normalized(x))
        b, d, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        x = self._encode(torch.cat([self.class_token.expand(b, -1, -1), x], dim=1))
        tokens = x[:, 1:]
        c4 = tokens.transpose(1, 2).reshape(b, d, h, w)
        c3 = F.interpolate(c4, scale_factor=2.0, mode="bilinear", align_corners=False)
        c5 = F.max_pool2d(c4, kernel_size=2)
        return Features(x[:, 0], c3, c4, c5, tokens, (h, w))


class QuickGELU(nn.Module):
    """CLIP's activation: ``x · sigmoid(1.702 x)``."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class CLIPViTBackbone(ViTBackbone):
    """OpenAI CLIP's image transformer (``VisualTransformer``) in torchvision's names.

    It differs from torchvision's ViT in four places, each mirrored here: the patch convolution
    has no bias, a LayerNorm (``ln_pre``) follows the position embedding, the MLPs use QuickGELU
    and every LayerNorm has eps 1e-5. ``encoder.ln`` holds CLIP's ``ln_post`` (CLIP applies it
    to [CLS] only; here every token passes it, so ``pooled`` is CLIP's pre-projection image
    feature). The joint-space projection ``proj`` is not part of the encoder."""

    def __init__(
        self, name: str, image_size: int, *, depth: int, dim: int, heads: int, mlp_dim: int,
        patch: int, tokens_from: str = "c4", upsample_to: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(
            name, image_size, depth=depth, dim=dim, heads=heads, mlp_dim=mlp_dim, patch=patch,
            tokens_from=tokens_from, upsample_to=upsample_to,
        )  # fmt: skip
        self.conv_proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch, bias=False)
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / (3 * patch * patch)))
        self.ln_pre = nn.LayerNorm(dim, eps=1e-5)
        for module in self.encoder.modules():
            if isinstance(module, nn.LayerNorm):
                module.eps = 1e-5
        for layer in self.encoder.layers:
            layer.mlp[1] = QuickGELU()

    def _encode(self, x: Tensor) -> Tensor:
        x = self.ln_pre(x + self.encoder.pos_embedding)
        return self.encoder.ln(self.encoder.layers(x))


@BACKBONES.register("resnet50")
def resnet50(
    image_size: int, *, tokens_from: str = "c4", upsample_to: int | None = None
) -> Backbone:
    """ResNet-50 (the protocol default): pooled 2048, c3/c4/c5 512/1024/2048."""
    return ResNetBackbone(
        "resnet50", Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), image_size=image_size,
        tokens_from=tokens_from, upsample_to=upsample_to, imagenet=ResNet50_Weights.IMAGENET1K_V1,
    )  # fmt: skip


@BACKBONES.register("resnet18")
def resnet18(
    image_size: int, *, tokens_from: str = "c4", upsample_to: int | None = None
) -> Backbone:
    """ResNet-18: pooled 512, c3/c4/c5 128/256/512."""
    return ResNetBackbone(
        "resnet18", BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), image_size=image_size,
        tokens_from=tokens_from, upsample_to=upsample_to, imagenet=ResNet18_Weights.IMAGENET1K_V1,
    )  # fmt: skip


@BACKBONES.register("tiny")
def tiny(
    image_size: int, *, width: int = 16, tokens_from: str = "c4", upsample_to: int | None = None
) -> Backbone:
    """ResNet-18 layout with widths (w, 2w, 4w, 8w), w=16 by default; no ImageNet weights."""
    if width < 1:
        raise ConfigError(None, "width", f"must be a positive integer, got {width}")
    widths = (width, 2 * width, 4 * width, 8 * width)
    return ResNetBackbone(
        "tiny", BasicBlock, (2, 2, 2, 2), widths, image_size=image_size,
        tokens_from=tokens_from, upsample_to=upsample_to,
    )  # fmt: skip


@BACKBONES.register("vit_b16")
def vit_b16(
    image_size: int, *, tokens_from: str = "c4", upsample_to: int | None = None
) -> Backbone:
    """ViT-B/16 (dim 768, depth 12, 12 heads); ImageNet weights are torchvision's IMAGENET1K_V1."""
    return ViTBackbone(
        "vit_b16", image_size, depth=12, dim=768, heads=12, mlp_dim=3072,
        imagenet=ViT_B_16_Weights.IMAGENET1K_V1, tokens_from=tokens_from, upsample_to=upsample_to,
    )  # fmt: skip


@BACKBONES.register("clip_vit_b32")
def clip_vit_b32(
    image_size: int, *, depth: int = 12, tokens_from: str = "c4", upsample_to: int | None = None
) -> Backbone:
    """CLIP ViT-B/32's image tower (dim 768, ``depth`` 12, 12 heads, patch 32; CheXzero's): for
    imported checkpoints (``cxrbench import --from chexzero``); no ImageNet weights."""
    return CLIPViTBackbone(
        "clip_vit_b32", image_size, depth=depth, dim=768, heads=12, mlp_dim=3072, patch=32,
        tokens_from=tokens_from, upsample_to=upsample_to,
    )  # fmt: skip


@BACKBONES.register("vit_tiny")
def vit_tiny(
    image_size: int, *, depth: int = 4, tokens_from: str = "c4", upsample_to: int | None = None
) -> Backbone:
    """ViT-Tiny/16 for CPU runs: dim 192, 3 heads, MLP 768, ``depth`` blocks; no ImageNet init."""
    return ViTBackbone(
        "vit_tiny", image_size, depth=depth, dim=192, heads=3, mlp_dim=768,
        tokens_from=tokens_from, upsample_to=upsample_to,
    )  # fmt: skip


def build_backbone(
    name: str, *, weights: str | Path | None = None, image_size: int = 224, **kwargs: Any
) -> Backbone:
    """Build a registered backbone.

    ``weights``: None (random init from the global torch RNG), ``"imagenet"`` (torchvision's
    weights, from ``$TORCH_HOME/hub/checkpoints`` or downloaded) or a
    ``.pth``/``.pt``/``.safetensors`` file with the state dict (a torchvision classifier head in it
    is ignored). Unknown options raise :class:`ConfigError`; ``backbone.config`` holds every option,
    defaults included.
    """
    builder = BACKBONES.get(name)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
        raise ConfigError(None, "image_size", f"must be an integer ≥ 32, got {image_size!r}")
    params = inspect.signature(builder).parameters
    for key in kwargs:
        if key not in params or key == "image_size":
            known = ", ".join(k for k in params if k != "image_size") or "(none)"
            raise ConfigError(None, key, f"unknown option for backbone {name!r}; known: {known}")
    options: dict[str, Any] = {k: p.default for k, p in params.items() if k != "image_size"}
    options.update(kwargs)
    backbone = builder(image_size=image_size, **options)
    backbone.config = {"name": name, "image_size": image_size, **options}
    if weights is not None:
        load_weights(backbone, weights)
    return backbone


def load_weights(backbone: Backbone, weights: str | Path) -> None:
    """Load ``"imagenet"`` or a weights file into ``backbone`` with a strict key check."""
    if str(weights) == "imagenet":
        state, source = _imagenet_state(backbone), f"ImageNet weights of {backbone.name}"
    else:
        state, source = read_state_dict(Path(weights)), str(weights)
    skip = backbone.head_prefixes
    kept = {k: v for k, v in state.items() if not k.startswith(skip)}
    load_state_dict_strict(backbone, kept, source=source)
    log.info("loaded %s into %s", source, backbone.name)


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Read a flat name → tensor mapping from ``.safetensors`` or ``.pth``/``.pt``/``.bin``."""
    if not path.is_file():
        raise CxrbenchError(f"weights file {path} does not exist")
    action = "cannot read the weights file"
    if path.suffix == ".safetensors":
        return read_safetensors(path, action)
    if path.suffix not in (".pth", ".pt", ".bin"):
        raise CxrbenchError(f"weights file {path}: expected .pth, .pt, .bin or .safetensors")
    obj = torch_load(path, action)
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        msg = "must hold a flat state dict (name → tensor); convert others with `cxrbench import`"
        raise CxrbenchError(f"weights file {path} {msg}")
    return dict(obj)


def load_state_dict_strict(module: nn.Module, state: Mapping[str, Tensor], *, source: str) -> None:
    """``load_state_dict(strict=True)``; an error lists missing/unexpected keys and wrong shapes."""
    own = module.state_dict()
    shapes = [
        f"{k}: expected {tuple(v.shape)}, got {tuple(state[k].shape)}"
        for k, v in own.items()
        if k in state and v.shape != state[k].shape
    ]
    groups = {
        "missing keys": sorted(set(own) - set(state)),
        "unexpected keys": sorted(set(state) - set(own)),
        "shape mismatches": shapes,
    }
    problems = [
        f"{label} ({len(items)}): {', '.join(items[:20])}{' ...' if len(items) > 20 else ''}"
        for label, items in groups.items()
        if items
    ]
    if problems:
        raise CxrbenchError(f"{source} does not fit {type(module).__name__}: {'; '.join(problems)}")
    module.load_state_dict(dict(state), strict=True)


def _imagenet_state(backbone: Backbone) -> dict[str, Tensor]:
    """torchvision's ImageNet state dict from the hub cache or a download; errors name the file."""
    enum = backbone.imagenet_weights
    if enum is None:
        raise CxrbenchError(f"backbone {backbone.name!r} has no ImageNet weights; use weights=None")
    filename = os.path.basename(enum.url)
    directory = Path(torch.hub.get_dir()) / "checkpoints"
    try:
        state = enum.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except Exception as err:
        cached = directory / filename
        cause = f"{cached} exists but could not be read" if cached.exists() else "download failed"
        raise CxrbenchError(
            f"ImageNet weights of backbone {backbone.name!r} could not be loaded ({cause}: {err}). "
            f"They are the file {filename} ({enum.url}). Either put it in {directory}/ "
            "($TORCH_HOME/hub/checkpoints/, set TORCH_HOME to choose the folder) or pass its local "
            f"path as weights='/path/to/{filename}'."
        ) from err
    if isinstance(backbone, ViTBackbone) and backbone.input_size != 224:
        state = interpolate_embeddings(backbone.input_size, backbone.patch, OrderedDict(state))
    return dict(state)
