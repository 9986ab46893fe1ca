"""The leaderboard gate's statistics (report/gate.py): the pooled t-test against scipy's own, the
margin at the boundary, its false-alarm rate and power by simulation, and pre-training seeds as
units through the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from cxrbench.cli import main
from cxrbench.errors import CxrbenchError
from cxrbench.report import gate
from cxrbench.report.gate import Policy
from cxrbench.report.gate import Sample as _Sample
from cxrbench.report.leaderboard import Leaderboard
from cxrbench.report.schema import ResultRecord
from cxrbench.report.store import write_record

S = _Sample.of


@pytest.mark.parametrize("n_current", [1, 2, 5])
def test_p_value_is_scipys_pooled_one_sided_t_test(n_current) -> None:
    rng = np.random.default_rng(n_current)
    base = rng.normal(0.80, 0.01, size=8)
    now = rng.normal(0.79, 0.01, size=n_current)
    result = gate.t_test(S(base), S(now), True, Policy(alpha=0.05, floor=0.0))
    if n_current == 1:  # scipy needs two per side: the prediction-interval form by hand
        se = base.std(ddof=1) * math.sqrt(1 / 8 + 1)
        expected = stats.t.cdf((now.mean() - base.mean()) / se, 7)
    else:
        expected = stats.ttest_ind(now, base, equal_var=True, alternative="less").pvalue
    assert result.p_drop == pytest.approx(expected, rel=1e-9)
    assert (result.status == "regressed") == (expected < 0.05)


def test_margin_is_t_quantile_times_se_plus_floor_and_exact_at_the_boundary() -> None:
    base = [0.80, 0.82, 0.78, 0.81, 0.79, 0.80]
    policy = Policy(alpha=0.01, floor=0.005)
    se = np.std(base, ddof=1) * math.sqrt(1 / 6 + 1 / 1)
    margin = stats.t.ppf(0.99, 5) * se + 0.005
    just_inside = gate.t_test(S(base), S([0.80 - margin + 1e-6]), True, policy)
    just_beyond = gate.t_test(S(base), S([0.80 - margin - 1e-6]), True, policy)
    assert just_inside.margin == pytest.approx(margin) and just_inside.status == "ok"
    assert just_beyond.status == "regressed" and just_beyond.p_drop < 0.01
    lower_is_better = gate.t_test(S(base), S([0.80 + margin + 1e-6]), False, policy)
    assert lower_is_better.status == "regressed"
    assert gate.t_test(S(base), S([0.80 + margin + 1e-6]), True, policy).status == "improved"
    assert gate.detectable(S(base), 1, policy) == pytest.approx(margin)


def test_no_spread_leaves_the_floor() -> None:
    policy = Policy(alpha=0.001, floor=0.01)
    assert gate.t_test(S([0.5]), S([0.5]), True, policy).margin == 0.01  # df = 0
    flat = gate.t_test(S([1 / 3] * 4), S([1 / 3, 1 / 3]), True, policy)
    assert flat.margin == 0.01 and flat.se == 0.0 and flat.status == "ok"
    assert gate.t_test(S([1 / 3] * 4), S([0.32, 0.32]), True, policy).status == "regressed"
    with pytest.raises(CxrbenchError, match="at least one unit"):
        S([])


@pytest.mark.parametrize(("alpha", "floor"), [(0, 0.0), (0.5, 0.0), (0.01, -1.0), (True, 0.0)])
def test_bad_policy_is_an_error(alpha, floor) -> None:
    with pytest.raises(CxrbenchError, match="policy"):
        Policy(alpha=alpha, floor=floor)


def regressed(base: np.ndarray, now: np.ndarray, policy: Policy) -> bool:
    return gate.t_test(S(base), S(now), True, policy).status == "regressed"


def test_false_alarm_rate_and_power_by_simulation() -> None:
    """Unchanged runs (a new draw of the same noise) are flagged at rate α; a drop of 3 σ with
    8 baseline and 2 current units is flagged most of the time at α = 0.05."""
    rng = np.random.default_rng(0)
    policy = Policy(alpha=0.05, floor=0.0)
    draws = 2000
    base = rng.normal(0.0, 1.0, size=(draws, 8))
    null = rng.normal(0.0, 1.0, size=(draws, 2))
    flagged = sum(regressed(b, c, policy) for b, c in zip(base, null, strict=True))
    # binomial 99.9% band around 0.05 · 2000 = 100: ± 3.3 · √(2000 · 0.05 · 0.95) ≈ ± 32
    assert abs(flagged - 100) < 33, flagged
    shifted = null - 3.0
    power = sum(regressed(b, c, policy) for b, c in zip(base, shifted, strict=True))
    assert power / draws > 0.9, power
    assert gate.suite_false_alarm(0.001, 12) == pytest.approx(1 - 0.999**12)


def record(method: str, seed: int, pretrain_seed: int, value: float) -> ResultRecord:
    return ResultRecord(
        suite="g", method=method, task="rsna_cls", task_version=1, fraction=1.0, seed=seed,
        pretrain_seed=pretrain_seed, metric="test/auroc", higher_is_better=True,
        metrics={"test/auroc": value}, config_hash="c", code_version="v", encoder_sha256="e",
        split_hash="s", data_fingerprint="d", probe_mode="cached", wall_seconds=1.0,
        device="cpu", created="2026-12-02T00:00:00",
    )  # fmt: skip


def write(runs: Path, values: dict[int, float], method: str = "convirt") -> None:
    """Per pre-training seed p, two transfer seeds at values[p] ± 0.002."""
    for p, value in values.items():
        for seed, offset in ((0, -0.002), (42, 0.002)):
            path = runs / "g" / method / "rsna_cls" / "f1" / f"p{p}" / f"s{seed}" / "result.json"
            write_record(path, record(method, seed, p, value + offset))


def test_pretraining_seeds_are_the_units_and_a_subset_is_checked(tmp_path, capsys) -> None:
    suite = tmp_path / "g.yaml"
    suite.write_text(
        "name: g\npreset: tiny\nmethods: [convirt]\ntasks: [rsna_cls]\nfractions: [1.0]\n"
        "seeds: [0, 42]\npretrain_seeds: [0, 1]\n"
    )
    calib, fresh, boards = tmp_path / "calib", tmp_path / "fresh", tmp_path / "boards"
    values = {0: 0.80, 1: 0.81, 2: 0.79, 3: 0.805, 4: 0.795, 5: 0.80}
    write(calib, values)  # a calibration: six pre-training seeds, more than the suite's two
    args = ["--suite", str(suite), "--leaderboards", str(boards)]
    assert main(["leaderboard", "update", *args, "--runs", str(calib), "--floor", "0.002"]) == 0
    out = capsys.readouterr().out
    assert "smallest drop flagged with 2 unit(s)" in out
    board = Leaderboard.from_json((boards / "g.json").read_text(), "g.json")
    (entry,) = board.entries
    assert (
        entry.unit == "pretrain_seed" and entry.n == 6 and entry.pretrain_seeds == tuple(range(6))
    )
    assert entry.values == tuple(values[p] for p in range(6))  # the mean of ±0.002 per seed
    margin = gate.detectable(S(entry.values), 2, board.policy)
    write(fresh, {0: 0.80, 1: 0.80})
    assert main(["leaderboard", "check", *args, "--runs", str(fresh)]) == 0
    assert "ok " in capsys.readouterr().out
    write(fresh, {0: 0.80 - margin - 0.01, 1: 0.80 - margin - 0.01})
    assert main(["leaderboard", "check", *args, "--runs", str(fresh)]) == 1
    assert "regressed" in capsys.readouterr().out


def test_a_planned_pretraining_seed_without_results_is_missing(tmp_path, capsys) -> None:
    suite = tmp_path / "g.yaml"
    suite.write_text(
        "name: g\npreset: tiny\nmethods: [convirt]\ntasks: [rsna_cls]\nfractions: [1.0]\n"
        "seeds: [0, 42]\npretrain_seeds: [0, 1]\n"
    )
    runs, boards = tmp_path / "runs", tmp_path / "boards"
    write(runs, {0: 0.80, 1: 0.81, 2: 0.79})
    args = ["--suite", str(suite), "--runs", str(runs), "--leaderboards", str(boards)]
    assert main(["leaderboard", "update", *args]) == 0
    capsys.readouterr()
    for path in (runs / "g" / "convirt" / "rsna_cls" / "f1" / "p1").rglob("result.json"):
        path.unlink()  # pre-training seed 1 failed: n = 2 would still test, but the run is short
    assert main(["leaderboard", "check", *args]) == 1
    out = capsys.readouterr().out
    assert "missing" in out and "2 planned run(s) have no result" in out
    write(runs, {1: 0.81})
    (runs / "g" / "convirt" / "rsna_cls" / "f1" / "p2" / "s0" / "result.json").unlink()
    assert main(["leaderboard", "update", *args]) == 2  # unequal transfer seeds: an error
    assert "pre-training seed 2 has transfer seeds [42]" in capsys.readouterr().err
