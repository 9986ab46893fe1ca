"""The committed CI baseline (results/leaderboards/smoke.json, benchmarks/smoke.yaml) has the
signal and power docs/leaderboards.md states: every pre-trained entry is above its random-init row
by more than the margin a CI check gets (by 1.1 margins at least); that margin is within the
documented bound per task (the pre-training noise of a 2-epoch ConVIRT allows no less than about
8, 10 and 15 points on CheXpert, RSNA and COVIDx with two CI seeds); the check run on the
calibration's own CI seeds passes; the same runs fail when ConVIRT's values are random init's (a
pre-training that learned nothing; flagged on CheXpert and COVIDx, not guaranteed on RSNA), and
against a baseline whose stored mean was raised by twice the bound on any pre-trained entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxrbench.cli import main
from cxrbench.report import gate
from cxrbench.report.leaderboard import Entry, Leaderboard
from cxrbench.report.schema import ResultRecord
from cxrbench.report.store import write_record
from cxrbench.runner.plan import load_suite

ROOT = Path(__file__).resolve().parents[2]
SUITE_FILE = ROOT / "benchmarks" / "smoke.yaml"
BOARD_FILE = ROOT / "results" / "leaderboards" / "smoke.json"
SUITE = load_suite(SUITE_FILE)
BOARD = Leaderboard.from_json(BOARD_FILE.read_text(), str(BOARD_FILE))
ENTRIES = {e.key: e for e in BOARD.entries}
PRETRAINED = sorted(k for k in ENTRIES if k[0] != "random_init")
# the smallest drop a CI check is documented to catch, per task (docs/leaderboards.md, Measured)
DOCUMENTED_POWER = {"chexpert_cls": 0.09, "rsna_cls": 0.10, "covidx_cls": 0.16}


def test_the_baseline_covers_the_suite_and_is_calibrated_on_more_seeds() -> None:
    grid = {(m, t, float(f)) for m in SUITE.methods for t in SUITE.tasks for f in SUITE.fractions}
    assert set(ENTRIES) == grid
    for e in BOARD.entries:
        assert e.unit == "pretrain_seed" and list(e.seeds) == sorted(SUITE.seeds)
        assert set(SUITE.pretrain_seeds) <= set(e.pretrain_seeds)
        assert e.n >= 3 * len(SUITE.pretrain_seeds)  # the noise is estimated, not guessed


@pytest.mark.parametrize("key", PRETRAINED, ids=lambda k: f"{k[1]}-f{k[2]:g}")
def test_pretrained_entries_clear_random_init_by_their_margin(key) -> None:
    entry = ENTRIES[key]
    reference = ENTRIES[("random_init", key[1], key[2])]
    margin = gate.detectable(gate.Sample(entry.mean, entry.std, entry.n),
                             len(SUITE.pretrain_seeds), BOARD.policy)  # fmt: skip
    bound = DOCUMENTED_POWER[key[1]]
    assert margin < bound, f"a drop of {bound} would pass: margin {margin:.4f}"
    assert entry.mean - reference.mean > 1.1 * margin


def _ci_runs(runs: Path, learned_nothing: bool = False) -> None:
    """The runs a CI check on the calibration machine produces: the calibration's own values of
    the suite's pre-training seeds (one transfer seed each, as the suite plans); with
    ``learned_nothing``, the pre-trained entries get their random-init row's values."""
    for e in BOARD.entries:
        source = ENTRIES[("random_init", e.task, e.fraction)] if learned_nothing else e
        for p in SUITE.pretrain_seeds:
            value = source.values[source.pretrain_seeds.index(p)]
            for seed in e.seeds:
                write_record(_path(runs, e, p, seed), _record(e, p, seed, value))


def _path(runs: Path, e: Entry, p: int, seed: int) -> Path:
    return (
        runs
        / "smoke"
        / e.method
        / e.task
        / f"f{e.fraction:g}"
        / f"p{p}"
        / f"s{seed}"
        / "result.json"
    )


def _record(e: Entry, pretrain_seed: int, seed: int, value: float) -> ResultRecord:
    return ResultRecord(
        suite="smoke", method=e.method, task=e.task, task_version=e.task_version,
        fraction=e.fraction, seed=seed, pretrain_seed=pretrain_seed, metric=e.metric,
        higher_is_better=e.higher_is_better, metrics={e.metric: value}, config_hash=e.config_hash,
        code_version="test", encoder_sha256="e", split_hash="s",
        data_fingerprint=e.data_fingerprint, probe_mode="cached", wall_seconds=1.0,
        device=e.device, created="2026-12-02T00:00:00",
    )  # fmt: skip


@pytest.fixture(scope="module")
def ci_runs(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("smoke-runs")
    _ci_runs(runs)
    return runs


def _check(runs: Path, boards: Path, capsys) -> tuple[int, str]:
    status = main(["leaderboard", "check", "--suite", str(SUITE_FILE), "--runs", str(runs),
                   "--leaderboards", str(boards)])  # fmt: skip
    return status, capsys.readouterr().out


def test_the_calibration_machines_ci_runs_pass(ci_runs, capsys) -> None:
    status, out = _check(ci_runs, BOARD_FILE.parent, capsys)
    assert status == 0, out


def test_a_pretraining_that_learned_nothing_fails_every_pretrained_entry(tmp_path, capsys) -> None:
    _ci_runs(tmp_path, learned_nothing=True)
    status, out = _check(tmp_path, BOARD_FILE.parent, capsys)
    assert status == 1, out
    flagged = {tuple(line.split()[1:3]) for line in out.splitlines() if line.startswith("regr")}
    # RSNA is not guaranteed (docs/leaderboards.md): random init's own seeds 0 and 1 sit 1.9
    # points above its mean, and their 3.9-point spread widens the pooled margin past the gap
    assert flagged >= {(m, t) for m, t, _ in PRETRAINED if t != "rsna_cls"}


@pytest.mark.parametrize("key", PRETRAINED, ids=lambda k: f"{k[1]}-f{k[2]:g}")
def test_a_baseline_raised_beyond_the_documented_power_fails(
    key, ci_runs, tmp_path, capsys
) -> None:
    data = json.loads(BOARD_FILE.read_text())
    for entry in data["entries"]:
        if (entry["method"], entry["task"], entry["fraction"]) == key:
            entry["mean"] = round(entry["mean"] + 2 * DOCUMENTED_POWER[key[1]], 6)
    (tmp_path / "smoke.json").write_text(json.dumps(data))
    status, out = _check(ci_runs, tmp_path, capsys)
    assert status == 1, out
    flagged = [line.split()[:4] for line in out.splitlines() if line.startswith("regressed")]
    assert flagged == [["regressed", key[0], key[1], f"{key[2]:g}"]]
