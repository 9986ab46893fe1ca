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
skip. The two commands and what they print are in :mod:`cxrbench.report.leaderboard_text`:
``update`` rewrites the file, only when asked, and returns the diff and, per entry, the
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
from cxrbench.report.aggregate import require_shared
from cxrbench.report.gate import Policy
from cxrbench.report.schema import ResultRecord

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
            raise CxrbenchError(f"{source}: entry {label(duplicates[0])} appears twice")
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


def label(key: Key) -> str:
    method, task, fraction = key
    return f"{method} / {task} / f{fraction:g}"


def joined(values: Iterable[str]) -> str:
    return ", ".join(sorted(set(values)))


def _units(key: Key, group: Sequence[ResultRecord], unit: str) -> tuple[float, ...]:
    """One value per unit: per pre-training seed the mean over its transfer seeds, or per
    transfer seed (one pre-training seed). Every pre-training seed must have the same seeds."""
    by_pretrain: dict[int, dict[int, float]] = defaultdict(dict)
    for r in group:
        if r.seed in by_pretrain[r.pretrain_seed]:
            raise CxrbenchError(
                f"{label(key)}: pre-training seed {r.pretrain_seed}, seed {r.seed} has two records"
            )
        by_pretrain[r.pretrain_seed][r.seed] = r.value
    seed_sets = {p: sorted(v) for p, v in by_pretrain.items()}
    first = min(seed_sets)
    for p, seeds in seed_sets.items():
        if seeds != seed_sets[first]:
            raise CxrbenchError(
                f"{label(key)}: pre-training seed {p} has transfer seeds {seeds}, seed {first} "
                f"has {seed_sets[first]}: finish the runs (cxrbench bench) first"
            )
    if unit == "pretrain_seed":
        return tuple(float(np.mean(list(by_pretrain[p].values()))) for p in sorted(by_pretrain))
    if len(by_pretrain) > 1:
        raise CxrbenchError(f"{label(key)}: unit 'seed' needs runs of one pre-training seed")
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
        require_shared(group, label(key))
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
            data_fingerprint=joined(r.data_fingerprint for r in group),
            code_version=joined(r.code_version for r in group),
            device=joined(r.device for r in group),
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
        f"{words} {show(getattr(old, name))} → {show(getattr(new, name))}"
        for name, words in IDENTITY
        if getattr(old, name) != getattr(new, name)
    ]
    if reasons:
        return Verdict("incomparable", old.key, old, new, note="; ".join(reasons))
    result = gate.t_test(sample_of(old), sample_of(new), old.higher_is_better, policy)
    delta = round(new.mean - old.mean, DECIMALS)
    notes = [] if result.se is not None else ["no spread to estimate: margin = floor"]
    if old.device != new.device:
        notes.append(f"device {old.device} → {new.device}")
    margin = round(result.margin, DECIMALS)
    return Verdict(result.status, old.key, old, new, delta, margin, result.p_drop, "; ".join(notes))


def sample_of(entry: Entry) -> gate.Sample:
    """The entry's summary (mean, std, n), as stored: the test reads these, ``values`` are kept
    for audit and recomputation."""
    return gate.Sample(entry.mean, entry.std, entry.n)


def show(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def failed(verdicts: Sequence[Verdict]) -> bool:
    return any(v.status in FAILING for v in verdicts)


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


def absent_runs(records: Sequence[ResultRecord], planned: frozenset | None) -> dict[Key, int]:
    """Per entry, the planned (method, task, fraction, pretrain seed, seed) runs with no record."""
    if planned is None:
        return {}
    have = {(r.method, r.task, float(r.fraction), r.pretrain_seed, r.seed) for r in records}
    counts: Counter[Key] = Counter((m, t, f) for m, t, f, _, _ in planned - have)
    return dict(counts)
