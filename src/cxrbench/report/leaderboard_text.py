"""What ``cxrbench leaderboard check|update`` print and do: the check's report, the update's diff
and the gate's power, over the data model and verdicts of :mod:`cxrbench.report.leaderboard`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from cxrbench.errors import CxrbenchError
from cxrbench.report import gate
from cxrbench.report.gate import Policy
from cxrbench.report.leaderboard import (
    BASELINE_METHODS,
    DEFAULT_LEADERBOARDS,
    IDENTITY,
    STATUSES,
    Entry,
    Leaderboard,
    Verdict,
    absent_runs,
    board_path,
    compare,
    entries_from_records,
    failed,
    joined,
    label,
    load,
    sample_of,
    show,
)
from cxrbench.report.suites import folder_records, planned_grid, resolve_suite, suite_grid
from cxrbench.utils.io import atomic_write_text


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
            lines.append(f"{word:<8} {label(key)}: {entry.metric} {_sample(entry)}")
            continue
        changes = [
            f"{name} {show(getattr(before, name))} → {show(getattr(after, name))}"
            for name in compared
            if getattr(before, name) != getattr(after, name)
        ]
        counts["changed" if changes else "unchanged"] += 1
        if changes:
            lines.append(f"{'changed':<8} {label(key)}: " + ", ".join(changes))
    versions = joined(e.code_version for e in new.entries)
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
        margin = gate.detectable(sample_of(e), check_units, board.policy)
        line = f"  {label(e.key)}: {margin:.4f}"
        reference = next((base.get((m, e.task, e.fraction)) for m in BASELINE_METHODS), None)
        if reference is not None and e.method not in BASELINE_METHODS:
            gain = (e.mean - reference.mean) * (1 if e.higher_is_better else -1)
            line += f"; {gain:+.4f} vs {reference.method} ({gain / margin:.1f} margins)"
        lines.append(line)
    return "\n".join(lines)


def run_check(suite: str, runs: Path, leaderboards: Path) -> tuple[str, int]:
    """The check report and its exit status (0 passed, 1 failed)."""
    name, spec = resolve_suite(suite)
    update = f"cxrbench leaderboard update --suite {suite} --runs {runs}"
    if Path(leaderboards) != DEFAULT_LEADERBOARDS:
        update += f" --leaderboards {leaderboards}"
    board = load(board_path(leaderboards, name), name, update)
    records = folder_records(runs, name, suite_grid(spec) if spec else None,
                             spec.metrics if spec else None)  # fmt: skip
    absent = absent_runs(records, planned_grid(spec) if spec else None)
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
    records = folder_records(runs, name, suite_grid(spec) if spec else None,
                             spec.metrics if spec else None)  # fmt: skip
    if not records:
        raise CxrbenchError(f"{Path(runs) / name}: no result records of suite {name!r}")
    absent = absent_runs(records, planned_grid(spec) if spec else None)
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
