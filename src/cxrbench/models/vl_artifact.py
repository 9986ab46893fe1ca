"""The vision–language artifact: a method's text side beside its encoder artifact.

Zero-shot classification and image–report retrieval score images against texts in the space a
method learned (``PretrainMethod.encode_images`` / ``encode_texts`` / ``similarity``), so they
need more than the image encoder. A pre-training run folder holds, beside ``encoder/``::

    vl/
      vl.json            what rebuilds and verifies the method (below); written last
      heads.safetensors  the method's own weights: projection heads, temperature, prototypes
      text/              the text tower as a local Hugging Face folder (weights + tokenizer)

``vl.json`` holds ``format_version``, ``method``, ``params`` (the method's resolved settings),
``pretrain_config`` and ``config_hash`` (the run's), ``encoder_sha256`` (the image encoder the
heads belong to: loading refuses another), ``heads_sha256``, ``text_files`` (sha256 of every file
of ``text/``), ``text`` (tokenisation settings) and ``cxrbench_version``. The image-only artifact
and every task that reads it are unchanged; the image encoder is never stored twice.

The folder is written under a temporary name and renamed, so ``vl/`` is either complete or
absent. Weights load from safetensors only (no pickle).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import safetensors.torch
import torch
from omegaconf import OmegaConf

from cxrbench import __version__
from cxrbench.errors import CxrbenchError
from cxrbench.models.artifact import read_record
from cxrbench.utils.io import atomic_write_bytes, atomic_write_text, read_safetensors, sha256_file

if TYPE_CHECKING:
    from cxrbench.methods.base import PretrainMethod

FORMAT_VERSION = 1
VL_DIR = "vl"
VL_META = "vl.json"
HEADS_FILE = "heads.safetensors"
TEXT_DIR = "text"
#: state-dict prefixes stored elsewhere: the image encoder (its own artifact) and the text tower
#: (``text/``); everything else of the method is its heads
SHARED_PREFIXES = ("backbone.", "text.")
REQUIRED_KEYS = ("format_version", "method", "params", "pretrain_config", "encoder_sha256",
                 "heads_sha256", "text_files", "text")  # fmt: skip


class VLArtifactError(CxrbenchError):
    """A vision–language artifact is missing, incomplete, tampered with or not this encoder's."""


def head_state(method: PretrainMethod) -> dict[str, torch.Tensor]:
    """The method's weights that are neither the image encoder's nor the text tower's."""
    return {
        k: v.detach().to("cpu").contiguous()
        for k, v in method.state_dict().items()
        if not k.startswith(SHARED_PREFIXES)
    }


