"""Contract 4: the ResultRecord, one per transfer run (``result.json``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrbench.errors import CxrbenchError

#: 2: ``predictions_sha256`` (records of version 1 have none and still load)
SCHEMA_VERSION = 2


@dataclass(frozen=True)
class ResultRecord:
    suite: str
    method: str
    task: str
    task_version: int
    fraction: float
    seed: int
    pretrain_seed: int
    metric: str  # the primary metric key, e.g. "test/auroc"
    higher_is_better: bool
    metrics: dict[str, float]  # every test metric and the val metric used for selection
    config_hash: str
    code_version: str
    encoder_sha256: str
    split_hash: str
    data_fingerprint: str
    probe_mode: str  # tasks.base.probe_mode: finetune, augment, cached (frozen features), frozen
    wall_seconds: float
    device: str
    created: str
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    # sha256 of the run's predictions.npz (cxrbench.predictions); "" when it wrote none
    predictions_sha256: str = ""

    @property
    def value(self) -> float:
        return self.metrics[self.metric]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_metric(self, metric: str) -> ResultRecord:
        """This record read through another of its metrics (a suite's ``metrics:`` choice):
        ``metric`` (``auroc`` or ``test/auroc``) becomes the primary one; a loss is lower-is-
        better, any other metric higher. An error names the run when it lacks the metric."""
        key = metric if "/" in metric else f"test/{metric}"
        if key == self.metric:
            return self
        if key not in self.metrics:
            raise CxrbenchError(
                f"{self.method} / {self.task} / {self.fraction:g} / seed {self.seed}: its record "
                f"has no metric {key!r} (it has {', '.join(sorted(self.metrics))})"
            )
        lower = key.rsplit("/", 1)[-1].endswith("loss")
        return dataclasses.replace(self, metric=key, higher_is_better=not lower)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path = "record") -> ResultRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - set(data))
        unknown = sorted(set(data) - names)
        if missing or unknown:
            what = f"missing key {missing[0]!r}" if missing else f"unknown key {unknown[0]!r}"
            raise CxrbenchError(f"{source}: not a cxrbench result record ({what})")
        return cls(**data)
