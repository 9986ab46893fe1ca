"""Configuration: OmegaConf YAML validated against dataclass schemas.

A run config is the merge of layers (trainer preset, method, task, suite overrides, ``--set
key=value``), each layer a YAML file or a dotlist. Layers are merged one at a time onto the
structured schema, so an unknown key or a wrong type is reported as a :class:`ConfigError` naming
the layer's file and the dotted key. No Hydra, no ``_target_`` import paths: objects are built by
registry name from the validated values.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cxrbench.errors import ConfigError

T = TypeVar("T")

CONFIG_KINDS = ("method", "task", "trainer")


@dataclass(frozen=True)
class Layer:
    """One source of config values: ``source`` names it in errors (a file path or ``--set``)."""

    source: str
    values: DictConfig


def load_yaml(path: str | Path) -> Layer:
    """Read a YAML mapping; a missing file or bad syntax is a :class:`ConfigError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, None, "file not found")
    try:
        values = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and friends: report where, not a traceback
        raise ConfigError(path, None, f"not valid YAML ({type(exc).__name__}: {exc})") from None
    if isinstance(values, ListConfig):
        raise ConfigError(path, None, "expected a mapping at the top level, got a list")
    return Layer(str(path), values)


def parse_overrides(items: Sequence[str], source: str = "--set") -> Layer:
    """Parse ``key=value`` strings (values in YAML syntax: ``lr=1e-4``, ``tags=[a,b]``)."""
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(source, item, "expected key=value")
    try:
        values = OmegaConf.from_dotlist(list(items))
    except OmegaConfBaseException as exc:
        raise ConfigError(source, None, str(exc).splitlines()[0]) from None
    return Layer(source, values)


def packaged_config(kind: str, name: str) -> Path:
    """Path of the config shipped inside the package: ``configs/<kind>/<name>.yaml``."""
    if kind not in CONFIG_KINDS:
        raise ValueError(f"config kind must be one of {CONFIG_KINDS}, got {kind!r}")
    path = Path(str(resources.files("cxrbench") / "configs" / kind / f"{name}.yaml"))
    if not path.is_file():
        raise ConfigError(path, None, f"no {kind} config named {name!r}")
    return path


def packaged_names(kind: str) -> list[str]:
    """Names of the configs of ``kind`` shipped inside the package (``trainer``: the presets)."""
    if kind not in CONFIG_KINDS:
        raise ValueError(f"config kind must be one of {CONFIG_KINDS}, got {kind!r}")
    folder = resources.files("cxrbench") / "configs" / kind
    order = {"tiny": 0, "small": 1}  # presets from small to large, then by name
    names = [p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")]
    return sorted(names, key=lambda n: (order.get(n, 2), n))


def build(schema: type[T], layers: Iterable[Layer]) -> T:
    """Merge ``layers`` in order onto ``schema`` and return a validated instance of it.

    Each layer is checked as it is merged, so the error names the layer that brought the bad key.
    A layer's ``???`` makes a key required again (OmegaConf's merge would keep the value below):
    a later layer must set it, and the error names the layer that required it.
    """
    merged: DictConfig = OmegaConf.structured(schema)
    required_by: dict[str, str] = {}
    for layer in layers:
        try:
            merged = OmegaConf.merge(merged, layer.values)  # type: ignore[assignment]
        except OmegaConfBaseException as exc:
            raise _as_config_error(exc, layer, merged) from None
        for key in _required_keys(layer.values):
            OmegaConf.update(merged, key, "???", merge=False)
            required_by[key] = layer.source
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        raise ConfigError(
            required_by.get(missing[0]),
            missing[0],
            "required value is missing (set it in a config or with --set; "
            "`cxrbench bench`: --pretrain-set for pre-training)",
        )
    obj = OmegaConf.to_object(merged)
    assert isinstance(obj, schema)
    return obj


#: ranges of the numeric settings, by key name wherever it appears in a schema: (low, high,
#: whether low itself is allowed, what the error says is expected). ``None`` values are not checked.
RANGES: dict[str, tuple[float, float, bool, str]] = {
    "seed": (0, 2**32 - 1, True, "an integer in [0, 2^32)"),
    "batch_size": (1, math.inf, True, "an integer >= 1"),
    "feature_batch_size": (1, math.inf, True, "an integer >= 1"),
    "max_epochs": (1, math.inf, True, "an integer >= 1"),
    "resize": (1, math.inf, True, "an integer >= 1"),
    "crop": (1, math.inf, True, "an integer >= 1"),
    "devices": (1, math.inf, True, "an integer >= 1"),
    "num_nodes": (1, math.inf, True, "an integer >= 1"),
    "log_every": (1, math.inf, True, "an integer >= 1"),
    "val_every": (1, math.inf, True, "an integer >= 1"),
    "val_limit": (0, math.inf, True, "an integer >= 0 (0: the whole val split)"),
    "limit_pairs": (1, math.inf, True, "an integer >= 1 (or null for all)"),
    "workers": (0, math.inf, True, "an integer >= 0"),
    "checkpoint_every": (0, math.inf, True, "an integer >= 0 (0: off)"),
    "patience": (0, math.inf, True, "an integer >= 0"),
    "min_steps_per_epoch": (0, math.inf, True, "an integer >= 0 (0: off)"),
    "max_steps_per_epoch": (0, math.inf, True, "an integer >= 0 (0: off)"),
    "map_cache_gib": (0, math.inf, True, "a number of GiB >= 0 (0: off)"),
    "eval_batch_size": (0, math.inf, True, "an integer >= 0 (0: the training batch size)"),
    "ema": (0, math.nextafter(1.0, 0.0), True, "a decay in [0, 1) (0: off)"),
    "lr": (0, math.inf, False, "a number > 0"),
    "weight_decay": (0, math.inf, True, "a number >= 0"),
    "warmup": (0, 1, True, "a fraction in [0, 1]"),
    "min_lr_ratio": (0, 1, True, "a fraction in [0, 1]"),
    "grad_clip": (0, math.inf, False, "a number > 0 (or null for none)"),
}


def check_ranges(obj: Any, layers: Iterable[Layer]) -> None:
    """Every numeric setting of ``obj`` (a built schema) within :data:`RANGES`; the error names
    the layer (file or ``--set``) that gave the value and the dotted key. ``max_steps`` is -1
    (off) or >= 1. ``params`` (a method's or system's own settings, validated by its own
    ``Config``) and ``loss_weights`` are not checked here."""
    layers = list(layers)
    for key, value in _leaves(to_plain(obj)):
        if key.split(".", 1)[0] in ("params", "loss_weights"):
            continue
        name = key.rsplit(".", 1)[-1]
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        bad = None
        if name == "max_steps" and not (value == -1 or value >= 1):
            bad = "-1 (no limit) or an integer >= 1"
        elif name in RANGES:
            low, high, closed, expected = RANGES[name]
            if not (low <= value <= high) or (value == low and not closed):
                bad = expected
        if bad is not None:
            source = next((x.source for x in reversed(layers) if _has_key(x.values, key)), None)
            raise ConfigError(source, key, f"expected {bad}, got {value!r}")


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}{k}.")
    else:
        yield prefix.rstrip("."), node


def _has_key(values: DictConfig, key: str) -> bool:
    try:
        return OmegaConf.select(values, key, default=_ABSENT, throw_on_missing=False) is not _ABSENT
    except OmegaConfBaseException:
        return False


_ABSENT = object()


def _required_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Dotted keys (relative to ``node``, which may be a sub-node of a file) whose value is ???."""
    keys = []
    for key in node:
        path = f"{prefix}{key!s}"
        if OmegaConf.is_missing(node, key):
            keys.append(path)
        elif isinstance(child := node[key], DictConfig):
            keys.extend(_required_keys(child, f"{path}."))
    return keys


def _as_config_error(
    exc: OmegaConfBaseException, layer: Layer, merged: DictConfig | None = None
) -> ConfigError:
    """The error of merging ``layer``: its file, the dotted key, the value it gave and, for an
    unknown key, the closest known keys of ``merged`` (did you mean)."""
    key = getattr(exc, "full_key", None) or None
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    lowered = text.lower()
    if "not in struct" in lowered or ("key '" in lowered and "not" in lowered):
        text = "unknown key"
        if key is not None:
            value = OmegaConf.select(layer.values, key, default=None, throw_on_missing=False)
            if value is not None and not isinstance(value, DictConfig | ListConfig):
                text += f" (value {value!r})"
            if merged is not None:
                text += _did_you_mean(key, merged)
    return ConfigError(layer.source, key, text)


def _did_you_mean(key: str, merged: DictConfig) -> str:
    """``; did you mean 'a' or 'b'?`` from the keys of the schema, or nothing: keys close to the
    whole dotted key, then keys whose last part is close to its last part."""
    leaves, sections = _dotted_keys(merged)
    known = leaves if "." in key else leaves + sections
    near = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    by_leaf: dict[str, list[str]] = {}
    for k in leaves:
        by_leaf.setdefault(k.rsplit(".", 1)[-1], []).append(k)
    for leaf in difflib.get_close_matches(key.rsplit(".", 1)[-1], list(by_leaf), n=3, cutoff=0.75):
        near += [k for k in by_leaf[leaf] if k not in near]
    if not near:
        return ""
    return "; did you mean " + " or ".join(f"'{k}'" for k in near[:3]) + "?"


def _dotted_keys(node: DictConfig, prefix: str = "") -> tuple[list[str], list[str]]:
    """The dotted keys of ``node``: (leaves, sections)."""
    leaves, sections = [], []
    for name in node:
        path = f"{prefix}{name!s}"
        child = node._get_node(name)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            below, inner = _dotted_keys(child, f"{path}.")
            leaves += below
            sections += [path, *inner]
        else:
            leaves.append(path)
    return leaves, sections


def to_plain(obj: Any) -> Any:
    """A dataclass / DictConfig as plain JSON-able containers."""
    if isinstance(obj, DictConfig | ListConfig):
        return OmegaConf.to_container(obj, resolve=True)
    return OmegaConf.to_container(OmegaConf.structured(obj), resolve=True)


def without_keys(plain: dict[str, Any], dotted: Iterable[str]) -> dict[str, Any]:
    """``plain`` without the given dotted keys (``"data"`` drops a section, ``"data.workers"`` a
    key): what does not change a result stays out of its config hash."""
    for key in dotted:
        node: Any = plain
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return plain


def config_hash(obj: Any) -> str:
    """sha256 (first 16 hex digits) of the canonical JSON of a config: key order does not matter."""
    text = json.dumps(to_plain(obj), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
