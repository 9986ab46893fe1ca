"""The leaderboard regression check through the CLI, on hand-made result records (no training):
ok / improved / regressed / incomparable / missing / new, exit statuses, a missing baseline as an
error, update then check, lower-is-better metrics, the JSON file's format and the suite grid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scipy import stats

from cxrbench.cli import main
from cxrbench.report.gate import Policy
from cxrbench.report.leaderboard import Leaderboard
from cxrbench.report.schema import ResultRecord
from cxrbench.report.store import write_record

SUITE = "s"
# (method, task, fraction) -> {seed: value}; one pre-training seed, so the units are the transfer
# seeds. convirt has no spread (margin = floor), random_init has std 0.028284
BASE = {
    ("convirt", "rsna_cls", 0.1): {0: 0.80, 42: 0.80},
    ("random_init", "rsna_cls", 0.1): {0: 0.60, 42: 0.64},
}


def rec(method: str, task: str, fraction: float, seed: int, value: float, **kw) -> ResultRecord:
    metric = kw.pop("metric", "test/auroc")
    base = dict(
        suite=SUITE, method=method, task=task, task_version=1, fraction=fraction, seed=seed,
        pretrain_seed=0, metric=metric, higher_is_better=True,
        metrics={metric: value, "val/loss": 0.5}, config_hash="c0ffee", code_version="0.1.0+gA",
        encoder_sha256="e" * 64, split_hash="s", data_fingerprint="d", probe_mode="cached",
        wall_seconds=1.0, device="cpu", created="2026-11-22T00:00:00",
    )  # fmt: skip
    base.update(kw)
    return ResultRecord(**base)


def write_runs(runs: Path, cells: dict, pretrain_seed: int = 0, **kw) -> None:
    for (method, task, fraction), values in cells.items():
        for seed, value in values.items():
            folder = runs / SUITE / method / task / f"f{fraction:g}" / f"p{pretrain_seed}s{seed}"
            record = rec(method, task, fraction, seed, value, pretrain_seed=pretrain_seed, **kw)
            write_record(folder / "result.json", record)


@pytest.fixture()
def dirs(tmp_path) -> tuple[Path, Path, list[str]]:
    runs, boards = tmp_path / "runs", tmp_path / "leaderboards"
    return runs, boards, ["--suite", SUITE, "--runs", str(runs), "--leaderboards", str(boards)]


def run(capsys, command: str, args: list[str], *extra: str) -> tuple[int, str, str]:
    status = main(["leaderboard", command, *args, *extra])
    out, err = capsys.readouterr()
    return status, out, err


def baseline(capsys, dirs, **kw) -> None:
    """Write the baseline runs, make the baseline with `update`, then start the runs afresh."""
    runs, _, args = dirs
    write_runs(runs, BASE, **kw)
    assert run(capsys, "update", args, "--floor", "0.01", "--alpha", "0.001")[0] == 0
    for path in runs.rglob("result.json"):
        path.unlink()


def statuses(out: str) -> dict[str, str]:
    """method -> status, from the check's report lines."""
    lines = [
        ln.split() for ln in out.splitlines()[1:] if ln and not ln.startswith(("leader", "if"))
    ]
    return {words[1]: words[0] for words in lines}


def test_unchanged_run_passes(capsys, dirs) -> None:
    baseline(capsys, dirs)
    runs, _, args = dirs
    write_runs(runs, BASE, code_version="0.2.0+gB", device="cpu (other)")  # not identity
    status, out, _ = run(capsys, "check", args)
    assert status == 0, out
    assert statuses(out) == {"convirt": "ok", "random_init": "ok"}
    assert "2 ok" in out and "passed" in out and "device cpu → cpu (other)" in out
    assert out.splitlines()[0].split()[:2] == ["STATUS", "METHOD"]


