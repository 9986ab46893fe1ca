"""Which result records belong to a suite, and what a suite's table says about them.

A suite is a folder: ``runs/<suite>/`` holds every run of it, and the suite file's grid (methods
× tasks × fractions × transfer seeds) selects the runs that count, on whatever pre-training seeds
the folder holds (a calibration may add seeds to the suite's own: they all count, and captions
and leaderboards say which). A record's own ``suite`` field names the
suite that first wrote it; a run shared into another suite's folder counts there too. Tables
(:mod:`cxrbench.report.tables`), plots and leaderboards (:mod:`cxrbench.report.leaderboard`) all
select their records here, so they agree on what a suite's numbers are.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cxrbench.errors import CxrbenchError
from cxrbench.report.schema import ResultRecord
from cxrbench.report.store import collect_paths
from cxrbench.suite import Suite, load_suite_arg, method_runs_task, task_fractions

if TYPE_CHECKING:
    from cxrbench.report.published import PublishedRow

log = logging.getLogger(__name__)

Grid = frozenset[tuple[str, str, float, int]]  # (method, task, fraction, seed) a suite plans
PAPER_SCALE = {
    "auroc": 100.0, "accuracy": 100.0, "dice": 100.0, "dice_pos": 100.0, "dice_global": 100.0,
    "map": 100.0, "map50": 100.0, "map_mgca": 100.0,
    **{k: 100.0 for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "r_mean")},
}  # fmt: skip
METRIC_NAMES = {
    "auroc": "AUROC", "accuracy": "ACC", "dice": "Dice", "dice_pos": "Dice (positives)",
    "dice_global": "Dice (global)", "map": "mAP", "map50": "mAP@50", "map_mgca": "mAP (MGCA)",
    "i2t_r1": "image→report R@1", "i2t_r5": "image→report R@5", "i2t_r10": "image→report R@10",
    "t2i_r1": "report→image R@1", "t2i_r5": "report→image R@5", "t2i_r10": "report→image R@10",
    "r_mean": "mean R@1/5/10 both ways",
}  # fmt: skip


def suite_grid(suite: Suite) -> Grid:
    return frozenset(
        (m, t, float(f), s) for m in suite.rows for t in suite.tasks if method_runs_task(m, t)
        for f in task_fractions(suite, t) for s in suite.seeds
    )  # fmt: skip


def planned_runs(suite: Suite) -> int:
    """Runs per (method, task, fraction) cell: transfer seeds × pre-training seeds."""
    return len(suite.seeds) * len(suite.pretrain_seeds)


def spread_words(suite: Suite, records: Sequence[ResultRecord] = ()) -> str:
    """What a cell's ± is over, in words: transfer seeds, and the pre-training seeds of the
    records (the suite's when there are none)."""
    pretrain = sorted({r.pretrain_seed for r in records}) or sorted(suite.pretrain_seeds)
    n = len(suite.seeds)
    seeds = ", ".join(str(s) for s in suite.seeds)
    shown = ", ".join(str(s) for s in pretrain)
    if len(pretrain) == 1:
        spread = f"mean ± std over {n} transfer seeds" if n > 1 else "one transfer seed"
        return f"{spread} ({seeds}) on pre-training seed {shown} (± leaves out pre-training noise)"
    runs = n * len(pretrain)
    return (
        f"mean ± std over {runs} runs: transfer seeds ({seeds}) × {len(pretrain)} "
        f"pre-training seeds ({shown})"
    )


def planned_grid(suite: Suite) -> frozenset[tuple[str, str, float, int, int]]:
    """Every run the suite plans: (method, task, fraction, pre-training seed, transfer seed)."""
    return frozenset(
        (m, t, float(f), p, s) for m in suite.rows for t in suite.tasks if method_runs_task(m, t)
        for f in task_fractions(suite, t) for p in suite.pretrain_seeds for s in suite.seeds
    )  # fmt: skip


def resolve_suite(text: str) -> tuple[str, Suite | None]:
    """``--suite`` where a bare name may have no file: the suite's name and the suite (None: a
    name with no file in ``benchmarks/``, whose every record counts)."""
    path = Path(text)
    is_path = path.suffix in (".yaml", ".yml") or "/" in text or path.is_file()
    if not is_path and not (Path("benchmarks") / f"{text}.yaml").is_file():
        return text, None
    if is_path and not path.is_file():
        raise CxrbenchError(f"{path}: suite file not found")
    suite = load_suite_arg(text)
    return suite.name, suite


def folder_records(
    runs: Path, name: str, grid: Grid | None = None, metrics: dict[str, str] | None = None
) -> list[ResultRecord]:
    """The records under ``runs/<name>/`` (those in ``grid``, when given), read through the
    suite's ``metrics`` choice (task → metric) when given; none if no folder."""
    return [record for _, record in folder_record_paths(runs, name, grid, metrics)]


def folder_record_paths(
    runs: Path, name: str, grid: Grid | None = None, metrics: dict[str, str] | None = None
) -> list[tuple[Path, ResultRecord]]:
    """:func:`folder_records` with the path of each record's ``result.json``."""
    folder = Path(runs) / name
    found = collect_paths(folder) if folder.is_dir() else []
    if grid is not None:
        found = [(p, r) for p, r in found if (r.method, r.task, float(r.fraction), r.seed) in grid]
    chosen = metrics or {}
    return [(p, r.with_metric(chosen[r.task]) if r.task in chosen else r) for p, r in found]


def suite_records(suite: Suite, runs: Path) -> list[ResultRecord]:
    """The records of the suite's grid under ``runs/<suite>/``; an error when there are none."""
    return [record for _, record in suite_record_paths(suite, runs)]


def suite_record_paths(suite: Suite, runs: Path) -> list[tuple[Path, ResultRecord]]:
    """:func:`suite_records` with the path of each record's ``result.json``."""
    folder = Path(runs) / suite.name
    if not folder.is_dir():
        raise CxrbenchError(f"{folder}: no runs of suite {suite.name!r} (pass --runs?)")
    found = folder_record_paths(runs, suite.name, suite_grid(suite), suite.metrics)
    if not found:
        raise CxrbenchError(f"{folder}: no result records in the grid of suite {suite.name!r}")
    return found


def _family(task: str, version: int) -> str | None:
    """The protocol family of a task version (``Task.protocols``; a task not registered here has
    the default's); None for a version no family is known for."""
    from cxrbench.tasks import TASKS
    from cxrbench.tasks.base import Task

    return (TASKS.get(task) if task in TASKS else Task).protocols.get(version)


def protocol_of(records: Sequence[ResultRecord]) -> str | None:
    """The protocol family of the records, None when they mix families or a version is unknown."""
    if any(r.probe_mode == "finetune" for r in records):
        return None
    found = {_family(r.task, r.task_version) for r in records}
    return found.pop() if len(found) == 1 else None


def suite_caption(
    suite: Suite, records: Sequence[ResultRecord], reported: bool = False, bold: str | None = None
) -> str:
    """Protocol, encoder, data, preset and seeds of a suite's table, in words. ``bold``: what
    the cells show and which are bold, when not mean ± std with the best mean in bold."""
    versions = ", ".join(
        f"{t} v{v}" for t, v in sorted({(r.task, r.task_version) for r in records})
    )
    modes = sorted({r.probe_mode for r in records})
    encoder = "fine-tuned" if "finetune" in modes else "frozen"
    protocol = protocol_of(records) or "mixed protocol families"
    data = suite.data_root or f"SynthCXR {suite.preset} (synthetic)"
    metrics = sorted({r.metric.split("/")[-1] for r in records} & set(PAPER_SCALE))
    scaled = f"{', '.join(METRIC_NAMES[m] for m in metrics)} × 100; " if metrics else ""
    spread = spread_words(suite, records)
    if bold is not None:  # no ± shown: the runs the means are over, then the intervals' rule
        spread = spread.replace("mean ± std", "mean").replace(
            " (± leaves out pre-training noise)", ""
        )
    text = (
        f"{suite.name}: protocol {protocol} (task versions {versions}), {encoder} encoder "
        f"(probe {', '.join(modes)}); data {data}; preset {suite.preset}; "
        f"{spread}; {scaled}{bold or 'best of our runs in bold'}"
    )
    return text + ("; ‡ quoted from papers, not ranked" if reported else "")


def reported_rows(
    suite: Suite, records: Sequence[ResultRecord], scope: str | None, folder: Path
) -> list[PublishedRow]:
    """Published rows of the records' protocol: ``scope`` None: none; ``"suite"``: those on the
    suite's methods; ``"all"``: every one. Records of mixed protocol families get none."""
    from cxrbench.report.published import load_published, select

    protocol = protocol_of(records)
    if scope is None:
        return []
    if protocol is None:
        log.warning("%s: runs of several protocol families, no published rows", suite.name)
        return []
    return select(load_published(folder), protocol, None if scope == "all" else suite.methods)
