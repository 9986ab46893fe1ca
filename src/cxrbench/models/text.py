"""Text encoders: any BERT-family model from a local Hugging Face directory, one feature API.

:class:`TextEncoder` wraps ``AutoModel`` + ``AutoTokenizer`` loaded from a local folder (a
downloaded Bio_ClinicalBERT or CXR-BERT, or the corpus-trained small BERT of
:mod:`cxrbench.models.text_pretrain`); nothing is ever fetched from the hub. Choices made here:

- **Tokenisation** (MGCA): padding to ``max_length`` (112 by default) and truncation.
- **Sub-words → words**: a word is what the fast tokenizer's ``word_ids()`` calls one (for WordPiece
  that is a whitespace/punctuation-separated piece, i.e. a first piece plus its ``##``
  continuations). Without ``word_ids`` (slow tokenizers, or ``forward`` called without them) the
  word index is derived from the ids: every non-special token not starting with ``##`` opens a
  word. [CLS], [SEP], [PAD] and the other special tokens belong to no word. Word features are the
  **sum** of their sub-word features (GLoRIA and MGCA sum), ``word_reduce="mean"`` averages.
  Merging is one batched matrix product with a one-hot (B, W, L) assignment (deterministic, no
  per-token Python loop); ``W`` is the largest word count in the batch.
- **Layers**: ``"last"`` uses the last hidden state; ``"last4_sum"`` sums the outputs of the last
  four transformer layers (GLoRIA); a model with fewer than four layers sums all its layer outputs
  (the embedding output is never included).
- **[CLS] attention** (MGCA's word weights): the last layer's [CLS]→token attention averaged over
  heads. Models loaded with eager attention return it directly; with SDPA/flash attention (which
  return no weights) the [CLS] row is recomputed from the last layer's query/key projections and
  its input hidden state (BERT layout), which equals the eager value.
- **Freezing**: ``"all"`` (no grads, forward under ``no_grad``, and the module stays in eval mode
  when a parent calls ``.train()``), an int N (embeddings and the lower N layers frozen; dropout
  still follows the parent's mode), or ``"none"``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cxrbench.errors import CxrbenchError

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
LAYER_MODES = ("last", "last4_sum")
WORD_REDUCTIONS = ("sum", "mean")
HOW_TO_GET = (
    "Pass a local Hugging Face model folder: download e.g. emilyalsentzer/Bio_ClinicalBERT on a "
    "machine with internet (huggingface-cli download ... --local-dir DIR) and copy DIR here, or "
    "train a small BERT on the corpus reports with `cxrbench pretrain-text --root DATA_ROOT`"
)


@dataclass
class TextFeatures:
    """Output of :class:`TextEncoder`.

    ``cls`` (B, H) is the [CLS] feature; ``tokens`` (B, L, H) and ``mask`` (B, L, bool, True on
    real tokens, special tokens included) are per token; ``words`` (B, W, H) and ``word_mask``
    (B, W) are per word (sub-words merged, special tokens excluded); ``word_ids`` (B, L) maps each
    token to its word (-1: special or padding). With ``output_attentions``: ``cls_attention``
    (B, L), the last layer's [CLS]→token attention averaged over heads (rows sum to 1 over real
    tokens), and ``word_cls_attention`` (B, W), its sum over each word's sub-words.
    """

    cls: Tensor
    tokens: Tensor
    mask: Tensor
    words: Tensor
    word_mask: Tensor
    word_ids: Tensor
    cls_attention: Tensor | None = None
    word_cls_attention: Tensor | None = None


def check_model_dir(path: str | Path) -> Path:
    """Return ``path`` if it looks like a local HF model folder, else a :class:`CxrbenchError`.

    The error names the folder and what is missing (the folder, ``config.json``, weights, tokenizer
    files) and says how to get a model.
    """
    path = Path(path)
    missing: str | None = None
    if not path.exists():
        missing = "the folder does not exist"
    elif not path.is_dir():
        missing = "it is not a folder"
    elif not (path / "config.json").is_file():
        missing = "config.json is missing"
    elif not any((path / name).is_file() for name in WEIGHT_FILES):
        missing = f"model weights are missing (none of {', '.join(WEIGHT_FILES)})"
    elif not any((path / name).is_file() for name in TOKENIZER_FILES):
        missing = f"tokenizer files are missing (none of {', '.join(TOKENIZER_FILES)})"
    if missing is not None:
        raise CxrbenchError(
            f"{path}: not a Hugging Face text model folder: {missing}. {HOW_TO_GET}."
        )
    return path


def tokenize_texts(
    tokenizer: Any, texts: list[str], max_length: int, padding: str = "max_length"
) -> dict[str, Tensor]:
    """Tokenise like MGCA (truncate at ``max_length``; ``padding="max_length"`` pads every text to
    it as MGCA does, ``"longest"`` only to the batch's longest text: the same features under the
    attention mask, for less compute); add ``word_ids`` from a fast tokenizer.

    Returns ``input_ids``, ``attention_mask`` and, when the tokenizer is fast, ``word_ids`` (B, L)
    with -1 for special and padding tokens; the dict can be passed as ``encoder(**batch)``.
    """
    enc = tokenizer(
        list(texts),
        padding=padding,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if getattr(enc, "is_fast", False):
        rows = [[-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(texts))]
        batch["word_ids"] = torch.tensor(rows, dtype=torch.long).reshape(enc["input_ids"].shape)
    return batch


def word_ids_from_ids(
    input_ids: Tensor, attention_mask: Tensor, continuation: Tensor, special: Tensor
) -> Tensor:
    """Word index per token from ids alone: a non-special, non-``##`` token opens a word.

    ``continuation`` and ``special`` are boolean lookup tables over the vocabulary. Special and
    padding tokens (and a continuation with no word before it) get -1.
    """
    ids = input_ids.clamp(0, continuation.numel() - 1)
    member = attention_mask.bool() & ~special[ids]
    starts = member & ~continuation[ids]
    index = starts.long().cumsum(dim=1) - 1
    return torch.where(member & (index >= 0), index, torch.full_like(index, -1))


def merge_words(
    values: Tensor, word_ids: Tensor, reduce: str = "sum"
) -> tuple[Tensor, Tensor, Tensor]:
    """Merge per-token ``values`` (B, L, ...) into words with one batched matmul.

    Returns ``(words (B, W, ...), word_mask (B, W), assignment (B, W, L))`` where ``W`` is the
    largest word count in the batch (at least 1) and tokens with ``word_ids < 0`` are dropped;
    ``reduce`` is ``"sum"`` or ``"mean"`` over each word's tokens.
    """
    num_words = max(int(word_ids.max()) + 1, 1) if word_ids.numel() else 1
    index = torch.where(word_ids >= 0, word_ids, torch.full_like(word_ids, num_words))
    assignment = F.one_hot(index, num_words + 1)[..., :num_words].transpose(1, 2)
    assignment = assignment.to(values.dtype)
    flat = values.reshape(values.shape[0], values.shape[1], -1)
    words = torch.bmm(assignment, flat)
    counts = assignment.sum(dim=-1)
    if reduce == "mean":
        words = words / counts.clamp(min=1).unsqueeze(-1)
    words = words.reshape(values.shape[0], num_words, *values.shape[2:])
    return words, counts > 0, assignment


def cls_attention_from_layer(layer: nn.Module, hidden_in: Tensor, mask: Tensor) -> Tensor:
    """Head-averaged [CLS]→token attention of a BERT ``layer`` given its input ``hidden_in``.

    Recomputes only the [CLS] query row: ``softmax(q_cls · k / sqrt(d))`` with padding masked.
    """
    attention = getattr(getattr(layer, "attention", None), "self", None)
    if attention is None or not hasattr(attention, "query") or not hasattr(attention, "key"):
        raise CxrbenchError(
            f"cannot compute [CLS] attention for {type(layer).__name__}: load the text model "
            "with attn_implementation='eager'"
        )
    batch, length, _ = hidden_in.shape
    heads = int(attention.num_attention_heads)
    head_dim = int(attention.attention_head_size)
    query = attention.query(hidden_in[:, :1]).view(batch, heads, head_dim)
    key = attention.key(hidden_in).view(batch, length, heads, head_dim)
    scores = torch.einsum("bhd,blhd->bhl", query, key) / math.sqrt(head_dim)
    scores = scores.masked_fill(~mask.bool()[:, None, :], float("-inf"))
    return scores.softmax(dim=-1).mean(dim=1)


class TextEncoder(nn.Module):
    """A BERT-family encoder with MGCA tokenisation, word merging and [CLS] attention.

    Build it with :meth:`from_pretrained`. ``hidden_size`` is the feature width.
    """

    _continuation: Tensor
    _special: Tensor

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        freeze: str | int = "none",
        max_length: int = 112,
        layers: str = "last",
        word_reduce: str = "sum",
    ) -> None:
        super().__init__()
        if layers not in LAYER_MODES:
            raise CxrbenchError(f"text encoder layers must be one of {LAYER_MODES}, not {layers!r}")
        if word_reduce not in WORD_REDUCTIONS:
            raise CxrbenchError(
                f"text encoder word_reduce must be one of {WORD_REDUCTIONS}, not {word_reduce!r}"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.layers = layers
        self.word_reduce = word_reduce
        config = cast(Any, model).config
        self.hidden_size = int(config.hidden_size)
        self.max_length = _check_max_length(max_length, config)
        self.padding = "max_length"  # MGCA; the pre-training runner may choose "longest"
        continuation, special = _vocab_tables(tokenizer, int(config.vocab_size))
        self.register_buffer("_continuation", continuation, persistent=False)
        self.register_buffer("_special", special, persistent=False)
        self.frozen_layers = self._apply_freeze(freeze)
        self._frozen_all = freeze == "all"
        if self._frozen_all:
            self.train(False)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        freeze: str | int = "none",
        max_length: int = 112,
        layers: str = "last",
        word_reduce: str = "sum",
        trust_remote_code: bool = False,
        attn_implementation: str | None = None,
        depth: int | None = None,
    ) -> Self:
        """Load model and tokenizer from a local HF folder (never the network).

        ``trust_remote_code`` is needed for models shipping their own code (CXR-BERT);
        ``attn_implementation`` (e.g. ``"eager"``) is passed to ``AutoModel``. ``depth`` keeps
        only the first ``depth`` transformer layers with their pre-trained weights (MGCA's text
        model is Bio_ClinicalBERT loaded with a 6-layer config, ``configs/bert_config.json``).
        """
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        path = check_model_dir(path)
        extra: dict[str, Any] = {}
        if attn_implementation is not None:
            extra["attn_implementation"] = attn_implementation
        if depth is not None:
            config = AutoConfig.from_pretrained(
                str(path), local_files_only=True, trust_remote_code=trust_remote_code
            )
            full = int(config.num_hidden_layers)
            if isinstance(depth, bool) or not 1 <= depth <= full:
                raise CxrbenchError(
                    f"{path}: text depth must be a layer count in 1..{full}, got {depth!r}"
                )
            config.num_hidden_layers = depth
            extra["config"] = config
        try:
            model = AutoModel.from_pretrained(
                str(path), local_files_only=True, trust_remote_code=trust_remote_code, **extra
            )
            tokenizer = AutoTokenizer.from_pretrained(
                str(path), local_files_only=True, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError, KeyError) as err:
            raise CxrbenchError(f"{path}: could not load the text model: {err}") from err
        return cls(
            model,
            tokenizer,
            freeze=freeze,
            max_length=max_length,
            layers=layers,
            word_reduce=word_reduce,
        )

    @property
    def num_layers(self) -> int:
        """Number of transformer layers of the wrapped model."""
        return len(_encoder_layers(self.model))

    def _apply_freeze(self, freeze: str | int) -> int:
        """Set ``requires_grad`` for ``freeze``; return the number of frozen transformer layers."""
        layers = _encoder_layers(self.model)
        if freeze == "none":
            return 0
        if freeze == "all":
            self.model.requires_grad_(False)
            return len(layers)
        count = int(freeze) if isinstance(freeze, int) or str(freeze).isdigit() else -1
        if not 0 <= count <= len(layers):
            raise CxrbenchError(
                f"text encoder freeze must be 'none', 'all' or a layer count in 0..{len(layers)}, "
                f"not {freeze!r}"
            )
        base = getattr(self.model, "base_model", self.model)
        embeddings = getattr(base, "embeddings", None)
        if embeddings is None:
            raise CxrbenchError(f"{type(self.model).__name__} has no embeddings module to freeze")
        embeddings.requires_grad_(False)
        for layer in layers[:count]:
            layer.requires_grad_(False)
        return count

    def train(self, mode: bool = True) -> Self:
        """Like ``nn.Module.train``, but a fully frozen encoder always stays in eval mode."""
        return super().train(mode and not getattr(self, "_frozen_all", False))

    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        """MGCA tokenisation of ``texts``; see :func:`tokenize_texts`."""
        return tokenize_texts(self.tokenizer, texts, self.max_length, self.padding)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        *,
        word_ids: Tensor | None = None,
        output_attentions: bool = False,
    ) -> TextFeatures:
        """Encode a tokenised batch (see :class:`TextFeatures`)."""
        grad = torch.no_grad() if self._frozen_all else contextlib.nullcontext()
        with grad:
            tokens, hidden_in, attentions = self._run(input_ids, attention_mask, output_attentions)
            if word_ids is None:
                word_ids = word_ids_from_ids(
                    input_ids, attention_mask, self._continuation, self._special
                )
            word_ids = word_ids.to(input_ids.device)
            words, word_mask, assignment = merge_words(tokens, word_ids, self.word_reduce)
            cls_attention = word_cls_attention = None
            if output_attentions:
                if attentions is not None:
                    cls_attention = attentions[-1][:, :, 0].mean(dim=1)
                else:
                    last = _encoder_layers(self.model)[-1]
                    assert hidden_in is not None
                    cls_attention = cls_attention_from_layer(last, hidden_in, attention_mask)
                weights = cls_attention.to(assignment.dtype).unsqueeze(-1)
                word_cls_attention = torch.bmm(assignment, weights).squeeze(-1)
        return TextFeatures(
            cls=tokens[:, 0],
            tokens=tokens,
            mask=attention_mask.bool(),
            words=words,
            word_mask=word_mask,
            word_ids=word_ids,
            cls_attention=cls_attention,
            word_cls_attention=word_cls_attention,
        )

    def _run(
        self, input_ids: Tensor, attention_mask: Tensor, output_attentions: bool
    ) -> tuple[Tensor, Tensor | None, tuple[Tensor, ...] | None]:
        """Run the HF model: (token features, input of the last layer, attentions or None)."""
        config = cast(Any, self.model).config
        eager = getattr(config, "_attn_implementation", "eager") == "eager"
        want_attn = output_attentions and eager
        want_hidden = self.layers == "last4_sum" or (output_attentions and not eager)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=want_hidden,
            output_attentions=want_attn,
            return_dict=True,
        )
        hidden = out.hidden_states if want_hidden else None
        if self.layers == "last4_sum":
            assert hidden is not None
            tokens = torch.stack(hidden[1:][-4:]).sum(dim=0)
        else:
            tokens = out.last_hidden_state
        attentions = out.attentions if want_attn and out.attentions else None
        hidden_in = hidden[-2] if hidden is not None else None
        return tokens, hidden_in, attentions


def _encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer layer list of a BERT-family model (``base_model.encoder.layer``)."""
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise CxrbenchError(
            f"{type(model).__name__} is not a BERT-family model (no encoder.layer list)"
        )
    return layers


def _check_max_length(max_length: int, config: Any) -> int:
    """``max_length`` if the model has that many positions, else a :class:`CxrbenchError`."""
    positions = getattr(config, "max_position_embeddings", None)
    if max_length < 2 or (positions is not None and max_length > int(positions)):
        raise CxrbenchError(
            f"text max_length {max_length} must be between 2 and the model's "
            f"max_position_embeddings ({positions})"
        )
    return int(max_length)


def _vocab_tables(tokenizer: Any, model_vocab: int) -> tuple[Tensor, Tensor]:
    """Boolean lookup tables over token ids: ``##`` continuation pieces and special tokens."""
    vocab: dict[str, int] = tokenizer.get_vocab()
    size = max(model_vocab, len(tokenizer), max(vocab.values(), default=0) + 1)
    continuation = torch.zeros(size, dtype=torch.bool)
    ids = [i for token, i in vocab.items() if token.startswith("##")]
    continuation[torch.tensor(ids, dtype=torch.long)] = True
    special = torch.zeros(size, dtype=torch.bool)
    special[torch.tensor(list(tokenizer.all_special_ids), dtype=torch.long)] = True
    return continuation, special
