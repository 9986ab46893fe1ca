"""``cxrbench import``: a released checkpoint → an ordinary encoder artifact, strictly.

Every public harness loads released encoders with ``strict=False``, so a mistyped prefix silently
evaluates a random encoder. Here a *format* (one module per checkpoint family, registered like
methods) lists, per backbone, an explicit key map written from the official model definition:

- ``rename(key)``: the backbone key a checkpoint key becomes, or ``None`` when it is not part of
  the image encoder;
- ``ignore``: named rules (``Ignore``) for the known parts that are not the image encoder (text
  tower, projection heads, prototypes, ...): their keys are counted in the report and left out.

The import then refuses, naming the keys, when a key the backbone needs is missing, when a tensor's
shape differs, or when a checkpoint key is neither mapped nor covered by a rule (unless the user
names a prefix with ``--ignore``). Checkpoints are read with ``torch.load(weights_only=True)`` or
safetensors: a Lightning checkpoint whose pickle needs classes is refused with the one-line
conversion to run in the user's own environment.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cxrbench.errors import CxrbenchError, FileError
from cxrbench.models.artifact import export_encoder
from cxrbench.models.backbones import NORMALIZATION, Backbone, build_backbone
from cxrbench.registry import Registry
from cxrbench.utils.io import read_safetensors, sha256_file, torch_load


class CheckpointImportError(CxrbenchError):
    """A checkpoint does not fit the format or backbone it is imported as."""


@dataclass(frozen=True)
class Ignore:
    """A named rule: checkpoint keys under ``prefixes`` are known non-encoder parts."""

    name: str
    prefixes: tuple[str, ...]

    def covers(self, key: str) -> bool:
        return key.startswith(self.prefixes)


@dataclass(frozen=True)
class Layout:
    """How one backbone of a format is stored in its checkpoints."""

    backbone: str  # a registered backbone (models/backbones.py)
    rename: Callable[[str], str | None]
    detect: Callable[[Mapping[str, Tensor]], bool]  # does a state dict hold this layout?
    ignore: tuple[Ignore, ...] = ()
    image_size: int = 224
    options: dict[str, Any] = field(default_factory=dict)  # build_backbone options
    # options read from the checkpoint itself (e.g. the number of blocks), added to ``options``
    infer: Callable[[Mapping[str, Tensor]], dict[str, Any]] | None = None
    # the input statistics the official code trains with (the artifact records them and the
    # backbone applies them: models/backbones.py, set_input_normalization)
    normalization: dict[str, list[float]] = field(default_factory=lambda: dict(NORMALIZATION))
    source: str = ""  # the official definition the map was written from
    # backbone keys whose checkpoint tensor lacks leading singleton axes (CLIP's class_embedding
    # (768,) for class_token (1, 1, 768)): viewed into the backbone's shape, nothing else
    unsqueeze: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ImportFormat:
    name: str
    description: str
    layouts: tuple[Layout, ...]

    def layout(self, state: Mapping[str, Tensor], backbone: str | None, source: Path) -> Layout:
        """The layout named by ``backbone``, or the one the state dict's keys identify."""
        names = [lay.backbone for lay in self.layouts]
        if backbone is not None:
            for lay in self.layouts:
                if lay.backbone == backbone:
                    return lay
            raise CheckpointImportError(
                f"format {self.name!r} has no backbone {backbone!r}; it has {', '.join(names)}"
            )
        found = [lay for lay in self.layouts if lay.detect(state)]
        if len(found) == 1:
            return found[0]
        first = ", ".join(list(state)[:5])
        if not found:
            raise CheckpointImportError(
                f"{source}: no {self.name} layout ({', '.join(names)}) matches its keys (first: "
                f"{first}); is it another format? (`cxrbench import --help` lists them)"
            )
        raise CheckpointImportError(
            f"{source}: its keys fit several {self.name} layouts "
            f"({', '.join(lay.backbone for lay in found)}); choose one with --backbone"
        )


