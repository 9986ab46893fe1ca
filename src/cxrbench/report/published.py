"""Published numbers (``results/published/*.yaml``): rows quoted from papers, with their citation.

A file holds the rows of one paper table. ``defaults`` gives the header fields its rows share and
each row may override them; after merging, every row names its ``method`` (as printed), ``paper``,
``venue``, ``table`` id, ``protocol`` (``mgca``: frozen encoder as in MGCA's code; ``finetune``:
end-to-end fine-tuning) and ``source`` tag (as in ``reference/methods.md``: ``[G2D]``, ``[CODE]``,
...). Optional: ``key``, the registered method the row reports on (used to draw it beside our run
of that method), ``backbone``, ``origin`` (the paper a reprinted number first appeared in) and a
``note``. Each score names a task key, a label fraction in (0, 1], a metric and the value **as
printed** (×100 for AUROC, accuracy, Dice and mAP); ``value: null`` keeps a cell the paper prints
as "–" (say why in the score's ``note``)::

    defaults: {paper: "Liu et al., G2D", venue: NeurIPS 2024, table: Table 4, protocol: mgca,
               source: "[G2D]", backbone: ResNet-50}
    rows:
      - method: ConVIRT
        key: convirt
        scores:
          - {task: chexpert_cls, fraction: 0.01, metric: auroc, value: 85.9}

The metric is the task's primary metric or one of its recorded variants (``map_mgca``: MGCA's mAP
over images with a ground-truth box, which is what the papers print for detection). Unknown keys,
wrong types, unknown tasks, methods, metrics or protocols are :class:`ConfigError` naming the file
and the key (``rows[2].scores[0].task``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cxrbench.config import Layer, build, load_yaml
from cxrbench.errors import ConfigError

PROTOCOLS = ("mgca", "finetune")
METRIC_VARIANTS = {"map": ("map_mgca", "map50")}  # recorded besides the primary metric
HEADER = ("paper", "venue", "table", "protocol", "source")  # required in every row
SOURCE_TAG = re.compile(r"^\[[A-Za-z0-9 .-]+\]$")


@dataclass(frozen=True)
class Score:
    task: str = ""
    fraction: float = 0.0
    metric: str = ""
    value: float | None = None  # as printed; None: the paper prints "–"
    note: str = ""


@dataclass(frozen=True)
class PublishedRow:
    method: str = ""
    key: str = ""  # the registered method this row reports on ("" for none of ours)
    paper: str = ""
    venue: str = ""
    table: str = ""
    protocol: str = ""
    source: str = ""
    backbone: str = ""
    origin: str = ""
    note: str = ""
    scores: tuple[Score, ...] = ()
    file: str = ""  # the YAML file it was read from

    def score(self, task: str, fraction: float) -> Score | None:
        return next((s for s in self.scores if (s.task, s.fraction) == (task, fraction)), None)

    @property
    def citation(self) -> str:
        return f"{self.paper}, {self.venue}, {self.table} {self.source}"


@dataclass
class _Score:
    task: str = ""
    fraction: float = 0.0
    metric: str = ""
    value: float | None = None
    note: str = ""


@dataclass
class _Header:
    paper: str = ""
    venue: str = ""
    table: str = ""
    protocol: str = ""
    source: str = ""
    backbone: str = ""


@dataclass
class _File:
    defaults: _Header = field(default_factory=_Header)
    rows: list[Any] = field(default_factory=list)


@dataclass
class _Row:
    method: str = ""
    key: str = ""
    paper: str = ""
    venue: str = ""
    table: str = ""
    protocol: str = ""
    source: str = ""
    backbone: str = ""
    origin: str = ""
    note: str = ""
    scores: list[Any] = field(default_factory=list)


def load_published(folder: str | Path) -> list[PublishedRow]:
    """Every row of every ``*.yaml`` in ``folder`` (files by name, rows in file order)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(folder, None, "published numbers folder not found")
    return [row for path in sorted(folder.glob("*.yaml")) for row in load_published_file(path)]


