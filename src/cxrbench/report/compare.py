"""Paired comparisons of methods: bootstrap confidence intervals and Holm-adjusted p-values.

``cxrbench compare --suite S [--method A --method B] [--metric M]``: for each (task, fraction)
cell of the suite and each pair of methods (A, B), the difference Δ = A − B with its paired
bootstrap confidence interval and p-value, read from the runs' ``predictions.npz``
(:mod:`cxrbench.predictions`). What it computes, and why:

* **Statistic.** A method's value in a cell is the mean over its runs of the metric, exactly as
  the tables print it; its runs are its (pre-training seed, transfer seed) pairs. Δ is the
  difference of the two means, so the point estimate is the difference of the table's numbers.
  (Not the metric of the seed-averaged per-image scores: for AUROC and mAP that is another
  number than the tables', and it would hide how much the seeds disagree.)
* **Resampling.** One bootstrap resample draws the test images with replacement, the same draw
  for every run of both methods (the comparison is paired on images), and, by default
  (``seeds="resample"``), draws each method's runs with replacement as well, independently per
  method (runs of two methods are not paired: seed 42 of one encoder has nothing to do with seed
  42 of another). Each drawn run's metric is computed on the resampled images and averaged over
  the drawn runs, then differenced. The interval thus covers the test-set sample and the seeds;
  resampling both is conservative (seed-by-image interaction counted in both). With
  ``seeds="fixed"`` the runs are kept as they are and only images are resampled.
* **Stratification.** For metrics undefined without positives (AUROC, mAP), images are drawn
  within strata: their label pattern (binary: positive/negative; multiclass: the class;
  multi-label: the combination) for classification, GT-positive or not for detection. Every
  resample keeps the test set's positives of every class, so no resample is undefined. Dice and
  accuracy resample all images together. A resample on which a metric is still undefined is
  dropped and counted (``skipped``), never averaged as NaN. Retrieval resamples images too
  (its ranks against the whole gallery stay fixed): image→report recalls over the drawn images,
  report→image recalls with each report (one query per study) weighing the share of its study's
  images drawn (:func:`cxrbench.predictions._retrieval_resampled`), ``r_mean`` their mean.
* **Interval.** The percentile interval of the resampled Δ (level 0.95 by default).
* **p-value.** Two-sided, from the same resamples: p = min(1, 2·(1 + min(#Δ* ≤ 0, #Δ* ≥ 0)) /
  (B + 1)), the smallest level at which the percentile interval would exclude 0 (with the usual
  +1 so that p > 0). Identical predictions give p = 1; a method better on every resample gives
  the bound 2/(B + 1). p-values are Holm-adjusted over every row of one comparison (all cells
  and pairs); a row is significant when its adjusted p is below 1 − level.
* **Determinism.** Each cell's image draws come from ``SeedSequence(bootstrap_seed, (task,
  fraction))`` and each method's run draws from one keyed by the method as well, so the output
  depends only on the runs, the seed and the resample count (not on which other cells or methods
  are compared).

Refused (an error naming the files): runs of a cell on different split hashes, task versions or
metrics; predictions on other test images or labels; a record without predictions (older runs:
re-run them); a predictions file whose sha256 is not the record's.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cxrbench.errors import CxrbenchError
from cxrbench.metrics.resample import CHUNK_ENTRIES, counts_of, draw
from cxrbench.predictions import Predictions, read_predictions
from cxrbench.report.schema import ResultRecord
from cxrbench.report.store import collect_paths
from cxrbench.report.suites import METRIC_NAMES, PAPER_SCALE, resolve_suite, suite_grid
from cxrbench.report.tables import fraction_label
from cxrbench.runs import PREDICTIONS_FILE
from cxrbench.suite import Suite

DEFAULT_RESAMPLES = 2000
DEFAULT_LEVEL = 0.95
SEED_MODES = ("resample", "fixed")
FORMATS = ("md", "csv", "json")


@dataclass(frozen=True)
class Run:
    path: Path  # its result.json
    record: ResultRecord


@dataclass(frozen=True)
class Row:
    """One (pair, task, fraction): metric values in the metric's own units (not × 100)."""

    method_a: str
    method_b: str
    task: str
    fraction: float
    metric: str  # short key: auroc, dice, map, ...
    higher_is_better: bool
    runs_a: int
    runs_b: int
    mean_a: float
    mean_b: float
    delta: float  # mean_a − mean_b
    low: float
    high: float
    p: float
    p_holm: float
    resamples: int  # used (after skipped ones)
    skipped: int  # resamples on which the metric was undefined
    images: int
    stratified: bool

    def significant(self, level: float) -> bool:
        return self.p_holm < 1.0 - level