@pytest.mark.parametrize(
    ("convirt", "expected", "status"),
    [
        (0.78, "regressed", 1),  # −0.02 beyond the floor 0.01
        (0.795, "ok", 0),  # −0.005 within it
        (0.79, "ok", 0),  # exactly the margin: not beyond it
        (0.83, "improved", 0),
    ],
)
def test_floor_decides_regressed_ok_improved(capsys, dirs, convirt, expected, status) -> None:
    baseline(capsys, dirs)
    runs, _, args = dirs
    write_runs(runs, {**BASE, ("convirt", "rsna_cls", 0.1): {0: convirt, 42: convirt}})
    code, out, _ = run(capsys, "check", args)
    assert code == status, out
    assert statuses(out) == {"convirt": expected, "random_init": "ok"}
    assert ("FAILED" in out) == (status == 1)


def test_noise_widens_the_margin(capsys, dirs) -> None:
    baseline(capsys, dirs)
    runs, _, args = dirs
    # random_init: s = 0.028284 on both sides, n = 2 + 2, df = 2: t(0.999, 2) × s + floor
    margin = stats.t.ppf(0.999, 2) * 0.028284 + 0.01
    moved = {("random_init", "rsna_cls", 0.1): {0: 0.58, 42: 0.62}}  # −0.02
    write_runs(runs, {**BASE, **moved})
    code, out, _ = run(capsys, "check", args)
    assert code == 0 and statuses(out)["random_init"] == "ok"
    assert f"-0.0200  {margin:.4f}" in out
    drop = round(margin + 0.01, 4)
    low = {("random_init", "rsna_cls", 0.1): {0: 0.60 - drop, 42: 0.64 - drop}}
    write_runs(runs, {**BASE, **low})
    code, out, _ = run(capsys, "check", args)
    assert code == 1 and statuses(out)["random_init"] == "regressed"


@pytest.mark.parametrize(
    ("change", "note"),
    [
        ({"task_version": 2}, "task version 1 → 2"),
        ({"config_hash": "beef"}, "config hash c0ffee → beef"),
        ({"data_fingerprint": "d2"}, "data fingerprint d → d2"),
    ],
)
def test_identity_change_is_incomparable(capsys, dirs, change, note) -> None:
    baseline(capsys, dirs)
    runs, _, args = dirs
    write_runs(runs, {k: v for k, v in BASE.items() if k[0] == "random_init"})
    write_runs(runs, {k: v for k, v in BASE.items() if k[0] == "convirt"}, **change)
    code, out, _ = run(capsys, "check", args)
    assert code == 1, out
    assert statuses(out) == {"convirt": "incomparable", "random_init": "ok"}
    assert note in out and "FAILED" in out


def test_fewer_seeds_is_incomparable(capsys, dirs) -> None:
    baseline(capsys, dirs)
    runs, _, args = dirs
    write_runs(runs, {**BASE, ("convirt", "rsna_cls", 0.1): {42: 0.80}})
    code, out, _ = run(capsys, "check", args)
    assert code == 1 and statuses(out)["convirt"] == "incomparable"
    assert "seeds [0, 42] → [42]" in out


def test_missing_entry_fails_and_new_entry_passes(capsys, dirs) -> None:
    baseline(capsys, dirs)
    runs, _, args = dirs
    write_runs(runs, {k: v for k, v in BASE.items() if k[0] == "convirt"})
    code, out, _ = run(capsys, "check", args)
    assert code == 1 and statuses(out) == {"convirt": "ok", "random_init": "missing"}
    write_runs(runs, {**BASE, ("convirt", "covidx_cls", 1.0): {0: 0.5, 42: 0.6}})
    code, out, _ = run(capsys, "check", args)
    assert code == 0, out
    assert ["new", "convirt", "covidx_cls"] in [ln.split()[:3] for ln in out.splitlines()]
    assert "1 new" in out and "leaderboard update" in out


def test_no_runs_at_all_is_all_missing(capsys, dirs) -> None:
    baseline(capsys, dirs)
    code, out, _ = run(capsys, "check", dirs[2])
    assert code == 1 and set(statuses(out).values()) == {"missing"}


def test_missing_baseline_is_an_error_not_a_skip(capsys, dirs) -> None:
    runs, boards, args = dirs
    write_runs(runs, BASE)
    code, out, err = run(capsys, "check", args)
    assert code == 2 and out == ""
    assert str(boards / "s.json") in err and "cxrbench leaderboard update --suite s" in err
    assert not boards.exists()  # check never creates the baseline


