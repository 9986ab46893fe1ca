"""MGCA — Wang et al., "Multi-Granularity Cross-modal Alignment for Generalized Medical Visual
Representation Learning", NeurIPS 2022 (arXiv 2210.06044; official code HKU-MedAI/MGCA).

Implemented, with the official defaults (``configs/method/mgca.yaml``):

- **ITA** (instance-wise alignment): symmetric InfoNCE between the 128-d global embeddings
  (BN-MLP heads on the pooled image feature and the report [CLS]), τ1 = 0.07, the two directions
  summed as in the official code.
- **CTA** (cross-attention token alignment, ``losses/token_alignment.py``): words attend over
  image tokens and image tokens over words (``bidirectional``), τ2 = 0.1; word weights are the
  text model's last-layer [CLS] attention summed over each word's sub-words, clipped to its
  10th–90th percentile and normalised; patch weights are uniform for ResNets and, for ViTs, the
  last block's [CLS] attention (head-averaged, patch columns, clipped 10–90% and normalised). The
  local heads are BN-MLPs applied per token. ``L_CTA = L_word + L_patch``.
- **CPA** (prototype alignment, ``losses/prototypes.py``): 500 prototypes (a bias-free linear map
  whose rows are L2-normalised before every step), Sinkhorn–Knopp codes with ε = 0.05 and 3
  iterations — the **distributed** Sinkhorn under DDP (the plan's sums are all-reduced, so the
  codes are those of the global batch) — and the swapped prediction with τ3 = 0.2. The prototypes
  get no update during the first ``freeze_prototypes_epochs`` epochs (1).
- Total: ``λ1 L_ITA + λ2 L_CTA + λ3 L_CPA`` with λ = 1, 1, 1 (the official command line's values;
  its constructor defaults are 1 / 0.7 / 0.5): the terms are ``ita``, ``cta``, ``cpa`` and the
  weights are ``loss_weights``.

Deviations from the official code, and why:

- **Word/attention alignment.** The official word weights are shifted by one token (it drops the
  [CLS] column of the attention, then zips it with the token list that still starts at [CLS]), and
  [SEP] counts as a word. We weight each real word by its own attention and leave special tokens
  out (``TextEncoder`` merges sub-words and excludes [CLS]/[SEP]/[PAD]).
- **Padding.** The official word-side loss keeps padded word positions as columns of the
  word–word similarity (with weight 0 as rows), and its per-token BatchNorm sees the zero padded
  words. Here padded words are neither rows nor columns and the local heads' BatchNorm sees real
  tokens only. The patch side masks padded words exactly as the official code does.
- **Global batch for ITA under DDP.** The official ITA scores each GPU's batch alone; ours gathers
  the embeddings across ranks (as ``convirt``), so the negatives are the global batch. In one
  process the two are identical.
- **Prototype freezing.** The official code sets the prototype gradients to ``None`` after the
  backward pass of the first epoch; we scale them to zero in the forward pass (same update: Adam
  moments stay zero and the weight decay only shrinks rows that are re-normalised before use), so
  DDP never sees an unused parameter.
- **Schedule.** The official ``CosineAnnealingWarmupRestarts`` (40% warm-up, min lr 1e-8) is the
  suite's linear warm-up + cosine with the same warm-up fraction; the official early stopping on
  the validation loss is not used (every method trains the same number of epochs).
- Numerically, the Sinkhorn subtracts the (global) maximum score before ``exp``, which cancels in
  the first normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cxrbench.errors import ConfigError
from cxrbench.losses.contrastive import info_nce
from cxrbench.losses.prototypes import swapped_prediction
from cxrbench.losses.token_alignment import clipped_weights, token_alignment
from cxrbench.methods import METHODS
from cxrbench.methods._heads import TokenHead, bn_mlp
from cxrbench.methods.base import PretrainMethod
from cxrbench.models.backbones import ViTBackbone

PATCH_WEIGHTS = ("auto", "uniform", "cls_attention")


@dataclass
class MgcaConfig:
    embed_dim: int = 128
    hidden_dim: int = 2048
    temperature: float = 0.07  # τ1, ITA
    local_temperature: float = 0.1  # τ2, CTA
    proto_temperature: float = 0.2  # τ3, CPA
    num_prototypes: int = 500
    epsilon: float = 0.05  # Sinkhorn entropic regularisation
    sinkhorn_iterations: int = 3
    freeze_prototypes_epochs: int = 1
    bidirectional: bool = True  # patches also attend over words
    weight_quantiles: list[float] | None = None  # clip range of the token weights; [0.1, 0.9]
    patch_weights: str = "auto"  # auto: cls_attention for ViTs, uniform for ResNets


def scale_grad(x: Tensor, scale: float) -> Tensor:
    """``x`` in the forward pass, ``scale`` × its gradient in the backward pass."""
    if scale == 1.0:
        return x
    return x.detach() + scale * (x - x.detach())


def _vit_cls_attention(block: nn.Module, hidden: Tensor) -> Tensor:
    """Head-averaged [CLS]→patch attention of a torchvision ViT ``EncoderBlock`` whose attention
    input (the output of its ``ln_1``) is ``hidden`` (B, 1 + N, D)."""
    attn = cast(nn.MultiheadAttention, block.self_attention)
    d, heads = attn.embed_dim, attn.num_heads
    weight, bias = attn.in_proj_weight, attn.in_proj_bias
    q = F.linear(hidden[:, :1], weight[:d], None if bias is None else bias[:d])
    k = F.linear(hidden, weight[d : 2 * d], None if bias is None else bias[d : 2 * d])
    b, n, _ = k.shape
    q = q.view(b, heads, d // heads)
    k = k.view(b, n, heads, d // heads)
    scores = torch.einsum("bhd,bnhd->bhn", q, k) / float(d // heads) ** 0.5
    return scores.softmax(dim=-1).mean(dim=1)[:, 1:]


@METHODS.register("mgca")
class MGCA(PretrainMethod):
    vl_space = True  # zero-shot / retrieval: cosine of the global image and report embeddings
    Config = MgcaConfig

    def __init__(self, params: MgcaConfig, backbone: Any, text: Any, run: Any) -> None:
        super().__init__(params, backbone, text, run)
        p = params
        if p.patch_weights not in PATCH_WEIGHTS:
            raise ConfigError(None, "params.patch_weights", f"must be one of {PATCH_WEIGHTS}")
        self.quantiles = tuple(p.weight_quantiles or (0.1, 0.9))
        if len(self.quantiles) != 2 or not 0 <= self.quantiles[0] <= self.quantiles[1] <= 1:
            raise ConfigError(None, "params.weight_quantiles", "must be [low, high] in [0, 1]")
        is_vit = isinstance(backbone, ViTBackbone)
        mode = p.patch_weights
        if mode == "auto":
            mode = "cls_attention" if is_vit else "uniform"
        if mode == "cls_attention" and not is_vit:
            raise ConfigError(None, "params.patch_weights", "cls_attention needs a ViT backbone")
        self.patch_mode = mode
        dims = backbone.feature_dims
        self.image_global = bn_mlp(dims["pooled"], p.hidden_dim, p.embed_dim)
        self.text_global = bn_mlp(text.hidden_size, p.hidden_dim, p.embed_dim)
        self.image_local = TokenHead(dims["tokens"], p.hidden_dim, p.embed_dim)
        self.text_local = TokenHead(text.hidden_size, p.hidden_dim, p.embed_dim)
        self.prototypes = nn.Linear(p.embed_dim, p.num_prototypes, bias=False)
        self._epoch = 0
        self._ln_out: Tensor | None = None
        if mode == "cls_attention":
            self._last_block().ln_1.register_forward_hook(self._keep_attention_input)

    def _last_block(self) -> Any:
        """The last transformer block of a ViT backbone (torchvision ``EncoderBlock``)."""
        layers = cast(Any, self.backbone).encoder.layers
        return layers[-1]

    def _keep_attention_input(self, module: nn.Module, args: Any, output: Tensor) -> None:
        self._ln_out = output

    def on_train_step_start(self, step: int, epoch: int) -> None:
        self._epoch = epoch

    def encode(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Normalised global/local embeddings, masks and token weights of a batch."""
        assert self.text is not None
        image = batch["image"]
        tokens = {k: v.to(image.device) for k, v in self.text.tokenize(batch["text"]).items()}
        t = self.text(tokens["input_ids"], tokens["attention_mask"],
                      word_ids=tokens.get("word_ids"), output_attentions=True)  # fmt: skip
        f = self.backbone(image)
        assert t.word_cls_attention is not None
        out = {
            "image": F.normalize(self.image_global(f.pooled), dim=-1),
            "text": F.normalize(self.text_global(t.cls), dim=-1),
            "patches": F.normalize(self.image_local(f.tokens), dim=-1),
            "words": F.normalize(self.text_local(t.words, t.word_mask), dim=-1),
            "word_mask": t.word_mask,
            "word_weights": clipped_weights(t.word_cls_attention, t.word_mask, *self.quantiles),
        }
        n = f.tokens.shape[1]
        if self.patch_mode == "cls_attention":
            assert self._ln_out is not None
            with torch.no_grad():
                attention = _vit_cls_attention(self._last_block(), self._ln_out.detach())
            self._ln_out = None
            everything = torch.ones_like(attention, dtype=torch.bool)
            out["patch_weights"] = clipped_weights(attention, everything, *self.quantiles)
        else:
            out["patch_weights"] = f.tokens.new_full((f.tokens.shape[0], n), 1.0 / n)
        return out

    def encode_images(self, image: Tensor) -> dict[str, Tensor]:
        return {"global": self.global_image(self.image_global, image)}

    def encode_texts(self, texts: list[str]) -> dict[str, Tensor]:
        return {"global": self.global_text(self.text_global, texts)}

    def losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        p = self.params
        e = self.encode(batch)
        ita, _, _ = info_nce(e["image"], e["text"], p.temperature, normalize=False)
        tau = p.local_temperature
        cta = token_alignment(e["words"], e["patches"], tau, e["word_weights"],
                              query_mask=e["word_mask"])  # fmt: skip
        if p.bidirectional:
            cta = cta + token_alignment(e["patches"], e["words"], tau, e["patch_weights"],
                                        key_mask=e["word_mask"])  # fmt: skip
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        frozen = self.training and self._epoch < p.freeze_prototypes_epochs
        protos = scale_grad(self.prototypes.weight, 0.0 if frozen else 1.0)
        cpa = swapped_prediction(e["image"] @ protos.t(), e["text"] @ protos.t(),
                                 p.proto_temperature, p.epsilon, p.sinkhorn_iterations)  # fmt: skip
        return {"ita": 2.0 * ita, "cta": cta, "cpa": cpa}
