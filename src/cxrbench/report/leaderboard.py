"""Leaderboards: a suite's committed baseline and the statistical regression check against it.

``results/leaderboards/<suite>.json`` holds the suite's gate policy (``alpha``, ``floor``: see
:mod:`cxrbench.report.gate`) and one entry per (method, task, fraction): metric, direction, the
per-unit values with their mean, sample std and count, the unit (``pretrain_seed`` when the runs
have several pre-training seeds, each unit the mean over its transfer seeds; ``seed`` otherwise),
the transfer and pre-training seeds, what makes two numbers comparable (task version, config
hash, data fingerprint, transfer seeds, unit) and the code version and device that produced them:
recorded, never compared, since what a code change does to the numbers is what the check is for.

``check`` judges fresh result records entry by entry:

- ``incomparable``: task version, config hash, data fingerprint, metric, direction, transfer
  seeds or unit differ: the mean estimates something else, so it is not scored;
- ``regressed`` / ``improved``: the one-sided pooled t-test of the current units against the
  baseline's finds a drop / rise beyond the floor at level α (:func:`gate.t_test`); ``ok``
  otherwise. The pre-training seeds may differ (a baseline calibrated on more seeds than CI
  runs): every unit is a draw of the same procedure;
- ``missing``: in the baseline, not in the runs, or a run the suite plans has no result;
  ``new``: in the runs, not in the baseline.

Regressed, incomparable and missing fail it (exit 1); a missing baseline is an error, never a
skip. ``update`` rewrites the file, only when asked, and returns the diff and, per entry, the
smallest drop the suite's own runs would be flagged for. Values are stored rounded to
``DECIMALS`` places. The policy, its false-alarm rate and how the noise was measured:
docs/leaderboards.md.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from cxrbench.errors import CxrbenchError
from cxrbench.report import gate
from cxrbench.report.gate import Policy
from cxrbench.report.schema import ResultRecord
from cxrbench.report.suites import folder_records, planned_grid, resolve_suite, suite_grid
from cxrbench.utils.io import atomic_write_text

FORMAT_VERSION = 2
DECIMALS = 6
GENERATED_BY = "cxrbench leaderboard update"
DEFAULT_LEADERBOARDS = Path("results/leaderboards")
STATUSES = ("ok", "improved", "regressed", "incomparable", "missing", "new")
FAILING = frozenset({"regressed", "incomparable", "missing"})
UNITS = ("pretrain_seed", "seed")
# compared for incomparability, in this order, with the words the report uses
IDENTITY = (
    ("task_version", "task version"),
    ("config_hash", "config hash"),
    ("data_fingerprint", "data fingerprint"),
    ("metric", "metric"),
    ("higher_is_better", "higher is better"),
    ("seeds", "seeds"),
    ("unit", "unit"),
)
BASELINE_METHODS = ("random_init",)  # the rows a pre-trained entry must beat (update's report)

Key = tuple[str, str, float]  # (method, task, fraction)


@dataclass(frozen=True)
class Entry:
    method: str
    task: str
    fraction: float
    metric: str
    higher_is_better: bool
    mean: float
    std: float
    n: int  # units
    unit: str  # "pretrain_seed" or "seed"
    values: tuple[float, ...]  # one per unit, in seed order
    seeds: tuple[int, ...]  # transfer seeds
    pretrain_seeds: tuple[int, ...]
    task_version: int
    config_hash: str
    data_fingerprint: str
    code_version: str
    device: str

    @property
    def key(self) -> Key:
        return (self.method, self.task, self.fraction)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {**data, **{k: list(data[k]) for k in ("values", "seeds", "pretrain_seeds")}}

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
        for name in ("values", "seeds", "pretrain_seeds"):
            if not isinstance(data[name], list) or not data[name]:
                raise CxrbenchError(f"{source}: {name!r} must be a non-empty list")
        if data["unit"] not in UNITS:
            raise CxrbenchError(f"{source}: 'unit' is one of {', '.join(UNITS)}")
        if len(data["values"]) != data["n"]:
            raise CxrbenchError(f"{source}: 'values' must hold the n = {data['n']} unit values")
        tuples = {k: tuple(data[k]) for k in ("values", "seeds", "pretrain_seeds")}
        return cls(**{**data, "fraction": float(data["fraction"]), **tuples})


@dataclass(frozen=True)
class Leaderboard:
    suite: str
    policy: Policy
    entries: tuple[Entry, ...]

    def to_json(self) -> str:
        data = {
            "format_version": FORMAT_VERSION,
            "generated_by": GENERATED_BY,
            "suite": self.suite,
            "policy": asdict(self.policy),
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
            found = data.get("format_version") if isinstance(data, dict) else None
            raise CxrbenchError(
                f"{source}: not a leaderboard of format {FORMAT_VERSION} (found {found!r}; "
                "re-create it with `cxrbench leaderboard update`)"
            )
        policy = data.get("policy")
        if not isinstance(policy, dict) or set(policy) != {"alpha", "floor"}:
            raise CxrbenchError(f"{source}: 'policy' must hold exactly 'alpha' and 'floor'")
        raw = data.get("entries")
        if not isinstance(raw, list):
            raise CxrbenchError(f"{source}: 'entries' must be a list")
        entries = tuple(Entry.from_dict(e, f"{source}, entry {i}") for i, e in enumerate(raw))
        duplicates = [k for k, c in Counter(e.key for e in entries).items() if c > 1]
        if duplicates:
            raise CxrbenchError(f"{source}: entry {_label(duplicates[0])} appears twice")
        try:
            return cls(str(data.get("suite")), Policy(**policy), entries)
        except CxrbenchError as err:
            raise CxrbenchError(f"{source}: {err}") from None


@dataclass(frozen=True)
class Verdict:
    status: str
    key: Key
    baseline: Entry | None
    current: Entry | None
    delta: float | None = None  # current mean − baseline mean (raw, not signed by direction)
    margin: float | None = None
    p_drop: float | None = None
    note: str = ""


def _label(key: Key) -> str:
    method, task, fraction = key
    return f"{method} / {task} / f{fraction:g}"


def _joined(values: Iterable[str]) -> str:
    return ", ".join(sorted(set(values)))


def _units(key: Key, group: Sequence[ResultRecord], unit: str) -> tuple[float, ...]:
    """One value per unit: per pre-training seed the mean over its transfer seeds, or per
    transfer seed (one pre-training seed). Every pre-training seed must have the same seeds."""
    by_pretrain: dict[int, dict[int, float]] = defaultdict(dict)
    for r in group:
        if r.seed in by_pretrain[r.pretrain_seed]:
            raise CxrbenchError(
                f"{_label(key)}: pre-training seed {r.pretrain_seed}, seed {r.seed} has two records"
            )
        by_pretrain[r.pretrain_seed][r.seed] = r.value
    seed_sets = {p: sorted(v) for p, v in by_pretrain.items()}
    first = min(seed_sets)
    for p, seeds in seed_sets.items():
        if seeds != seed_sets[first]:
            raise CxrbenchError(
                f"{_label(key)}: pre-training seed {p} has transfer seeds {seeds}, seed {first} "
                f"has {seed_sets[first]}: finish the runs (cxrbench bench) first"
            )
    if unit == "pretrain_seed":
        return tuple(float(np.mean(list(by_pretrain[p].values()))) for p in sorted(by_pretrain))
    if len(by_pretrain) > 1:
        raise CxrbenchError(f"{_label(key)}: unit 'seed' needs runs of one pre-training seed")
    return tuple(by_pretrain[first][s] for s in seed_sets[first])


def entries_from_records(
    records: Sequence[ResultRecord], units: Mapping[Key, str] | None = None
) -> list[Entry]:
    """One entry per (method, task, fraction). The unit is ``units[key]`` when given, else
    ``pretrain_seed`` when the records have several pre-training seeds, else ``seed``. Mixing
    task versions, config hashes or metrics in one cell is an error."""
    groups: dict[Key, list[ResultRecord]] = defaultdict(list)
    for record in records:
        groups[(record.method, record.task, float(record.fraction))].append(record)
    entries = []
    for key, group in sorted(groups.items()):
        first = group[0]
        for other in group[1:]:
            for name in ("task_version", "config_hash", "metric", "higher_is_better"):
                if getattr(other, name) != getattr(first, name):
                    raise CxrbenchError(
                        f"{_label(key)}: records with {name} {getattr(first, name)} and "
                        f"{getattr(other, name)} cannot be compared as one entry"
                    )
        pretrain_seeds = tuple(sorted({r.pretrain_seed for r in group}))
        unit = (units or {}).get(key) or ("pretrain_seed" if len(pretrain_seeds) > 1 else "seed")
        values = _units(key, group, unit)
        entries.append(Entry(
            method=key[0], task=key[1], fraction=key[2], metric=first.metric,
            higher_is_better=first.higher_is_better, mean=round(float(np.mean(values)), DECIMALS),
            std=round(float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, DECIMALS),
            n=len(values), unit=unit, values=tuple(round(v, DECIMALS) for v in values),
            seeds=tuple(sorted({r.seed for r in group})), pretrain_seeds=pretrain_seeds,
            task_version=first.task_version, config_hash=first.config_hash,
            data_fingerprint=_joined(r.data_fingerprint for r in group),
            code_version=_joined(r.code_version for r in group),
            device=_joined(r.device for r in group),
        ))  # fmt: skip
    return entries


def compare(
    baseline: Leaderboard, current: Sequence[Entry], absent: Mapping[Key, int] | None = None
) -> list[Verdict]:
    """Verdicts per entry; ``absent``: how many planned runs of an entry have no result."""
    base = {e.key: e for e in baseline.entries}
    now = {e.key: e for e in current}
    absent = absent or {}
    verdicts = []
    for key in sorted(base.keys() | now.keys() | absent.keys()):
        old, new = base.get(key), now.get(key)
        if absent.get(key):
            note = f"{absent[key]} planned run(s) have no result"
            verdicts.append(Verdict("missing", key, old, new, note=note))
        elif new is None:
            verdicts.append(Verdict("missing", key, old, None, note="no result records"))
        elif old is None:
            verdicts.append(Verdict("new", key, None, new, note="not in the baseline"))
        else:
            verdicts.append(_judge(old, new, baseline.policy))
    return verdicts


def _judge(old: Entry, new: Entry, policy: Policy) -> Verdict:
    reasons = [
        f"{words} {_show(getattr(old, name))} → {_show(getattr(new, name))}"
        for name, words in IDENTITY
        if getattr(old, name) != getattr(new, name)
    ]
    if reasons:
        return Verdict("incomparable", old.key, old, new, note="; ".join(reasons))
    result = gate.t_test(_sample_of(old), _sample_of(new), old.higher_is_better, policy)
    delta = round(new.mean - old.mean, DECIMALS)
    notes = [] if result.se is not None else ["no spread to estimate: margin = floor"]
    if old.device != new.device:
        notes.append(f"device {old.device} → {new.device}")
    margin = round(result.margin, DECIMALS)
    return Verdict(result.status, old.key, old, new, delta, margin, result.p_drop, "; ".join(notes))


def _sample_of(entry: Entry) -> gate.Sample:
    """The entry's summary (mean, std, n), as stored: the test reads these, ``values`` are kept
    for audit and recomputation."""
    return gate.Sample(entry.mean, entry.std, entry.n)


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def failed(verdicts: Sequence[Verdict]) -> bool:
    return any(v.status in FAILING for v in verdicts)


def _number(value: float | None, sign: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.4f}" if sign else f"{value:.4f}"


def _sample(entry: Entry | None) -> str:
    if entry is None:
        return "–"
    return f"{entry.mean:.4f} ± {entry.std:.4f} (n={entry.n})"


def _row(v: Verdict) -> tuple[str, ...]:
    entry = v.baseline or v.current
    assert entry is not None
    arrow = "↑" if entry.higher_is_better else "↓"
    p = "–" if v.p_drop is None else f"{v.p_drop:.2g}"
    where = (entry.method, entry.task, f"{entry.fraction:g}", f"{entry.metric} {arrow}")
    delta, margin = _number(v.delta, sign=True), _number(v.margin)
    return (v.status, *where, _sample(v.baseline), _sample(v.current), delta, margin, p, v.note)


def format_check(verdicts: Sequence[Verdict], board: Leaderboard, update: str = "") -> str:
    """One aligned line per entry (status first), a summary line, and the ``update`` command
    that would accept the runs as the new baseline when the check failed or found new entries."""
    header = ("STATUS", "METHOD", "TASK", "FRACTION", "METRIC", "BASELINE", "CURRENT", "DELTA")
    rows = [(*header, "MARGIN", "P(DROP)", "NOTE"), *(_row(v) for v in verdicts)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    counts = Counter(v.status for v in verdicts)
    tally = ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s]) or "no entries"
    verdict = "FAILED" if failed(verdicts) else "passed"
    alarm = gate.suite_false_alarm(board.policy.alpha, len(board.entries))
    lines.append(
        f"leaderboard {board.suite}: {tally} · {board.policy.describe()} (false alarm ≤ "
        f"{alarm:.2%} for the suite when nothing changed) · {verdict}"
    )
    if failed(verdicts) or counts["new"]:
        command = update or f"cxrbench leaderboard update --suite {board.suite}"
        lines.append(f"if the change is intended: {command}")
    return "\n".join(lines)


def diff(old: Leaderboard | None, new: Leaderboard) -> str:
    """What ``update`` changes: added / removed / changed entries, old → new."""
    lines = [] if old is not None else [f"new leaderboard for suite {new.suite}"]
    if old is not None and old.policy != new.policy:
        lines.append(f"policy: {old.policy.describe()} → {new.policy.describe()}")
    base = {} if old is None else {e.key: e for e in old.entries}
    now = {e.key: e for e in new.entries}
    counts: Counter[str] = Counter()
    compared = ("mean", "std", "n", *(name for name, _ in IDENTITY), "device")
    for key in sorted(base.keys() | now.keys()):
        before, after = base.get(key), now.get(key)
        if before is None or after is None:
            word = "added" if before is None else "removed"
            entry = after or before
            assert entry is not None
            counts[word] += 1
            lines.append(f"{word:<8} {_label(key)}: {entry.metric} {_sample(entry)}")
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


def power_report(board: Leaderboard, check_units: int) -> str:
    """Per entry, the smallest drop a check with ``check_units`` units (the suite's own runs) is
    flagged for, assuming their spread is the baseline's; and how far each pre-trained entry is
    above its random-init row, in those margins."""
    lines = [
        f"smallest drop flagged with {check_units} unit(s) per entry ({board.policy.describe()}):"
    ]
    base = {e.key: e for e in board.entries}
    for e in sorted(board.entries, key=lambda e: e.key):
        margin = gate.detectable(_sample_of(e), check_units, board.policy)
        line = f"  {_label(e.key)}: {margin:.4f}"
        reference = next((base.get((m, e.task, e.fraction)) for m in BASELINE_METHODS), None)
        if reference is not None and e.method not in BASELINE_METHODS:
            gain = (e.mean - reference.mean) * (1 if e.higher_is_better else -1)
            line += f"; {gain:+.4f} vs {reference.method} ({gain / margin:.1f} margins)"
        lines.append(line)
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


def _absent(records: Sequence[ResultRecord], planned: frozenset | None) -> dict[Key, int]:
    """Per entry, the planned (method, task, fraction, pretrain seed, seed) runs with no record."""
    if planned is None:
        return {}
    have = {(r.method, r.task, float(r.fraction), r.pretrain_seed, r.seed) for r in records}
    counts: Counter[Key] = Counter((m, t, f) for m, t, f, _, _ in planned - have)
    return dict(counts)


def run_check(suite: str, runs: Path, leaderboards: Path) -> tuple[str, int]:
    """The check report and its exit status (0 passed, 1 failed)."""
    name, spec = resolve_suite(suite)
    update = f"cxrbench leaderboard update --suite {suite} --runs {runs}"
    if Path(leaderboards) != DEFAULT_LEADERBOARDS:
        update += f" --leaderboards {leaderboards}"
    board = load(board_path(leaderboards, name), name, update)
    records = folder_records(runs, name, suite_grid(spec) if spec else None)
    absent = _absent(records, planned_grid(spec) if spec else None)
    units = {e.key: e.unit for e in board.entries}
    complete = [r for r in records if not absent.get((r.method, r.task, float(r.fraction)))]
    verdicts = compare(board, entries_from_records(complete, units), absent)
    return format_check(verdicts, board, update), 1 if failed(verdicts) else 0


def run_update(
    suite: str,
    runs: Path,
    leaderboards: Path,
    floor: float | None = None,
    alpha: float | None = None,
) -> str:
    """Rewrite the baseline from the runs (refusing incomplete ones) and return the diff and
    the gate's power. The policy defaults to the existing file's, else :class:`Policy`'s."""
    name, spec = resolve_suite(suite)
    records = folder_records(runs, name, suite_grid(spec) if spec else None)
    if not records:
        raise CxrbenchError(f"{Path(runs) / name}: no result records of suite {name!r}")
    absent = _absent(records, planned_grid(spec) if spec else None)
    if absent:
        m, t, f = sorted(absent)[0]
        raise CxrbenchError(
            f"{Path(runs) / name}: {sum(absent.values())} planned run(s) have no result, e.g. "
            f"in {m}/{t}/f{f:g}; finish `cxrbench bench` before updating the baseline"
        )
    entries = entries_from_records(records)
    path = board_path(leaderboards, name)
    old = _previous(path, name)
    default = old.policy if old else Policy()
    policy = Policy(
        default.alpha if alpha is None else alpha, default.floor if floor is None else floor
    )
    new = Leaderboard(name, policy, tuple(entries))
    atomic_write_text(path, new.to_json())
    check_units = len(spec.pretrain_seeds) if spec else 1
    if any(e.unit == "seed" for e in entries) and spec:
        check_units = len(spec.seeds)
    return f"wrote {path}\n" + diff(old, new) + "\n" + power_report(new, check_units)


def _previous(path: Path, name: str) -> Leaderboard | None:
    """The file being replaced, when it is readable in this format (an older format's file is
    replaced whole: its policy does not carry over)."""
    if not path.exists():
        return None
    try:
        return load(path, name)
    except CxrbenchError:
        return None
