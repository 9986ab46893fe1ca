"""Leaderboards: a suite's committed baseline and the regression check against it.

``results/leaderboards/<suite>.json`` holds the suite's tolerance policy (``floor``, ``k_std``)
and one entry per (method, task, fraction): metric, direction, mean and sample std over the seeds
(as :mod:`cxrbench.report.aggregate`), the seeds, what makes two numbers comparable (task version,
config hash, data fingerprint) and the code version and device that produced them: recorded,
never compared, since what a code change does to the numbers is what the check is for.

``check`` judges fresh result records entry by entry:

- ``incomparable``: task version, config hash, data fingerprint, metric, direction or seeds
  differ. Fewer seeds is a failed or unfinished run, other seeds a changed suite: the mean
  estimates something else, so it is not scored, and the check fails;
- ``regressed`` / ``improved``: the mean moved against / along the metric's direction by more
  than ``max(floor, k_std × baseline std)``; ``ok`` otherwise;
- ``missing``: in the baseline, not in the runs; ``new``: in the runs, not in the baseline.

Regressed, incomparable and missing fail it (exit 1); a missing baseline is an error, never a
skip. ``update`` rewrites the file, only when asked, and returns the diff. Means and stds are
stored rounded to ``DECIMALS`` places and compared at that precision.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from cxrbench.errors import CxrbenchError
from cxrbench.report.aggregate import aggregate
from cxrbench.report.schema import ResultRecord
from cxrbench.report.suites import Grid, folder_records, resolve_suite
from cxrbench.utils.io import atomic_write_text

FORMAT_VERSION = 1
DECIMALS = 6
GENERATED_BY = "cxrbench leaderboard update"
DEFAULT_LEADERBOARDS = Path("results/leaderboards")
STATUSES = ("ok", "improved", "regressed", "incomparable", "missing", "new")
FAILING = frozenset({"regressed", "incomparable", "missing"})
# compared for incomparability, in this order, with the words the report uses
IDENTITY = (
    ("task_version", "task version"),
    ("config_hash", "config hash"),
    ("data_fingerprint", "data fingerprint"),
    ("metric", "metric"),
    ("higher_is_better", "higher is better"),
    ("seeds", "seeds"),
)

Key = tuple[str, str, float]  # (method, task, fraction)


@dataclass(frozen=True)
class Tolerance:
    floor: float = 0.005
    k_std: float = 2.0

    def __post_init__(self) -> None:
        for name in ("floor", "k_std"):
            value = getattr(self, name)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not (number and math.isfinite(value) and value >= 0):
                raise CxrbenchError(f"tolerance {name}: expected a number ≥ 0, got {value!r}")

    def margin(self, baseline_std: float) -> float:
        return round(max(self.floor, self.k_std * baseline_std), DECIMALS)

    def describe(self) -> str:
        return f"max({self.floor:g}, {self.k_std:g} × baseline std)"


@dataclass(frozen=True)
class Entry:
    method: str
    task: str
    fraction: float
    metric: str
    higher_is_better: bool
    mean: float
    std: float
    n: int
    seeds: tuple[int, ...]
    task_version: int
    config_hash: str
    data_fingerprint: str
    code_version: str
    device: str

    @property
    def key(self) -> Key:
        return (self.method, self.task, self.fraction)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seeds": list(self.seeds)}

    @classmethod
    def from_dict(cls, data: Any, source: str) -> Entry:
        if not isinstance(data, dict):
            raise CxrbenchError(f"{source}: a leaderboard entry is a JSON object")
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in data]
        unknown = sorted(set(data) - set(names))
        if missing or unknown:
            what = f"missing key {missing[0]!r}" if missing else f"unknown key {unknown[0]!r}"
            raise CxrbenchError(f"{source}: not a leaderboard entry ({what})")
        seeds = data["seeds"]
        if not isinstance(seeds, list) or len(seeds) != data["n"]:
            raise CxrbenchError(f"{source}: 'seeds' must list the n = {data['n']} seeds")
        return cls(**{**data, "fraction": float(data["fraction"]), "seeds": tuple(seeds)})


@dataclass(frozen=True)
class Leaderboard:
    suite: str
    tolerance: Tolerance
    entries: tuple[Entry, ...]

    def to_json(self) -> str:
        data = {
            "format_version": FORMAT_VERSION,
            "generated_by": GENERATED_BY,
            "suite": self.suite,
            "tolerance": asdict(self.tolerance),
            "entries": [e.to_dict() for e in sorted(self.entries, key=lambda e: e.key)],
        }
        return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str) -> Leaderboard:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise CxrbenchError(f"{source}: unreadable leaderboard ({err})") from None
        if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
            raise CxrbenchError(f"{source}: not a leaderboard of format {FORMAT_VERSION}")
        tolerance = data.get("tolerance")
        if not isinstance(tolerance, dict) or set(tolerance) != {"floor", "k_std"}:
            raise CxrbenchError(f"{source}: 'tolerance' must hold exactly 'floor' and 'k_std'")
        raw = data.get("entries")
        if not isinstance(raw, list):
            raise CxrbenchError(f"{source}: 'entries' must be a list")
        entries = tuple(Entry.from_dict(e, f"{source}, entry {i}") for i, e in enumerate(raw))
        duplicates = [k for k, c in Counter(e.key for e in entries).items() if c > 1]
        if duplicates:
            raise CxrbenchError(f"{source}: entry {_label(duplicates[0])} appears twice")
        try:
            policy = Tolerance(**tolerance)
        except CxrbenchError as err:
            raise CxrbenchError(f"{source}: {err}") from None
        return cls(str(data.get("suite")), policy, entries)


@dataclass(frozen=True)
class Verdict:
    status: str
    key: Key
    baseline: Entry | None
    current: Entry | None
    delta: float | None = None  # current mean − baseline mean (raw, not signed by direction)
    margin: float | None = None
    note: str = ""


def _label(key: Key) -> str:
    method, task, fraction = key
    return f"{method} / {task} / f{fraction:g}"


def _joined(values: Iterable[str]) -> str:
    return ", ".join(sorted(set(values)))


def entries_from_records(records: Sequence[ResultRecord]) -> list[Entry]:
    """One entry per (method, task, fraction); mixing task versions or config hashes in one cell
    is an error (from :func:`aggregate`), and so is one seed recorded twice."""
    groups: dict[Key, list[ResultRecord]] = defaultdict(list)
    for record in records:
        groups[(record.method, record.task, record.fraction)].append(record)
    for key, group in groups.items():
        seeds = Counter(r.seed for r in group)
        twice = [s for s, count in seeds.items() if count > 1]
        if twice:
            raise CxrbenchError(f"{_label(key)}: seed {twice[0]} has {seeds[twice[0]]} records")
    entries = []
    for cell in aggregate(records):
        group = groups[(cell.method, cell.task, cell.fraction)]
        entries.append(Entry(
            method=cell.method, task=cell.task, fraction=cell.fraction, metric=cell.metric,
            higher_is_better=cell.higher_is_better, mean=round(cell.mean, DECIMALS),
            std=round(cell.std, DECIMALS), n=cell.n, seeds=tuple(sorted(r.seed for r in group)),
            task_version=group[0].task_version, config_hash=group[0].config_hash,
            data_fingerprint=_joined(r.data_fingerprint for r in group),
            code_version=_joined(r.code_version for r in group),
            device=_joined(r.device for r in group),
        ))  # fmt: skip
    return entries


def compare(baseline: Leaderboard, current: Sequence[Entry]) -> list[Verdict]:
    base = {e.key: e for e in baseline.entries}
    now = {e.key: e for e in current}
    verdicts = []
    for key in sorted(base.keys() | now.keys()):
        old, new = base.get(key), now.get(key)
        if new is None:
            verdicts.append(Verdict("missing", key, old, None, note="no result records"))
        elif old is None:
            verdicts.append(Verdict("new", key, None, new, note="not in the baseline"))
        else:
            verdicts.append(_judge(old, new, baseline.tolerance))
    return verdicts


def _judge(old: Entry, new: Entry, tolerance: Tolerance) -> Verdict:
    reasons = [
        f"{words} {_show(getattr(old, name))} → {_show(getattr(new, name))}"
        for name, words in IDENTITY
        if getattr(old, name) != getattr(new, name)
    ]
    if reasons:
        return Verdict("incomparable", old.key, old, new, note="; ".join(reasons))
    delta = round(new.mean - old.mean, DECIMALS)
    margin = tolerance.margin(old.std)
    gain = delta if old.higher_is_better else -delta
    status = "regressed" if gain < -margin else "improved" if gain > margin else "ok"
    note = f"device {old.device} → {new.device}" if old.device != new.device else ""
    return Verdict(status, old.key, old, new, delta, margin, note)


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def failed(verdicts: Sequence[Verdict]) -> bool:
    return any(v.status in FAILING for v in verdicts)


def _number(value: float | None, sign: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.{DECIMALS}f}" if sign else f"{value:.{DECIMALS}f}"


def _row(v: Verdict) -> tuple[str, ...]:
    entry = v.baseline or v.current
    assert entry is not None
    arrow = "↑" if entry.higher_is_better else "↓"
    base = _number(v.baseline.mean if v.baseline else None)
    now = _number(v.current.mean if v.current else None)
    delta, margin = _number(v.delta, sign=True), _number(v.margin)
    where = (entry.method, entry.task, f"{entry.fraction:g}", f"{entry.metric} {arrow}")
    return (v.status, *where, base, now, delta, margin, v.note)


def format_check(verdicts: Sequence[Verdict], board: Leaderboard, update: str = "") -> str:
    """One aligned line per entry (status first), a summary line, and the ``update`` command
    that would accept the runs as the new baseline when the check failed or found new entries."""
    header = ("STATUS", "METHOD", "TASK", "FRACTION", "METRIC", "BASELINE", "CURRENT", "DELTA")
    rows = [(*header, "MARGIN", "NOTE"), *(_row(v) for v in verdicts)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    counts = Counter(v.status for v in verdicts)
    tally = ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s]) or "no entries"
    verdict = "FAILED" if failed(verdicts) else "passed"
    lines.append(
        f"leaderboard {board.suite}: {tally} · tolerance {board.tolerance.describe()} · {verdict}"
    )
    if failed(verdicts) or counts["new"]:
        command = update or f"cxrbench leaderboard update --suite {board.suite}"
        lines.append(f"if the change is intended: {command}")
    return "\n".join(lines)


def diff(old: Leaderboard | None, new: Leaderboard) -> str:
    """What ``update`` changes: added / removed / changed entries, old → new."""
    lines = [] if old is not None else [f"new leaderboard for suite {new.suite}"]
    if old is not None and old.tolerance != new.tolerance:
        lines.append(f"tolerance: {old.tolerance.describe()} → {new.tolerance.describe()}")
    base = {} if old is None else {e.key: e for e in old.entries}
    now = {e.key: e for e in new.entries}
    counts: Counter[str] = Counter()
    compared = ("mean", "std", *(name for name, _ in IDENTITY), "device")
    for key in sorted(base.keys() | now.keys()):
        before, after = base.get(key), now.get(key)
        if before is None or after is None:
            word = "added" if before is None else "removed"
            entry = after or before
            assert entry is not None
            counts[word] += 1
            seeds = _show(entry.seeds)
            lines.append(f"{word:<8} {_label(key)}: {entry.metric} {_number(entry.mean)} ± "
                         f"{_number(entry.std)} (seeds {seeds})")  # fmt: skip
            continue
        changes = [
            f"{name} {_show(getattr(before, name))} → {_show(getattr(after, name))}"
            for name in compared
            if getattr(before, name) != getattr(after, name)
        ]
        counts["changed" if changes else "unchanged"] += 1
        if changes:
            lines.append(f"{'changed':<8} {_label(key)}: " + ", ".join(changes))
    versions = _joined(e.code_version for e in new.entries)
    lines.append(
        ", ".join(f"{counts[w]} {w}" for w in ("added", "removed", "changed", "unchanged"))
        + f" · code version {versions or '–'}"
    )
    return "\n".join(lines)


def board_path(leaderboards: Path, suite: str) -> Path:
    return Path(leaderboards) / f"{suite}.json"


def load(path: Path, suite: str, update: str = "") -> Leaderboard:
    """The baseline of ``suite``; its absence is an error that says how to create it."""
    if not path.is_file():
        command = update or f"cxrbench leaderboard update --suite {suite}"
        raise CxrbenchError(
            f"{path}: no baseline leaderboard for suite {suite!r} (create it with `{command}`)"
        )
    board = Leaderboard.from_json(path.read_text(encoding="utf-8"), str(path))
    if board.suite != suite:
        raise CxrbenchError(f"{path}: leaderboard of suite {board.suite!r}, expected {suite!r}")
    return board


def current_entries(runs: Path, suite: str, grid: Grid | None) -> list[Entry]:
    """Entries from the records of ``runs/<suite>/`` (:mod:`cxrbench.report.suites` selects)."""
    return entries_from_records(folder_records(runs, suite, grid))


def run_check(suite: str, runs: Path, leaderboards: Path) -> tuple[str, int]:
    """The check report and its exit status (0 passed, 1 failed)."""
    name, grid = resolve_suite(suite)
    update = f"cxrbench leaderboard update --suite {suite} --runs {runs}"
    if Path(leaderboards) != DEFAULT_LEADERBOARDS:
        update += f" --leaderboards {leaderboards}"
    board = load(board_path(leaderboards, name), name, update)
    verdicts = compare(board, current_entries(runs, name, grid))
    return format_check(verdicts, board, update), 1 if failed(verdicts) else 0


def run_update(
    suite: str,
    runs: Path,
    leaderboards: Path,
    floor: float | None = None,
    k_std: float | None = None,
) -> str:
    """Rewrite the baseline from the runs (refusing incomplete ones) and return the diff.

    The tolerance defaults to the existing file's, else :class:`Tolerance`'s defaults."""
    name, grid = resolve_suite(suite)
    entries = current_entries(runs, name, grid)
    if not entries:
        raise CxrbenchError(f"{Path(runs) / name}: no result records of suite {name!r}")
    if grid is not None:
        _require_complete(entries, grid, Path(runs) / name)
    path = board_path(leaderboards, name)
    old = load(path, name) if path.exists() else None
    default = old.tolerance if old else Tolerance()
    tolerance = Tolerance(
        default.floor if floor is None else floor, default.k_std if k_std is None else k_std
    )
    new = Leaderboard(name, tolerance, tuple(entries))
    atomic_write_text(path, new.to_json())
    return f"wrote {path}\n" + diff(old, new)


def _require_complete(entries: Sequence[Entry], grid: Grid, folder: Path) -> None:
    have = {(*e.key, seed) for e in entries for seed in e.seeds}
    absent = sorted(grid - have)
    if absent:
        m, t, f, s = absent[0]
        raise CxrbenchError(
            f"{folder}: {len(absent)} planned run(s) have no result, e.g. {m}/{t}/f{f:g}/s{s}; "
            "finish `cxrbench bench` before updating the baseline"
        )
