"""The encoder artifact (contract 2): ``encoder.safetensors`` + ``encoder.json``.

It is the only thing downstream tasks see. ``encoder.safetensors`` holds the backbone's state dict
(contiguous CPU tensors, no pickle). ``encoder.json`` holds what is needed to rebuild and trust it:
``format_version``, ``backbone``, ``backbone_config`` (the options of
:func:`~cxrbench.models.backbones.build_backbone`), ``feature_dims``, ``strides``, ``token_grid``,
``normalization``, ``input_size``, ``method``, ``config_hash``, ``sha256`` (of the safetensors
file), ``parameters``, ``cxrbench_version`` and ``extra`` (free-form: pre-train seed, wall time,
...).

Both files are written atomically (temp file + ``os.replace``), the JSON last, so a directory with
an ``encoder.json`` always holds the complete weights it describes.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from cxrbench import __version__
from cxrbench.errors import CxrbenchError, file_errors
from cxrbench.models.backbones import (
    NORMALIZATION,
    Backbone,
    build_backbone,
    load_state_dict_strict,
)
from cxrbench.runs import META_FILE as META_FILE
from cxrbench.utils.io import atomic_write_bytes, atomic_write_text, read_safetensors, sha256_file

FORMAT_VERSION = 1
WEIGHTS_FILE = "encoder.safetensors"
REQUIRED_KEYS = (
    "format_version",
    "backbone",
    "backbone_config",
    "feature_dims",
    "strides",
    "normalization",
    "input_size",
    "method",
    "config_hash",
    "sha256",
    "parameters",
    "cxrbench_version",
)


class ArtifactError(CxrbenchError):
    """An encoder artifact is missing, incomplete, tampered with or does not fit its backbone."""


def export_encoder(
    backbone: Backbone,
    out_dir: Path,
    *,
    method: str,
    config_hash: str,
    extra: dict[str, Any] | None = None,
    normalization: dict[str, list[float]] | None = None,
) -> Path:
    """Write ``backbone`` as an encoder artifact into ``out_dir`` (created if needed).

    Returns ``out_dir``. ``extra`` must be JSON-serialisable (pre-train seed, wall time, ...).
    ``normalization``: the input statistics the weights were trained with (default: the
    pipeline's :data:`NORMALIZATION`); :func:`load_encoder` applies them inside the backbone.
    """
    out_dir = Path(out_dir)
    weights = out_dir / WEIGHTS_FILE
    atomic_write_bytes(weights, encoder_bytes(backbone))
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "backbone": backbone.name,
        "backbone_config": dict(backbone.config),
        "feature_dims": dict(backbone.feature_dims),
        "strides": dict(backbone.strides),
        "token_grid": list(backbone.token_grid),
        "normalization": {k: list(v) for k, v in (normalization or NORMALIZATION).items()},
        "input_size": backbone.input_size,
        "method": method,
        "config_hash": config_hash,
        "sha256": sha256_file(weights),
        "parameters": sum(p.numel() for p in backbone.parameters()),
        "cxrbench_version": __version__,
        "extra": dict(extra or {}),
    }
    try:
        text = json.dumps(meta, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except (TypeError, ValueError) as err:
        raise ArtifactError(f"{out_dir / META_FILE}: metadata is not JSON: {err}") from err
    atomic_write_text(out_dir / META_FILE, text)
    return out_dir


def encoder_bytes(backbone: Backbone) -> bytes:
    """The bytes of ``encoder.safetensors`` for ``backbone``: its state dict as contiguous CPU
    tensors (the same weights always give the same bytes, hence the same sha256)."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in backbone.state_dict().items()}
    return safetensors.torch.save(state, metadata={"format": "pt"})


def read_meta(out_dir: Path) -> dict[str, Any]:
    """Read and check ``encoder.json``: present, valid JSON, required keys, known format version."""
    return read_record(
        Path(out_dir) / META_FILE,
        ArtifactError,
        REQUIRED_KEYS,
        FORMAT_VERSION,
        what="the encoder metadata",
        absent=(
            f"no encoder artifact in {out_dir}: {META_FILE} is missing (export_encoder writes it "
            "last, so an interrupted export leaves none; re-run the pre-training or the export)"
        ),
    )


def read_record(
    path: Path,
    error: type[CxrbenchError],
    required: tuple[str, ...],
    format_version: int,
    *,
    what: str,
    absent: str,
) -> dict[str, Any]:
    """A JSON record of an artifact (``encoder.json``, ``vl.json``): present (else ``absent``),
    valid UTF-8 JSON, an object, with the ``required`` keys and a ``format_version`` this
    cxrbench reads (≤ ``format_version``); every failure is an ``error`` naming ``path``."""
    if not path.is_file():
        raise error(absent)
    with file_errors(path, f"cannot read {what}"):
        raw = path.read_bytes()
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{path} is not valid JSON: {err}") from err
    if not isinstance(meta, dict):
        raise error(f"{path}: expected a JSON object, got {type(meta).__name__}")
    missing = [k for k in required if k not in meta]
    if missing:
        raise error(f"{path} lacks the keys {', '.join(missing)}")
    if not isinstance(meta["format_version"], int) or meta["format_version"] > format_version:
        raise error(
            f"{path}: format_version {meta['format_version']!r} is not supported by cxrbench "
            f"{__version__} (supports ≤ {format_version}); upgrade cxrbench"
        )
    return meta


def feature_identity(meta: dict[str, Any]) -> str:
    """What features from this artifact depend on, for caches: the weights' sha256, and the
    input normalisation when it is not the pipeline's (the same weights, other statistics)."""
    norm = meta.get("normalization")
    if not norm or (list(norm.get("mean", [])), list(norm.get("std", []))) == (
        NORMALIZATION["mean"], NORMALIZATION["std"]
    ):  # fmt: skip
        return str(meta["sha256"])
    return f"{meta['sha256']}+norm{norm['mean']}{norm['std']}"


def encoder_sha256(out_dir: Path) -> str:
    """The recorded sha256 of ``encoder.safetensors``, the artifact's identity (not re-hashed)."""
    return str(read_meta(out_dir)["sha256"])


def verify_encoder(out_dir: Path, meta: dict[str, Any] | None = None) -> None:
    """Check that ``encoder.safetensors`` exists and hashes to the digest in ``encoder.json``."""
    meta = read_meta(out_dir) if meta is None else meta
    weights = Path(out_dir) / WEIGHTS_FILE
    if not weights.is_file():
        raise ArtifactError(f"{weights} is missing although {Path(out_dir) / META_FILE} exists")
    actual = sha256_file(weights)
    if actual != meta["sha256"]:
        raise ArtifactError(
            f"{weights} does not match its record: sha256 recorded {meta['sha256']}, "
            f"actual {actual} (the file was modified or corrupted after export)"
        )


def load_encoder(out_dir: Path, *, verify: bool = True) -> tuple[Backbone, dict[str, Any]]:
    """Rebuild the backbone from ``encoder.json`` and load its weights strictly: (backbone, meta).

    With ``verify`` (the default) the sha256 of the weights file is checked first. The backbone
    comes back as ``build_backbone`` makes it (train mode, gradients on); tasks call ``freeze``
    where their protocol freezes the encoder.
    """
    out_dir = Path(out_dir)
    key = _load_key(out_dir)
    if key is not None and key in _LOADED:  # checked when it was loaded; the files are unchanged
        backbone, meta = _LOADED[key]
        return copy.deepcopy(backbone), copy.deepcopy(meta)
    backbone, meta = _load_encoder(out_dir, verify)
    if key is not None and verify:
        while len(_LOADED) >= _LOADED_KEEP:
            del _LOADED[next(iter(_LOADED))]
        _LOADED[key] = (copy.deepcopy(backbone), copy.deepcopy(meta))
    return backbone, meta


#: encoders loaded (and verified) in this process, by folder and the stamps of its two files: a
#: probe grid loads one artifact per run, and rebuilding a backbone (its random init, then the
#: weights) costs more than copying one (ResNet-50: ~1 s)
_LOADED: dict[tuple[Any, ...], tuple[Backbone, dict[str, Any]]] = {}
_LOADED_KEEP = 2


def _load_key(out_dir: Path) -> tuple[Any, ...] | None:
    try:
        stats = [(out_dir / name).stat() for name in (META_FILE, WEIGHTS_FILE)]
    except OSError:
        return None  # missing: _load_encoder says so
    return (str(out_dir.resolve()), *((st.st_size, st.st_mtime_ns) for st in stats))


def _load_encoder(out_dir: Path, verify: bool) -> tuple[Backbone, dict[str, Any]]:
    meta = read_meta(out_dir)
    weights = out_dir / WEIGHTS_FILE
    if verify:
        verify_encoder(out_dir, meta)
    elif not weights.is_file():
        raise ArtifactError(f"{weights} is missing although {out_dir / META_FILE} exists")
    backbone = _rebuild(out_dir / META_FILE, meta)
    norm = meta["normalization"]
    if not isinstance(norm, dict) or not {"mean", "std"} <= norm.keys():
        raise ArtifactError(f"{out_dir / META_FILE}: key 'normalization' needs 'mean' and 'std'")
    try:
        backbone.set_input_normalization(list(norm["mean"]), list(norm["std"]))
    except CxrbenchError as err:
        raise ArtifactError(f"{out_dir / META_FILE}: key 'normalization': {err}") from err
    state = read_safetensors(weights, "cannot read the encoder weights")
    try:
        with torch.no_grad():
            load_state_dict_strict(backbone, state, source=str(weights))
    except ArtifactError:
        raise
    except CxrbenchError as err:
        raise ArtifactError(
            f"{out_dir / META_FILE}: key 'backbone' says {meta['backbone']!r} (options in "
            f"'backbone_config'), which does not fit the weights: {err}"
        ) from err
    return backbone, meta


def _rebuild(path: Path, meta: dict[str, Any]) -> Backbone:
    """The untrained backbone ``encoder.json`` (at ``path``) describes; its keys ``backbone``,
    ``backbone_config`` and ``feature_dims`` must agree."""
    config = meta["backbone_config"]
    if not isinstance(config, dict) or not {"name", "image_size"} <= config.keys():
        raise ArtifactError(
            f"{path}: key 'backbone_config' must be an object with 'name' and 'image_size', "
            f"got {config!r}"
        )
    config = dict(config)
    name, image_size = config.pop("name"), config.pop("image_size")
    if name != meta["backbone"]:
        raise ArtifactError(
            f"{path}: key 'backbone' says {meta['backbone']!r}, key 'backbone_config.name' "
            f"says {name!r}; the file was edited or mixed up with another artifact's"
        )
    try:
        backbone = build_backbone(name, image_size=image_size, **config)
    except CxrbenchError as err:  # an unknown backbone or option
        raise ArtifactError(f"{path}: key 'backbone_config' builds no backbone: {err}") from err
    if backbone.feature_dims != meta["feature_dims"]:
        raise ArtifactError(
            f"{path}: feature_dims {meta['feature_dims']} differ from the rebuilt "
            f"{name!r} backbone's {backbone.feature_dims}"
        )
    return backbone
