"""Key maps shared by formats: torchvision ResNet / ViT names from other layouts."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from torch import Tensor

RESNET_TRUNK = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")


def strip_prefix(prefix: str, keep: tuple[str, ...] = RESNET_TRUNK) -> Callable[[str], str | None]:
    """``prefix + k`` → ``k`` for ``k`` under ``keep`` (torchvision ResNet keys); else ``None``."""

    def rename(key: str) -> str | None:
        if key.startswith(prefix) and key[len(prefix) :].startswith(keep):
            return key[len(prefix) :]
        return None

    return rename


def has_keys(*keys: str) -> Callable[[Mapping[str, Tensor]], bool]:
    return lambda state: all(k in state for k in keys)


def lacks_keys(*keys: str) -> Callable[[Mapping[str, Tensor]], bool]:
    return lambda state: not any(k in state for k in keys)


def both(*tests: Callable[[Mapping[str, Tensor]], bool]) -> Callable[[Mapping[str, Tensor]], bool]:
    return lambda state: all(t(state) for t in tests)


# timm / DeiT / BLIP VisionTransformer (patch_embed, cls_token, pos_embed, blocks.i.{norm1,
# attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm) → torchvision's VisionTransformer. The qkv
# Linear stacks q, k, v along its output rows as nn.MultiheadAttention's in_proj does, both use
# head_dim ** -0.5 and exact GELU, and both LayerNorms have eps 1e-6 in these models.
_TIMM_BLOCK = {
    "norm1": "ln_1",
    "attn.qkv.weight": "self_attention.in_proj_weight",
    "attn.qkv.bias": "self_attention.in_proj_bias",
    "attn.proj": "self_attention.out_proj",
    "norm2": "ln_2",
    "mlp.fc1": "mlp.0",
    "mlp.fc2": "mlp.3",
}
_TIMM_TOP = {
    "patch_embed.proj.weight": "conv_proj.weight",
    "patch_embed.proj.bias": "conv_proj.bias",
    "cls_token": "class_token",
    "pos_embed": "encoder.pos_embedding",
    "norm.weight": "encoder.ln.weight",
    "norm.bias": "encoder.ln.bias",
}
_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)$")


def vit_keys(
    prefix: str, top: Mapping[str, str], block: re.Pattern[str], inner: Mapping[str, str]
) -> Callable[[str], str | None]:
    """A rename into torchvision's ViT names: ``prefix`` + a key of ``top`` → its value; ``prefix``
    + a key ``block`` matches (groups: block index, rest) → ``encoder.layers.encoder_layer_<i>.``
    + the rest with its first ``inner`` name replaced (a name matches the whole rest or a
    leading dotted part of it; an unknown rest is kept, so the import reports it); anything else
    ``None``."""

    def rename(key: str) -> str | None:
        if not key.startswith(prefix):
            return None
        rest = key[len(prefix) :]
        if rest in top:
            return top[rest]
        match = block.match(rest)
        if match is None:
            return None
        index, tail = match.groups()
        for old, new in inner.items():
            if tail == old or tail.startswith(old + "."):
                return f"encoder.layers.encoder_layer_{index}.{new}{tail[len(old) :]}"
        return f"encoder.layers.encoder_layer_{index}.{tail}"  # unknown: reported, not loaded

    return rename


def timm_vit(prefix: str) -> Callable[[str], str | None]:
    """``prefix`` + a timm ViT key → the torchvision ViT key; ``None`` for anything else."""
    return vit_keys(prefix, _TIMM_TOP, _BLOCK, _TIMM_BLOCK)