@dataclass(frozen=True)
class Comparison:
    suite: str
    rows: tuple[Row, ...]
    resamples: int
    bootstrap_seed: int
    level: float
    seeds: str
    notes: tuple[str, ...] = ()


# ----------------------------------------------------------------------------------- statistics


def percentile_interval(deltas: np.ndarray, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    d = np.asarray(deltas, dtype=np.float64)
    low, high = np.quantile(d, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def bootstrap_p(deltas: np.ndarray) -> float:
    """Two-sided bootstrap p-value of Δ = 0 (module docstring): in [2/(B + 1), 1]."""
    d = np.asarray(deltas, dtype=np.float64)
    below, above = int(np.count_nonzero(d <= 0)), int(np.count_nonzero(d >= 0))
    return min(1.0, 2.0 * (1 + min(below, above)) / (len(d) + 1))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (family-wise error) of ``p_values``, in their order."""
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(np.argsort(p, kind="stable")):
        running = max(running, min(1.0, (m - rank) * float(p[i])))
        adjusted[i] = running
    return adjusted.tolist()


def resolution_note(resamples: int, rows: int, level: float) -> str | None:
    """A warning when no row can be significant: the smallest bootstrap p-value is 2/(B + 1) and
    Holm multiplies the smallest by the number of rows, so with too few resamples for the rows
    compared every adjusted p stays at or above 1 − level whatever the data."""
    alpha = 1.0 - level
    if rows * 2.0 / (resamples + 1) < alpha:
        return None
    need = math.ceil(2.0 * rows / alpha)
    return (
        f"with {resamples:,} resamples the smallest p-value is 2/(B + 1) = "
        f"{2.0 / (resamples + 1):.2g}, and Holm over {rows} rows makes it at least "
        f"{min(1.0, rows * 2.0 / (resamples + 1)):.2g}: no row can be significant at "
        f"{alpha:g}; compare fewer methods or use --resamples {need:,} or more"
    )


def seed_sequence(seed: int, *keys: str | float) -> np.random.SeedSequence:
    """A generator's seed keyed by names (task, fraction, method): stable across runs."""
    words = [
        zlib.crc32(k.encode()) if isinstance(k, str) else round(float(k) * 1_000_000) for k in keys
    ]
    return np.random.SeedSequence(entropy=seed, spawn_key=tuple(words))


Evaluator = Callable[[np.ndarray], np.ndarray]


def resample_values(
    evaluators: Sequence[Evaluator],
    n: int,
    resamples: int,
    rng: np.random.Generator,
    strata: np.ndarray | None = None,
) -> np.ndarray:
    """``(resamples, R)``: each evaluator (one run's metric on counts, ``metrics/resample.py``)
    on the same image resamples, drawn in chunks from ``rng``."""
    out = np.empty((resamples, len(evaluators)))
    step = max(1, CHUNK_ENTRIES // max(1, n))
    for start in range(0, resamples, step):
        rows = min(step, resamples - start)
        counts = counts_of(draw(rng, n, rows, strata), n)
        for r, evaluate in enumerate(evaluators):
            out[start : start + rows, r] = evaluate(counts)
    return out


def method_stat(values: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """A method's statistic per resample (B,): the mean over its runs of ``values`` (B, R),
    with the runs drawn with replacement per resample when ``rng`` is given."""
    if rng is None or values.shape[1] == 1:
        return values.mean(axis=1)
    pick = rng.integers(0, values.shape[1], size=values.shape)
    return np.take_along_axis(values, pick, axis=1).mean(axis=1)


# ----------------------------------------------------------------------------------- the runs


def suite_runs(suite_arg: str, runs: Path) -> tuple[str, list[Run], list[str]]:
    """The suite's name, its runs (records of its grid under ``runs/<suite>/``, with their
    paths) and its methods in order (the suite file's, then others found)."""
    name, suite = resolve_suite(suite_arg)
    found, methods = runs_of(name, suite, runs)
    return name, found, methods


def runs_of(name: str, suite: Suite | None, runs: Path) -> tuple[list[Run], list[str]]:
    """The runs of ``suite``'s grid under ``runs/<name>/`` (every run there when ``suite`` is
    None), their records read through the suite's ``metrics:`` choice as the tables read them,
    and their methods, the suite's order first."""
    folder = Path(runs) / name
    if not folder.is_dir():
        raise CxrbenchError(f"{folder}: no runs of suite {name!r} (pass --runs?)")
    grid = suite_grid(suite) if suite is not None else None
    chosen = suite.metrics if suite is not None else {}
    found = [
        Run(path, record.with_metric(chosen[record.task]) if record.task in chosen else record)
        for path, record in collect_paths(folder)
        if grid is None or (record.method, record.task, float(record.fraction), record.seed) in grid
    ]
    if not found:
        raise CxrbenchError(f"{folder}: no result records in the grid of suite {name!r}")
    order = [*(suite.rows if suite else []), *sorted({r.record.method for r in found})]
    methods = [m for m in dict.fromkeys(order) if any(r.record.method == m for r in found)]
    return found, methods


def _differ(runs: Sequence[Run], key: str, why: str) -> None:
    first = runs[0]
    for other in runs[1:]:
        a, b = getattr(first.record, key), getattr(other.record, key)
        if a != b:
            raise CxrbenchError(
                f"{other.path}: {key} {b}, but {first.path} has {a}: {why}; the runs compared "
                "must share it"
            )


def check_cell(by_method: dict[str, list[Run]]) -> None:
    """The runs of one cell are comparable: one split, task version and metric; one config per
    method. Errors name the two files."""
    every = [r for runs in by_method.values() for r in runs]
    _differ(every, "split_hash", "they are not on the same train/val/test split")
    _differ(every, "task_version", "the task's protocol changed between them")
    _differ(every, "metric", "they record different primary metrics")
    for runs in by_method.values():
        _differ(runs, "config_hash", "one method's runs were made with different protocols")


def load_predictions(run: Run) -> Predictions:
    if not run.record.predictions_sha256:
        raise CxrbenchError(
            f"{run.path}: the run kept no test predictions (made before cxrbench wrote "
            f"{PREDICTIONS_FILE}); re-run it (cxrbench bench --force) to compare it"
        )
    return read_predictions(run.path.parent / PREDICTIONS_FILE, run.record.predictions_sha256)


def aligned(preds: Sequence[Predictions]) -> list[Predictions]:
    """``preds`` with every file's images in the first one's order; an error naming the file
    whose test images or labels differ."""
    first = preds[0]
    index = {str(i): k for k, i in enumerate(first.ids)}
    out = [first]
    for p in preds[1:]:
        if p.kind != first.kind:
            raise CxrbenchError(f"{p.path}: {p.kind} predictions, {first.path} holds {first.kind}")
        ids = [str(i) for i in p.ids]
        if ids != [str(i) for i in first.ids]:
            if len(ids) != len(index) or set(ids) != set(index):
                raise CxrbenchError(
                    f"{p.path}: its {len(ids)} test images are not the {len(index)} of "
                    f"{first.path}; the runs compared must be on the same test images"
                )
            p = p.select(np.argsort([index[i] for i in ids], kind="stable"))
        if p.truth_digest() != first.truth_digest():
            raise CxrbenchError(
                f"{p.path}: the labels of its test images differ from those in {first.path}; "
                "the runs compared must be on the same test images and labels"
            )
        out.append(p)
    return out


# ------------------------------------------------------------------------------------ compare


def compare(
    suite: str,
    runs: Path,
    methods: Sequence[str] | None = None,
    metric: str | None = None,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    bootstrap_seed: int = 0,
    level: float = DEFAULT_LEVEL,
    seeds: str = "resample",
) -> Comparison:
    """Every pair of ``methods`` (default: the suite's, in order) in every cell both have runs
    in; ``metric`` a short key (``auroc``) or ``test/…`` (default: each task's primary)."""
    if resamples < 1 or not 0 < level < 1 or seeds not in SEED_MODES or bootstrap_seed < 0:
        raise CxrbenchError(
            f"compare needs resamples ≥ 1, 0 < level < 1, seeds in {SEED_MODES} and a "
            f"bootstrap seed ≥ 0; got {resamples}, {level}, {seeds!r}, {bootstrap_seed}"
        )
    name, found, present = suite_runs(suite, runs)
    chosen = list(dict.fromkeys(methods or present))
    absent = [m for m in chosen if m not in present]
    if absent:
        raise CxrbenchError(
            f"{Path(runs) / name}: no runs of {', '.join(absent)} in suite {name!r} (methods "
            f"with runs: {', '.join(present)})"
        )
    if len(chosen) < 2:
        raise CxrbenchError(f"compare needs two methods; suite {name!r} has runs of {chosen}")
    short = metric.split("/")[-1] if metric else None
    rows: list[Row] = []
    notes: list[str] = []
    pairs = list(itertools.combinations(chosen, 2))
    for (task, fraction), by_method in cells_of(found, chosen).items():
        lacking = [m for m in chosen if m not in by_method]
        if lacking:
            notes.append(f"{task} {fraction * 100:g}%: no runs of {', '.join(lacking)}")
        if len(by_method) < 2:
            continue
        cell = bootstrap_cell(task, fraction, by_method, short, resamples, bootstrap_seed, seeds)
        if isinstance(cell, str):
            notes.append(cell)
            continue
        rows += [cell.row(a, b, level) for a, b in pairs if a in by_method and b in by_method]
    if not rows:
        why = f" ({'; '.join(notes)})" if notes else ""
        raise CxrbenchError(f"suite {name!r}: no cell to compare {', '.join(chosen)} in{why}")
    adjusted = holm([r.p for r in rows])
    floor = resolution_note(resamples, len(rows), level)
    if floor:
        notes.append(floor)
    order = {pair: k for k, pair in enumerate(pairs)}
    final = sorted(
        (_with(r, p_holm=a) for r, a in zip(rows, adjusted, strict=True)),
        key=lambda r: order[(r.method_a, r.method_b)],
    )
    return Comparison(name, tuple(final), resamples, bootstrap_seed, level, seeds, tuple(notes))


def _unit(run: Run) -> tuple[int, int]:
    return (run.record.pretrain_seed, run.record.seed)


def _with(row: Row, **changes: float) -> Row:
    return Row(**{**asdict(row), **changes})


@dataclass(frozen=True)
class CellBootstrap:
    """One cell's resampled statistics: per method, the mean over its runs of the metric on all
    test images (``means``) and on each resample (``stats``, (B,); ``finite``: defined there)."""

    task: str
    fraction: float
    metric: str
    higher_is_better: bool
    runs: dict[str, int]
    means: dict[str, float]
    stats: dict[str, np.ndarray]
    finite: dict[str, np.ndarray]
    images: int
    stratified: bool

    def deltas(self, a: str, b: str) -> tuple[np.ndarray, int]:
        """Resampled Δ = a − b on the resamples where both are defined, and how many were
        skipped; an error when none is left."""
        keep = self.finite[a] & self.finite[b]
        if not keep.any():
            raise CxrbenchError(
                f"{self.task} {self.fraction:g}: {self.metric} is undefined on every one of "
                f"the {len(keep)} resamples of {a} and {b}"
            )
        return self.stats[a][keep] - self.stats[b][keep], int((~keep).sum())

    def row(self, a: str, b: str, level: float) -> Row:
        deltas, skipped = self.deltas(a, b)
        low, high = percentile_interval(deltas, level)
        mean_a, mean_b = self.means[a], self.means[b]
        return Row(a, b, self.task, self.fraction, self.metric, self.higher_is_better,
                   self.runs[a], self.runs[b], mean_a, mean_b, mean_a - mean_b, low, high,
                   bootstrap_p(deltas), math.nan, len(deltas), skipped, self.images,
                   self.stratified)  # fmt: skip

    def interval(self, method: str, level: float) -> tuple[float, float]:
        """The percentile interval of one method's resampled statistic."""
        return percentile_interval(self.stats[method][self.finite[method]], level)

    def top_group(self, level: float) -> set[str]:
        """The best method by mean and every method not significantly different from it
        (bootstrap p against the best, Holm-adjusted over the others, ≥ 1 − level)."""
        pick = max if self.higher_is_better else min
        best = pick(self.means, key=lambda m: self.means[m])
        others = [m for m in self.means if m != best]
        adjusted = holm([bootstrap_p(self.deltas(best, m)[0]) for m in others])
        return {best, *(m for m, p in zip(others, adjusted, strict=True) if p >= 1 - level)}


def bootstrap_cell(
    task: str,
    fraction: float,
    by_method: dict[str, list[Run]],
    metric: str | None,
    resamples: int,
    seed: int,
    seeds: str,
) -> CellBootstrap | str:
    """The cell's resampled statistics, or why there are none (a ``metric`` its task does not
    have). Checks the runs (:func:`check_cell`, :func:`aligned`, the recomputed metric)."""
    check_cell(by_method)
    methods = list(by_method)
    every = [r for m in methods for r in by_method[m]]
    first = every[0].record
    key = metric or first.metric.split("/")[-1]
    preds = aligned([load_predictions(r) for r in every])
    if metric is not None and key not in preds[0].metric_names():
        have = ", ".join(preds[0].metric_names())
        return f"{task} {fraction * 100:g}%: {key} is not available for {task} (has {have})"
    evaluators = [p.resampled(key) for p in preds]
    n = len(preds[0])
    full = np.array([float(f(np.ones((1, n), dtype=np.int64))[0]) for f in evaluators])
    for run, p, value in zip(every, preds, full, strict=True):
        _check_recomputed(run, p, key, value)
    strata = preds[0].strata(key)
    rng = np.random.default_rng(seed_sequence(seed, task, fraction))
    values = resample_values(evaluators, n, resamples, rng, strata)
    columns, start = {}, 0
    for m in methods:
        columns[m] = slice(start, start + len(by_method[m]))
        start += len(by_method[m])
    stats = {}
    for m in methods:
        draws = np.random.default_rng(seed_sequence(seed, task, fraction, m))
        stats[m] = method_stat(values[:, columns[m]], draws if seeds == "resample" else None)
    return CellBootstrap(
        task,
        fraction,
        key,
        first.higher_is_better,
        {m: len(by_method[m]) for m in methods},
        {m: float(full[columns[m]].mean()) for m in methods},
        stats,
        {m: np.isfinite(values[:, columns[m]]).all(axis=1) for m in methods},
        n,
        strata is not None,
    )


def cells_of(
    runs: Sequence[Run], methods: Sequence[str]
) -> dict[tuple[str, float], dict[str, list[Run]]]:
    """The runs of ``methods`` by (task, fraction) cell, then method (in ``methods``' order),
    each method's runs in (pre-training seed, seed) order."""
    cells: dict[tuple[str, float], dict[str, list[Run]]] = {}
    for run in runs:
        if run.record.method in methods:
            key = (run.record.task, float(run.record.fraction))
            cells.setdefault(key, {}).setdefault(run.record.method, []).append(run)
    return {
        key: {m: sorted(by[m], key=_unit) for m in methods if m in by}
        for key, by in sorted(cells.items())
    }


def _check_recomputed(run: Run, preds: Predictions, key: str, value: float) -> None:
    """``value``, the file's metric on all test images, is the recorded one (else the file is
    not the run's, or the metric's definition changed since)."""
    recorded = run.record.metrics.get(f"test/{key}")
    if recorded is not None and not math.isclose(value, recorded, rel_tol=1e-9, abs_tol=1e-12):
        raise CxrbenchError(
            f"{preds.path}: gives test/{key} {value!r} on all test images, {run.path} records "
            f"{recorded!r}; the predictions are not this run's"
        )


# ---------------------------------------------------------------------------------- rendering


def _scale(metric: str) -> float:
    return PAPER_SCALE.get(metric, 1.0)


def _p(value: float) -> str:
    return f"{value:.2g}"


def describe(c: Comparison) -> list[str]:
    """The method in words, for the table's footnotes."""
    scaled = sorted(METRIC_NAMES[m] for m in {r.metric for r in c.rows} if m in PAPER_SCALE)
    seeds = (
        "and each method's runs ((pre-training seed, seed) pairs) drawn with replacement"
        if c.seeds == "resample"
        else "(each method's runs kept fixed)"
    )
    return [
        "Δ = A − B of the mean over each method's runs of the metric, as in the tables"
        + (f" ({', '.join(scaled)} × 100)" if scaled else "")
        + "; ↑/↓: higher/lower is better.",
        f"{c.level * 100:g}% CI: percentile interval of a paired bootstrap, {c.resamples:,} "
        "resamples of the test images (the same for both methods; stratified by label pattern "
        f"for AUROC and mAP) {seeds}; bootstrap seed {c.bootstrap_seed}.",
        f"p: two-sided bootstrap p-value (at least 2/(B + 1)), Holm-adjusted over the "
        f"{len(c.rows)} rows; Δ in bold where the adjusted p < {1 - c.level:.2g}.",
    ]


def render_markdown(c: Comparison, decimals: int = 1) -> str:
    pairs = list(dict.fromkeys((r.method_a, r.method_b) for r in c.rows))
    title = ", ".join(f"{a} vs {b}" for a, b in pairs)
    lines = [f"**compare {c.suite}: {title}**", ""]
    head = ["A", "B", "task", "fraction", "metric", "mean A", "mean B", "Δ (A − B)",
            f"{c.level * 100:g}% CI", "p", "p (Holm)", "runs A / B"]  # fmt: skip
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in c.rows:
        s = _scale(r.metric)
        arrow = "↑" if r.higher_is_better else "↓"
        delta = f"{r.delta * s:+.{decimals}f}"
        if r.significant(c.level):
            delta = f"**{delta}**"
        lines.append(
            "| " + " | ".join([
                r.method_a, r.method_b, r.task, fraction_label(r.task, r.fraction),
                f"{METRIC_NAMES.get(r.metric, r.metric)} {arrow}",
                f"{r.mean_a * s:.{decimals}f}", f"{r.mean_b * s:.{decimals}f}", delta,
                f"[{r.low * s:+.{decimals}f}, {r.high * s:+.{decimals}f}]", _p(r.p),
                _p(r.p_holm), f"{r.runs_a} / {r.runs_b}",
            ]) + " |"
        )  # fmt: skip
    lines += ["", *describe(c)]
    skipped = [r for r in c.rows if r.skipped]
    if skipped:
        what = ", ".join(f"{r.task} {r.fraction * 100:g}% {r.method_a}/{r.method_b}: "
                         f"{r.skipped}" for r in skipped)  # fmt: skip
        lines.append(f"Resamples skipped (metric undefined on them): {what}.")
    lines += list(c.notes)
    return "\n".join(lines) + "\n"


CSV_FIELDS = (*Row.__dataclass_fields__, "significant")


def render_csv(c: Comparison) -> str:
    """One line per row, values in the metric's own units (not × 100), full precision."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for r in c.rows:
        values = asdict(r)
        writer.writerow([*(_plain(values[k]) for k in Row.__dataclass_fields__),
                         int(r.significant(c.level))])  # fmt: skip
    return out.getvalue()


def _plain(value: object) -> object:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return repr(value)
    return value


def render_json(c: Comparison) -> str:
    data = {
        "suite": c.suite,
        "resamples": c.resamples,
        "bootstrap_seed": c.bootstrap_seed,
        "level": c.level,
        "seeds": c.seeds,
        "rows": [{**asdict(r), "significant": r.significant(c.level)} for r in c.rows],
        "notes": list(c.notes),
    }
    return json.dumps(data, indent=2) + "\n"


def render(c: Comparison, fmt: str) -> str:
    if fmt == "md":
        return render_markdown(c)
    if fmt == "csv":
        return render_csv(c)
    if fmt == "json":
        return render_json(c)
    raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")


# --------------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Interval:
    """A table cell's bootstrap interval (metric units) and whether it is in its column's top
    group (the best mean, or not significantly different from it)."""

    low: float
    high: float
    top: bool


def suite_intervals(
    suite: Suite,
    runs: Path,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    bootstrap_seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> dict[tuple[str, str, float], Interval]:
    """Per (method, task, fraction) of the suite's runs: the interval of its run-averaged
    metric and its column's top group (``cxrbench table --ci``), on each cell's shared resamples
    (images and runs, as ``compare``)."""
    found, methods = runs_of(suite.name, suite, runs)
    out: dict[tuple[str, str, float], Interval] = {}
    for (task, fraction), by_method in cells_of(found, methods).items():
        cell = bootstrap_cell(task, fraction, by_method, None, resamples, bootstrap_seed,
                              "resample")  # fmt: skip
        assert not isinstance(cell, str)  # the primary metric always exists
        top = cell.top_group(level)
        for m in by_method:
            out[(m, task, fraction)] = Interval(*cell.interval(m, level), m in top)
    return out


def intervals_caption(level: float = DEFAULT_LEVEL, resamples: int = DEFAULT_RESAMPLES) -> str:
    """What the intervals and the bold of a ``--ci`` table mean, for its caption."""
    return (
        f"[{level * 100:g}% CI]: percentile interval of a bootstrap over the test images "
        f"(stratified for AUROC and mAP) and the runs, {resamples:,} resamples; in bold the best "
        f"mean of each column and every method not significantly different from it (paired "
        f"bootstrap p ≥ {1 - level:.2g} against the best, Holm-adjusted over the column)"
    )
