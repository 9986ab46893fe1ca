"""Mean ± std over seeds per (method, task, fraction), marking cells with fewer seeds than planned.

std is the sample standard deviation (ddof = 1; 0 for a single seed). Records of one cell must
share the task version and config hash: mixing them would average incomparable numbers, so it is
an error naming both.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from cxrbench.errors import CxrbenchError
from cxrbench.report.schema import ResultRecord


@dataclass(frozen=True)
class Cell:
    method: str
    task: str
    fraction: float
    metric: str
    higher_is_better: bool
    mean: float
    std: float
    n: int
    planned: int | None
    values: tuple[float, ...]

    @property
    def complete(self) -> bool:
        return self.planned is None or self.n >= self.planned


#: what the records of one (method, task, fraction) cell must share to be averaged together
SHARED = ("task_version", "config_hash", "metric", "higher_is_better")


def require_shared(group: Sequence[ResultRecord], where: str) -> None:
    """An error naming the first of :data:`SHARED` on which the records of one cell differ."""
    first = group[0]
    for other in group[1:]:
        for key in SHARED:
            if getattr(other, key) != getattr(first, key):
                raise CxrbenchError(
                    f"{where}: records with {key} {getattr(first, key)} and "
                    f"{getattr(other, key)} cannot be averaged"
                )


def aggregate(records: Iterable[ResultRecord], planned_seeds: int | None = None) -> list[Cell]:
    groups: dict[tuple[str, str, float], list[ResultRecord]] = defaultdict(list)
    for record in records:
        groups[(record.method, record.task, record.fraction)].append(record)
    cells = []
    for (method, task, fraction), group in sorted(groups.items()):
        first = group[0]
        require_shared(group, f"{method} / {task} / {fraction:g}")
        values = tuple(r.value for r in sorted(group, key=lambda r: (r.pretrain_seed, r.seed)))
        std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        cells.append(
            Cell(
                method,
                task,
                fraction,
                first.metric,
                first.higher_is_better,
                float(np.mean(values)),
                std,
                len(values),
                planned_seeds,
                values,
            )
        )
    return cells