def export_vl(
    method: PretrainMethod,
    out_dir: Path,
    *,
    encoder_sha256: str,
    params: dict[str, Any],
    pretrain_config: dict[str, Any],
    config_hash: str,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``method``'s text side as a vision–language artifact in ``out_dir`` (which must not
    hold one yet). ``encoder_sha256`` is the sha256 of the encoder artifact of ``method``'s
    image encoder."""
    if not type(method).vl_space:
        raise VLArtifactError(f"method {type(method).__name__} has no image–text space to export")
    if method.text is None:
        raise VLArtifactError(f"{type(method).__name__} was built without its text tower")
    out_dir = Path(out_dir)
    if (out_dir / VL_META).is_file():
        raise VLArtifactError(f"{out_dir} already holds a vision–language artifact")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        text_dir = tmp / TEXT_DIR
        cast(Any, method.text.model).save_pretrained(str(text_dir), safe_serialization=True)
        method.text.tokenizer.save_pretrained(str(text_dir))
        heads = tmp / HEADS_FILE
        atomic_write_bytes(heads, safetensors.torch.save(head_state(method), {"format": "pt"}))
        meta = {
            "format_version": FORMAT_VERSION,
            "method": pretrain_config["method"],
            "params": params,
            "pretrain_config": pretrain_config,
            "config_hash": config_hash,
            "encoder_sha256": encoder_sha256,
            "heads_sha256": sha256_file(heads),
            "text_files": _text_files(text_dir),
            "text": {
                "max_length": method.text.max_length,
                "layers": method.text.layers,
                "word_reduce": method.text.word_reduce,
                "padding": method.text.padding,
            },
            "cxrbench_version": __version__,
            "extra": dict(extra or {}),
        }
        atomic_write_text(tmp / VL_META, json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if out_dir.exists():  # an empty or incomplete folder (no vl.json): replaced
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _text_files(text_dir: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(text_dir.iterdir()) if p.is_file()}


def read_vl_meta(vl_dir: Path) -> dict[str, Any]:
    """Read and check ``vl.json``: present, valid JSON, required keys, known format version."""
    return read_record(
        Path(vl_dir) / VL_META,
        VLArtifactError,
        REQUIRED_KEYS,
        FORMAT_VERSION,
        what="the vision–language metadata",
        absent=(
            f"no vision–language artifact in {vl_dir}: {VL_META} is missing (a zero-shot or "
            "retrieval task writes it from the pre-training run folder on first use, "
            "runner.pretrain.export_vl_from_run; an imported encoder has no text side)"
        ),
    )


def verify_vl(vl_dir: Path, meta: dict[str, Any]) -> None:
    """Every file of the artifact hashes to its record."""
    vl_dir = Path(vl_dir)
    expected = {HEADS_FILE: meta["heads_sha256"]}
    expected |= {f"{TEXT_DIR}/{name}": digest for name, digest in meta["text_files"].items()}
    for name, digest in expected.items():
        path = vl_dir / name
        if not path.is_file():
            raise VLArtifactError(f"{path} is missing although {vl_dir / VL_META} lists it")
        actual = sha256_file(path)
        if actual != digest:
            raise VLArtifactError(
                f"{path} does not match its record: sha256 recorded {digest}, actual {actual} "
                "(the file was modified or corrupted after export)"
            )


def load_vl(vl_dir: Path, encoder_dir: Path) -> tuple[PretrainMethod, dict[str, Any]]:
    """The method of a vision–language artifact on the image encoder of ``encoder_dir``, in eval
    mode without gradients: (method, vl.json). Refuses an encoder other than the one the heads
    were trained with, and any file that does not match its sha256."""
    from cxrbench.config import Layer, build
    from cxrbench.methods import METHODS
    from cxrbench.methods.base import PretrainConfig
    from cxrbench.models.artifact import load_encoder
    from cxrbench.models.backbones import load_state_dict_strict
    from cxrbench.models.text import TextEncoder

    vl_dir = Path(vl_dir)
    meta = read_vl_meta(vl_dir)
    verify_vl(vl_dir, meta)
    backbone, encoder_meta = load_encoder(encoder_dir)
    if encoder_meta["sha256"] != meta["encoder_sha256"]:
        raise VLArtifactError(
            f"{vl_dir}: its heads belong to the encoder with sha256 {meta['encoder_sha256']}, "
            f"not to {encoder_dir} ({encoder_meta['sha256']})"
        )
    source = str(vl_dir / VL_META)
    cls = METHODS.get(str(meta["method"]))
    cfg = build(PretrainConfig, [Layer(source, OmegaConf.create(meta["pretrain_config"]))])
    params: Any = build(cls.Config, [Layer(source, OmegaConf.create(meta["params"]))])
    t = meta["text"]
    freeze = cfg.text.freeze  # as pre-training built it (M-FLAG checks its text is frozen)
    text = TextEncoder.from_pretrained(
        vl_dir / TEXT_DIR,
        freeze=int(freeze) if freeze.isdigit() else freeze,
        max_length=int(t["max_length"]),
        layers=str(t["layers"]),
        word_reduce=str(t["word_reduce"]),
    )
    text.padding = str(t["padding"])
    if getattr(text.model, "pooler", None) is not None:
        text.model.pooler = None  # type: ignore[assignment]  # not exported, never used
    method = cls(params, backbone, text, cfg)
    expected = {k for k in method.state_dict() if not k.startswith(SHARED_PREFIXES)}
    state = read_safetensors(vl_dir / HEADS_FILE, "cannot read the method's heads")
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:
        raise VLArtifactError(
            f"{vl_dir / HEADS_FILE} does not fit method {meta['method']!r} built from "
            f"{VL_META}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    loaded = {k: v for k, v in method.state_dict().items() if k.startswith(SHARED_PREFIXES)}
    with torch.no_grad():  # encoder and text tower as loaded above, the heads from the file
        load_state_dict_strict(method, loaded | state, source=str(vl_dir / HEADS_FILE))
    method.eval()
    for p in method.parameters():
        p.requires_grad_(False)
    return method, meta


__all__ = [
    "VLArtifactError",
    "export_vl",
    "head_state",
    "load_vl",
    "read_vl_meta",
    "verify_vl",
]
