"""The leaderboard gate's noise, measured: per-entry spread over pre-training seeds, the empirical
false-alarm rate, and how far kernel / thread proxies of "another CPU" move the numbers.

    .venv/bin/python benchmarks/regress_noise.py --calibration RUNS [--proxy NAME=RUNS ...]
        [--suite benchmarks/smoke.yaml] [--leaderboards results/leaderboards]

RUNS folders are `cxrbench bench --out` folders of the suite: the calibration holds many
pre-training seeds (`--pretrain-seed 0 ... --pretrain-seed 11`), each proxy the suite's own seeds
run under other kernels (e.g. `OMP_NUM_THREADS=1`, `ATEN_CPU_CAPABILITY=avx2`). Prints:

1. per entry: units, mean, std over pre-training seeds, and the gap to the random-init row;
2. leave-k-out: every k-subset of the calibration's pre-training seeds (k = the suite's own count)
   checked as "current" against a baseline of the others, with the committed policy: how many
   entries are flagged (nothing changed, so every flag is a false alarm);
3. per proxy: the paired drift (proxy − calibration on the same pre-training seeds) per entry,
   its largest absolute value, and the committed gate's verdicts on the proxy's runs.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from cxrbench.report import gate
from cxrbench.report.leaderboard import (
    board_path,
    compare,
    entries_from_records,
    failed,
    label,
    load,
)
from cxrbench.report.leaderboard_text import format_check
from cxrbench.report.schema import ResultRecord
from cxrbench.report.suites import folder_records, resolve_suite, suite_grid

Key = tuple[str, str, float]


def unit_values(records: list[ResultRecord]) -> dict[Key, dict[int, float]]:
    """Per entry, per pre-training seed, the mean over its transfer seeds."""
    runs: dict[Key, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        runs[(r.method, r.task, float(r.fraction))][r.pretrain_seed].append(r.value)
    return {k: {p: float(np.mean(v)) for p, v in by.items()} for k, by in runs.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calibration", required=True, type=Path)
    parser.add_argument("--proxy", action="append", default=[], metavar="NAME=RUNS")
    parser.add_argument("--suite", default="benchmarks/smoke.yaml")
    parser.add_argument("--leaderboards", default="results/leaderboards", type=Path)
    args = parser.parse_args()
    name, suite = resolve_suite(args.suite)
    assert suite is not None, "a suite file is needed"
    board = load(board_path(args.leaderboards, name), name)
    policy = board.policy
    units = {e.key: e.unit for e in board.entries}
    k = len(suite.pretrain_seeds)
    calib = unit_values(folder_records(args.calibration, name, suite_grid(suite)))

    print(f"== noise over pre-training seeds (calibration {args.calibration})")
    for key, by in sorted(calib.items()):
        values = [by[p] for p in sorted(by)]
        line = f"{label(key)}: n={len(values)} mean {np.mean(values):.4f} std "
        line += f"{np.std(values, ddof=1):.4f}  [{' '.join(f'{v:.3f}' for v in values)}]"
        ref = calib.get(("random_init", key[1], key[2]))
        if ref and key[0] != "random_init":
            line += f"  gap to random_init {np.mean(values) - np.mean(list(ref.values())):+.4f}"
        print(line)

    print(f"\n== leave-{k}-out false alarms ({policy.describe()})")
    flags, tests = 0, 0
    per_entry: dict[Key, int] = defaultdict(int)
    for key, by in sorted(calib.items()):
        seeds = sorted(by)
        for held in itertools.combinations(seeds, k):
            rest = [by[p] for p in seeds if p not in held]
            now = [by[p] for p in held]
            result = gate.t_test(gate.Sample.of(rest), gate.Sample.of(now), True, policy)
            tests += 1
            if result.status == "regressed":
                flags += 1
                per_entry[key] += 1
    rate = flags / tests if tests else float("nan")
    print(f"{flags} of {tests} entry checks flagged: false-alarm rate {rate:.4f} per entry")
    for key, count in sorted(per_entry.items()):
        print(f"  {label(key)}: {count}")

    status = 0
    for spec in args.proxy:
        proxy_name, _, folder = spec.partition("=")
        records = folder_records(Path(folder), name, suite_grid(suite))
        proxy = unit_values(records)
        print(f"\n== proxy {proxy_name} ({folder}): paired drift vs the calibration")
        drifts = []
        for key, by in sorted(proxy.items()):
            pairs = [(by[p], calib[key][p]) for p in sorted(by) if p in calib.get(key, {})]
            diffs = [a - b for a, b in pairs]
            drifts += diffs
            shown = " ".join(f"{d:+.4f}" for d in diffs)
            print(f"{label(key)}: {shown}")
        if drifts:
            largest = max(abs(d) for d in drifts)
            zero = sum(d == 0 for d in drifts)
            spread = statistics.pstdev(drifts) if len(drifts) > 1 else 0.0
            print(f"drift {proxy_name}: largest |Δ| {largest:.4f}, rms {spread:.4f}, "
                  f"{zero}/{len(drifts)} bit-identical")  # fmt: skip
        verdicts = compare(board, entries_from_records(records, units))
        print(format_check(verdicts, board))
        status |= int(failed(verdicts))
    return status


if __name__ == "__main__":
    sys.exit(main())