def load_published_file(path: str | Path) -> list[PublishedRow]:
    layer = load_yaml(path)
    spec = build(_File, [layer])
    defaults = {f.name: getattr(spec.defaults, f.name) for f in fields(_Header)}
    if not spec.rows:
        raise ConfigError(layer.source, "rows", "needs at least one row")
    return [_row(layer.source, i, raw, defaults) for i, raw in enumerate(spec.rows)]


def _nested(source: str, where: str, schema: type, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(source, where, f"expected a mapping, got {type(raw).__name__}")
    try:
        return build(schema, [Layer(source, _as_config(raw))])
    except ConfigError as err:
        raise ConfigError(source, f"{where}.{err.key}" if err.key else where, err.message) from None


def _as_config(raw: dict) -> DictConfig:
    values = OmegaConf.create(raw)
    assert isinstance(values, DictConfig)
    return values


def _row(source: str, i: int, raw: Any, defaults: dict[str, str]) -> PublishedRow:
    where = f"rows[{i}]"
    spec = _nested(source, where, _Row, raw)
    for name, value in defaults.items():
        if not getattr(spec, name):
            setattr(spec, name, value)
    for name in ("method", *HEADER):
        if not getattr(spec, name):
            raise ConfigError(source, f"{where}.{name}", "required (in the row or in defaults)")
    _check_row(source, where, spec)
    scores = tuple(_score(source, f"{where}.scores[{j}]", s) for j, s in enumerate(spec.scores))
    if not scores:
        raise ConfigError(source, f"{where}.scores", "needs at least one score")
    seen: set[tuple[str, float]] = set()
    for j, score in enumerate(scores):
        if (score.task, score.fraction) in seen:
            raise ConfigError(
                source,
                f"{where}.scores[{j}]",
                f"{score.task} at fraction {score.fraction:g} appears twice in this row",
            )
        seen.add((score.task, score.fraction))
    values = {f.name: getattr(spec, f.name) for f in fields(_Row) if f.name != "scores"}
    return PublishedRow(**values, scores=scores, file=source)


def _check_row(source: str, where: str, spec: _Row) -> None:
    from cxrbench.methods import METHODS

    if spec.protocol not in PROTOCOLS:
        raise ConfigError(
            source,
            f"{where}.protocol",
            f"unknown protocol {spec.protocol!r}; one of: {', '.join(PROTOCOLS)}",
        )
    if not SOURCE_TAG.match(spec.source):
        raise ConfigError(source, f"{where}.source", f"a tag like [G2D], got {spec.source!r}")
    if spec.key and spec.key not in METHODS.names():
        raise ConfigError(
            source,
            f"{where}.key",
            f"unknown method {spec.key!r}; one of: {', '.join(METHODS.names())} (or leave it out)",
        )


def _score(source: str, where: str, raw: Any) -> Score:
    from cxrbench.tasks import TASKS

    spec = _nested(source, where, _Score, raw)
    if spec.task not in TASKS.names():
        raise ConfigError(
            source,
            f"{where}.task",
            f"unknown task {spec.task!r}; one of: {', '.join(TASKS.names())}",
        )
    primary = TASKS.get(spec.task).metric
    allowed = (primary, *METRIC_VARIANTS.get(primary, ()))
    if spec.metric not in allowed:
        raise ConfigError(
            source,
            f"{where}.metric",
            f"{spec.task} reports {' or '.join(allowed)}, got {spec.metric!r}",
        )
    if not 0 < spec.fraction <= 1:
        raise ConfigError(source, f"{where}.fraction", f"in (0, 1], got {spec.fraction:g}")
    if spec.value is not None and not (math.isfinite(spec.value) and 0 <= spec.value <= 100):
        raise ConfigError(source, f"{where}.value", f"as printed, in [0, 100], got {spec.value}")
    return Score(spec.task, spec.fraction, spec.metric, spec.value, spec.note)


def select(
    rows: list[PublishedRow], protocol: str, methods: list[str] | None = None
) -> list[PublishedRow]:
    """Rows of ``protocol``; with ``methods``, only those reporting on one of them."""
    chosen = [r for r in rows if r.protocol == protocol]
    return chosen if methods is None else [r for r in chosen if r.key in methods]