FORMATS: Registry[ImportFormat] = Registry("import format", "cxrbench.importers")
#: ``--normalization`` names: the pipeline's (MGCA's, GLoRIA's ``half``), torchvision's ImageNet
#: ``unit`` (pixels in [0, 1], no normalisation: BioViL's ``ToTensor`` only) and OpenAI CLIP's
NORMALIZATIONS: dict[str, dict[str, list[float]]] = {
    "half": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    "imagenet": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    "unit": {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
    # OpenAI CLIP's preprocessing (its clip.py _transform), for its own released weights
    "clip": {
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
    },
}


def register(fmt: ImportFormat) -> ImportFormat:
    FORMATS.add(fmt.name, fmt)
    return fmt


CONVERT_HINT = (
    "convert it in your own environment, where you trust the file and have the classes it needs: "
    "python -c \"import torch; c = torch.load('{path}', map_location='cpu', weights_only=False); "
    "torch.save(c.get('state_dict', c.get('model', c)), 'state_dict.pt')\" and import "
    "state_dict.pt"
)


def read_checkpoint(path: Path) -> tuple[dict[str, Tensor], str]:
    """The flat state dict in ``path`` and where it was found in the file (``"top level"``,
    ``"state_dict"`` of a Lightning checkpoint, ``"model"``). Never unpickles code."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path, "cannot read the checkpoint"), "top level"
    try:
        obj = torch_load(path, "cannot read the checkpoint")
    except FileError as err:
        if "never unpickles code" in str(err):
            raise CheckpointImportError(f"{err}; {CONVERT_HINT.format(path=path)}") from None
        raise
    where = "top level"
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj, where = obj[key], key
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointImportError(
            f"{path}: expected a state dict (name → tensor), got {type(obj).__name__}"
        )
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointImportError(
            f"{path}: the state dict ({where}) holds entries that are not tensors: "
            f"{', '.join(map(str, bad[:5]))}"
        )
    return dict(obj), where


@dataclass
class Report:
    """What an import found: counts for the closing printout and the artifact's record."""

    format: str
    backbone: str
    source: str
    source_sha256: str
    container: str
    keys_in_checkpoint: int
    keys_expected: int
    keys_loaded: int
    ignored: dict[str, int]
    normalization: dict[str, list[float]]

    def lines(self) -> list[str]:
        out = [
            f"format {self.format}, backbone {self.backbone}: {self.keys_loaded} / "
            f"{self.keys_expected} encoder keys loaded (strict), from {self.keys_in_checkpoint} "
            f"keys in the checkpoint ({self.container})",
        ]
        out += [f"  ignored by rule '{name}': {n} keys" for name, n in self.ignored.items()]
        norm = self.normalization
        out.append(f"  input normalisation: mean {norm['mean']}, std {norm['std']}")
        out.append(f"  checkpoint sha256 {self.source_sha256}")
        return out

    def record(self) -> dict[str, Any]:
        return dict(self.__dict__)


def map_state(
    state: Mapping[str, Tensor], layout: Layout, backbone: Backbone, user_ignore: tuple[str, ...]
) -> tuple[dict[str, Tensor], Counter[str]]:
    """The backbone's state dict from ``state`` by ``layout``; every problem in one error."""
    own = backbone.state_dict()
    mapped: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    ignored: Counter[str] = Counter()
    unexpected: list[str] = []
    for key, value in state.items():
        target = layout.rename(key)
        if target is None:
            rule = next((r.name for r in layout.ignore if r.covers(key)), None)
            if rule is None and key.startswith(user_ignore):
                rule = f"--ignore {next(p for p in user_ignore if key.startswith(p))}"
            if rule is None:
                unexpected.append(key)
            else:
                ignored[rule] += 1
            continue
        if target not in own:
            if key.startswith(user_ignore):
                ignored[f"--ignore {next(p for p in user_ignore if key.startswith(p))}"] += 1
            else:
                unexpected.append(f"{key} (→ {target}, not a key of {layout.backbone})")
            continue
        if target in mapped:
            unexpected.append(f"{key} (→ {target}, already given by {origin[target]})")
            continue
        if target in layout.unsqueeze and value.dim() < own[target].dim():
            lead = own[target].shape[: own[target].dim() - value.dim()]
            if all(n == 1 for n in lead):
                value = value.reshape(*lead, *value.shape)
        mapped[target], origin[target] = value, key
    missing = sorted(set(own) - set(mapped))
    shapes = [
        f"{origin[k]} → {k}: checkpoint {tuple(v.shape)}, {layout.backbone} {tuple(own[k].shape)}"
        for k, v in mapped.items()
        if v.shape != own[k].shape
    ]
    problems = []
    for label, items in (
        ("missing encoder keys", missing),
        ("keys neither mapped nor ignored by a rule (name a prefix with --ignore if they are "
         "not part of the image encoder)", unexpected),
        ("shape mismatches", shapes),
    ):  # fmt: skip
        if items:
            more = f" ... and {len(items) - 12} more" if len(items) > 12 else ""
            problems.append(f"{label} ({len(items)}): {', '.join(items[:12])}{more}")
    if problems:
        raise CheckpointImportError("; ".join(problems))
    return {k: v.to(own[k].dtype) for k, v in mapped.items()}, ignored


def import_checkpoint(
    fmt: str,
    checkpoint: Path,
    out: Path,
    *,
    backbone: str | None = None,
    ignore: tuple[str, ...] = (),
    image_size: int | None = None,
    normalization: str | None = None,
    prefix: str | None = None,
) -> Report:
    """Import ``checkpoint`` of format ``fmt`` into the encoder artifact folder ``out``.
    ``normalization``: a name of :data:`NORMALIZATIONS` instead of the format's statistics.
    ``prefix``: the encoder's keys are those under ``prefix`` (stripped), as the format lays
    them out; every other key is counted as outside it (e.g. a BenchX re-trained checkpoint,
    whose image encoder lives under ``cnn.model.``, imported as ``torchvision``)."""
    checkpoint = Path(checkpoint)
    spec = FORMATS.get(fmt)
    if normalization is not None and normalization not in NORMALIZATIONS:
        known = ", ".join(NORMALIZATIONS)
        raise CheckpointImportError(f"unknown normalisation {normalization!r}; one of {known}")
    state, container = read_checkpoint(checkpoint)
    outside = 0
    if prefix:
        inside = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not inside:
            first = ", ".join(list(state)[:5])
            raise CheckpointImportError(
                f"{checkpoint}: no key starts with {prefix!r} (first: {first})"
            )
        outside, keys_in_file, state = len(state) - len(inside), len(state), inside
    else:
        keys_in_file = len(state)
    layout = spec.layout(state, backbone, checkpoint)
    module = build_backbone(
        layout.backbone,
        image_size=image_size or layout.image_size,
        **layout.options,
        **(layout.infer(state) if layout.infer else {}),
    )
    try:
        weights, ignored = map_state(state, layout, module, tuple(ignore))
    except CheckpointImportError as err:
        raise CheckpointImportError(f"{checkpoint} as {fmt} ({layout.backbone}): {err}") from None
    with torch.no_grad():
        module.load_state_dict(weights, strict=True)
    digest = sha256_file(checkpoint)
    norm = NORMALIZATIONS[normalization] if normalization else layout.normalization
    report = Report(
        format=fmt, backbone=layout.backbone, source=str(checkpoint), source_sha256=digest,
        container=container, keys_in_checkpoint=keys_in_file,
        keys_expected=len(module.state_dict()), keys_loaded=len(weights),
        ignored={**({f"outside --prefix {prefix}": outside} if outside else {}), **ignored},
        normalization=dict(norm),
    )  # fmt: skip
    export_encoder(
        module, Path(out), method=f"import:{fmt}", config_hash=digest[:16],
        extra={"imported": report.record(), "layout_source": layout.source}, normalization=norm,
    )  # fmt: skip
    return report