def test_update_then_check_passes_and_prints_the_diff(capsys, dirs) -> None:
    baseline(capsys, dirs)
    runs, boards, args = dirs
    write_runs(runs, {k: v for k, v in BASE.items() if k[0] == "random_init"})
    write_runs(runs, {("convirt", "rsna_cls", 0.1): {0: 0.70, 42: 0.70}}, task_version=2)
    assert run(capsys, "check", args)[0] == 1
    before = (boards / "s.json").read_text()
    assert run(capsys, "check", args)[0] == 1 and (boards / "s.json").read_text() == before
    code, out, _ = run(capsys, "update", args)
    assert code == 0
    assert "changed  convirt / rsna_cls / f0.1: mean 0.8 → 0.7" in out
    assert "task_version 1 → 2" in out and "1 changed, 1 unchanged" in out
    assert run(capsys, "check", args)[0] == 0
    board = Leaderboard.from_json((boards / "s.json").read_text(), "s.json")
    assert board.policy == Policy(alpha=0.001, floor=0.01)  # kept from the previous file


def test_lower_is_better_metric(capsys, dirs) -> None:
    baseline(capsys, dirs, metric="test/loss", higher_is_better=False)
    runs, _, args = dirs
    worse = {("convirt", "rsna_cls", 0.1): {0: 0.82, 42: 0.82}}  # a higher loss
    write_runs(runs, {**BASE, **worse}, metric="test/loss", higher_is_better=False)
    code, out, _ = run(capsys, "check", args)
    assert code == 1 and statuses(out)["convirt"] == "regressed" and "test/loss ↓" in out
    better = {("convirt", "rsna_cls", 0.1): {0: 0.78, 42: 0.78}}
    write_runs(runs, {**BASE, **better}, metric="test/loss", higher_is_better=False)
    code, out, _ = run(capsys, "check", args)
    assert code == 0 and statuses(out)["convirt"] == "improved"


def test_file_format_is_sorted_rounded_and_stable(capsys, dirs) -> None:
    runs, boards, args = dirs
    write_runs(runs, {("random_init", "rsna_cls", 0.1): {42: 0.6 + 1e-9, 0: 2 / 3}})
    write_runs(runs, {("convirt", "rsna_cls", 0.1): {0: 0.8, 42: 0.8}})
    code, out, _ = run(capsys, "update", args)
    assert code == 0 and "new leaderboard for suite s" in out and "2 added" in out
    text = (boards / "s.json").read_text()
    data = json.loads(text)
    assert text == json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert data["policy"] == {"alpha": 0.001, "floor": 0.005}  # the defaults
    assert [e["method"] for e in data["entries"]] == ["convirt", "random_init"]
    entry = data["entries"][1]
    assert entry["mean"] == 0.633333 and entry["std"] == 0.04714 and entry["seeds"] == [0, 42]
    assert entry["n"] == 2 and entry["task_version"] == 1 and entry["config_hash"] == "c0ffee"
    assert entry["unit"] == "seed" and entry["values"] == [0.666667, 0.6]
    assert entry["pretrain_seeds"] == [0]
    assert entry["code_version"] == "0.1.0+gA" and entry["device"] == "cpu"
    code, out, _ = run(capsys, "update", args)
    assert code == 0 and "0 added, 0 removed, 0 changed, 2 unchanged" in out
    assert (boards / "s.json").read_text() == text


def test_records_are_selected_by_folder_like_tables(capsys, dirs) -> None:
    runs, _, args = dirs
    write_runs(runs, BASE, suite="an_older_suite")  # shared into this suite's folder
    code, out, _ = run(capsys, "update", args)
    assert code == 0 and f"{len(BASE)} added" in out
    elsewhere = runs / "other" / "convirt" / "rsna_cls" / "f1" / "s0" / "result.json"
    write_record(elsewhere, rec("convirt", "rsna_cls", 1.0, 0, 0.1))  # suite field says s
    code, out, _ = run(capsys, "check", args)
    assert code == 0 and statuses(out) == {"convirt": "ok", "random_init": "ok"}


def test_corrupt_baseline_is_an_error(capsys, dirs) -> None:
    _, boards, args = dirs
    boards.mkdir()
    (boards / "s.json").write_text('{"format_version": 2, "policy": {"alpha": 0, "floor": 0}}')
    code, _, err = run(capsys, "check", args)
    assert code == 2 and "s.json" in err
    (boards / "s.json").write_text('{"format_version": 1, "tolerance": {"floor": 0, "k_std": 2}}')
    code, _, err = run(capsys, "check", args)
    assert code == 2 and "not a leaderboard of format 2 (found 1" in err


def test_suite_file_grid_and_complete_update(capsys, dirs, tmp_path) -> None:
    runs, boards, _ = dirs
    suite = tmp_path / "s.yaml"
    suite.write_text(
        "name: s\npreset: tiny\nmethods: [convirt, random_init]\ntasks: [rsna_cls]\n"
        "fractions: [0.1]\nseeds: [0, 42]\n"
    )
    args = ["--suite", str(suite), "--runs", str(runs), "--leaderboards", str(boards)]
    write_runs(runs, {k: v for k, v in BASE.items() if k[0] == "convirt"})
    code, _, err = run(capsys, "update", args)
    assert code == 2 and "planned run(s) have no result" in err and not boards.exists()
    write_runs(runs, BASE)
    stale = {("convirt", "rsna_cls", 1.0): {0: 0.1}, ("convirt", "rsna_cls", 0.1): {7: 0.1}}
    write_runs(runs, stale)  # outside the suite's grid: ignored
    assert run(capsys, "update", args)[0] == 0
    code, out, _ = run(capsys, "check", args)
    assert code == 0 and statuses(out) == {"convirt": "ok", "random_init": "ok"}
    code, _, err = run(capsys, "check", [*args[:1], str(tmp_path / "nope.yaml"), *args[2:]])
    assert code == 2 and "nope.yaml" in err


def test_a_bare_name_with_a_suite_file_in_benchmarks_takes_its_grid(
    capsys, dirs, tmp_path, monkeypatch
) -> None:
    runs, _, args = dirs
    write_runs(runs, {**BASE, ("convirt", "rsna_cls", 1.0): {0: 0.9}})  # 1.0: not in the grid
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "update", args)  # no benchmarks/s.yaml: every record counts
    assert code == 0 and "3 added" in out
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "s.yaml").write_text(
        "name: s\npreset: tiny\nmethods: [convirt, random_init]\ntasks: [rsna_cls]\n"
        "fractions: [0.1]\nseeds: [0, 42]\n"
    )
    code, out, _ = run(capsys, "update", args)
    assert code == 0 and "1 removed" in out and "2 unchanged" in out


def test_a_suite_can_read_another_metric_of_each_task(tmp_path: Path) -> None:
    """``metrics: {covidx_cls: auroc}``: the leaderboard entry is the AUROC, not the accuracy;
    a record without the chosen metric is an error naming the run; a suite's metric choice
    names a task of the suite."""
    from cxrbench.errors import ConfigError, CxrbenchError
    from cxrbench.report.suites import folder_records

    metrics = {"test/accuracy": 0.55, "test/auroc": 0.71, "test/loss": 0.9, "val/loss": 0.5}
    record = rec("convirt", "covidx_cls", 1.0, 42, 0.55, metric="test/accuracy", metrics=metrics)
    write_record(tmp_path / SUITE / "r" / "result.json", record)
    [read] = folder_records(tmp_path, SUITE, metrics={"covidx_cls": "auroc"})
    assert (read.metric, read.value, read.higher_is_better) == ("test/auroc", 0.71, True)
    assert record.with_metric("loss").higher_is_better is False
    with pytest.raises(CxrbenchError, match=r"convirt / covidx_cls / 1 / seed 42.*'test/dice'"):
        record.with_metric("dice")
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: s\ntasks: [rsna_cls]\nmetrics: {covidx_cls: auroc}\n")
    from cxrbench.suite import load_suite

    with pytest.raises(ConfigError, match=r"suite.yaml, key 'metrics.covidx_cls': not a task"):
        load_suite(suite)
