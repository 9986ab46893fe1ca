"""cxrbench compare: paired bootstrap CIs and Holm-adjusted p-values from predictions.npz.

Tiny synthetic runs (records + predictions written by the same code as the runner's), known
answers (identical predictions; a method better on every image), the bootstrap against
scipy.stats.bootstrap, determinism, and every refusal naming its file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from cxrbench.cli import main
from cxrbench.errors import CxrbenchError
from cxrbench.metrics import resample
from cxrbench.predictions import encode, read_predictions, write_predictions
from cxrbench.report import compare as cmp
from cxrbench.report.schema import ResultRecord
from cxrbench.report.store import read_record, write_record

SUITE = "cmp-test"  # no benchmarks/cmp-test.yaml: every record in the folder counts


def cls_arrays(scores: np.ndarray, targets: np.ndarray, ids=None) -> dict:
    n = len(scores)
    return {
        "kind": "classification",
        "task": "rsna_cls",
        "ids": [f"img{i:03d}" for i in range(n)] if ids is None else ids,
        "label_kind": "multilabel",
        "classes": ["Pneumonia"],
        "targets": targets.reshape(n, 1).astype(np.float32),
        "scores": scores.reshape(n, 1).astype(np.float32),
    }


def seg_arrays(dice: np.ndarray) -> dict:
    n = len(dice)
    target = np.full(n, 100, dtype=np.int64)
    inter = np.round(dice * 100).astype(np.int64)  # predicted = target: Dice = inter / 100
    return {
        "kind": "segmentation", "task": "siim_seg", "ids": [f"img{i:03d}" for i in range(n)],
        "intersection": inter, "predicted": target.copy(), "target": target,
        "dice": inter / 100.0,
    }  # fmt: skip


def make_run(runs: Path, method: str, seed: int, arrays: dict, **record) -> Path:
    """A finished run folder: predictions.npz, then result.json with the recomputed metrics."""
    task = arrays["task"]
    folder = runs / SUITE / method / task / "f0.01" / f"s{seed}"
    sha = write_predictions(folder / "predictions.npz", arrays)
    metrics = read_predictions(folder / "predictions.npz").metrics()
    kind = arrays["kind"]
    metric = "test/auroc" if kind == "classification" else "test/dice"
    fields = dict(
        suite=SUITE, method=method, task=task, task_version=1, fraction=0.01, seed=seed,
        pretrain_seed=0, metric=metric, higher_is_better=True,
        metrics={**metrics, "val/loss": 0.5}, config_hash="c", code_version="0",
        encoder_sha256="e", split_hash="split-1", data_fingerprint="d", probe_mode="cached",
        wall_seconds=1.0, device="cpu", created="2026-01-01T00:00:00", predictions_sha256=sha,
    )  # fmt: skip
    fields.update(record)
    write_record(folder / "result.json", ResultRecord(**fields))
    return folder


def data(n: int = 80, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = (rng.random(n) < 0.3).astype(float)
    return targets, rng.random(n)


# ------------------------------------------------------------------------------ the statistics


def test_holm_matches_the_hand_computation() -> None:
    assert cmp.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert cmp.holm([0.5, 0.9]) == [1.0, 1.0]
    assert cmp.holm([]) == []


def test_p_value_bounds() -> None:
    assert cmp.bootstrap_p(np.zeros(100)) == 1.0
    assert cmp.bootstrap_p(np.full(1999, 0.1)) == 2 / 2000
    assert cmp.bootstrap_p(np.r_[np.full(50, -1.0), np.full(50, 1.0)]) == 1.0


@pytest.mark.parametrize("metric", ["dice", "auroc"])
def test_the_interval_agrees_with_scipy_bootstrap_on_the_same_data(metric) -> None:
    """Paired, unstratified, fixed runs: the percentile interval of scipy.stats.bootstrap
    (paired=True) on the same images, up to Monte Carlo error."""
    rng = np.random.default_rng(3)
    n, b = 150, 2000
    targets = (rng.random(n) < 0.4).astype(float)
    if metric == "dice":
        a, c = rng.beta(5, 2, n), rng.beta(4, 2, n)
        fa, fc = (lambda k, v=v: resample.weighted_mean(v, k) for v in (a, c))

        def statistic(x, y):
            return x.mean() - y.mean()

        samples = (a, c)
    else:
        a, c = targets * 0.8 + rng.random(n), targets * 0.5 + rng.random(n)
        fa, fc = (lambda k, v=v: resample.auroc(v, targets, k) for v in (a, c))

        def statistic(x, y, t):
            from cxrbench.metrics.classification import binary_auroc

            return binary_auroc(x, t) - binary_auroc(y, t)

        samples = (a, c, targets)
    values = cmp.resample_values([fa, fc], n, b, np.random.default_rng(0))
    ours = cmp.percentile_interval(values[:, 0] - values[:, 1])
    ref = stats.bootstrap(samples, statistic, paired=True, vectorized=False, n_resamples=b,
                          method="percentile", random_state=1).confidence_interval  # fmt: skip
    width = ref.high - ref.low
    assert ours[0] == pytest.approx(ref.low, abs=0.15 * width)
    assert ours[1] == pytest.approx(ref.high, abs=0.15 * width)


# ----------------------------------------------------------------------------- known answers


def test_identical_predictions_give_zero_and_p_one(tmp_path) -> None:
    targets, scores = data()
    for seed in (0, 1, 2):
        for method in ("a", "b"):
            make_run(tmp_path, method, seed, cls_arrays(scores + seed * targets, targets))
    got = cmp.compare(SUITE, tmp_path, ["a", "b"], resamples=300, seeds="fixed")
    [row] = got.rows
    assert (row.delta, row.low, row.high, row.p, row.p_holm) == (0.0, 0.0, 0.0, 1.0, 1.0)
    assert row.runs_a == row.runs_b == 3 and row.stratified and row.skipped == 0
    # with the runs drawn too (independently per method), 0 stays inside and p stays large
    row = cmp.compare(SUITE, tmp_path, ["a", "b"], resamples=300).rows[0]
    assert row.delta == 0.0 and row.low <= 0.0 <= row.high


def test_better_on_every_image_reaches_the_p_bound(tmp_path) -> None:
    dice = np.random.default_rng(0).integers(20, 70, 60) / 100
    make_run(tmp_path, "good", 0, seg_arrays(dice + 0.2))
    make_run(tmp_path, "bad", 0, seg_arrays(dice))
    row = cmp.compare(SUITE, tmp_path, ["good", "bad"], resamples=500).rows[0]
    assert row.p == 2 / 501 and not row.stratified
    assert row.delta == pytest.approx(0.2) and 0 < row.low <= row.delta <= row.high
    text = cmp.render_markdown(cmp.compare(SUITE, tmp_path, ["bad", "good"], resamples=500))
    assert "| bad | good | siim_seg | 1% | Dice ↑ |" in text and "| **-20.0** |" in text


def test_too_few_resamples_for_the_rows_is_said(tmp_path) -> None:
    """2/(B + 1) times the rows must stay below 1 − level, or no row can be significant."""
    assert cmp.resolution_note(2000, 24, 0.95) is None  # 24 · 2/2001 = 0.024
    note = cmp.resolution_note(2000, 252, 0.95)  # the methods suite: 28 pairs × 9 cells
    assert note is not None and "no row can be significant" in note
    assert "--resamples 10,080 or more" in note
    assert cmp.resolution_note(10_080, 252, 0.95) is None
    dice = np.random.default_rng(0).integers(20, 70, 60) / 100
    make_run(tmp_path, "good", 0, seg_arrays(dice + 0.2))
    make_run(tmp_path, "bad", 0, seg_arrays(dice))
    few = cmp.compare(SUITE, tmp_path, ["good", "bad"], resamples=30)  # floor 2/31 > 0.05
    assert not few.rows[0].significant(few.level)
    assert any("no row can be significant" in n for n in few.notes)
    assert "no row can be significant" in cmp.render_markdown(few)
    enough = cmp.compare(SUITE, tmp_path, ["good", "bad"], resamples=500)
    assert enough.rows[0].significant(enough.level) and not enough.notes


def test_the_same_seed_gives_the_same_output_and_another_seed_another(tmp_path) -> None:
    targets, scores = data(60)
    make_run(tmp_path, "a", 0, cls_arrays(scores + targets * 0.3, targets))
    make_run(tmp_path, "a", 1, cls_arrays(scores + targets * 0.2, targets))
    make_run(tmp_path, "b", 0, cls_arrays(scores, targets))
    once = cmp.compare(SUITE, tmp_path, ["a", "b"], resamples=200, bootstrap_seed=5)
    again = cmp.compare(SUITE, tmp_path, ["a", "b"], resamples=200, bootstrap_seed=5)
    other = cmp.compare(SUITE, tmp_path, ["a", "b"], resamples=200, bootstrap_seed=6)
    assert once == again and once.rows[0].low != other.rows[0].low
    assert once.rows[0].delta == other.rows[0].delta  # the point estimate is the tables' Δ
    mean_a = np.mean([read_record(p).value for p in (tmp_path / SUITE / "a").rglob("*.json")])
    assert once.rows[0].mean_a == pytest.approx(mean_a)


# ----------------------------------------------------------------------------- the command


def test_cli_prints_markdown_csv_and_json(tmp_path, capsys) -> None:
    targets, scores = data()
    make_run(tmp_path, "convirt", 0, cls_arrays(scores + targets * 0.5, targets))
    make_run(tmp_path, "random_init", 0, cls_arrays(scores, targets))
    base = ["compare", "--suite", SUITE, "--runs", str(tmp_path), "--resamples", "200"]
    assert main([*base, "--method", "convirt", "--method", "random_init"]) == 0
    out = capsys.readouterr().out
    assert "| convirt | random_init | rsna_cls | 1% | AUROC ↑ |" in out
    assert "95% CI" in out and "Holm-adjusted over the 1 rows" in out
    assert main([*base, "--format", "json"]) == 0
    [row] = json.loads(capsys.readouterr().out)["rows"]
    assert row["method_a"] == "convirt" and row["low"] <= row["delta"] <= row["high"]
    assert main([*base, "--format", "csv", "--seeds", "fixed"]) == 0
    header, line = capsys.readouterr().out.splitlines()
    assert header.startswith("method_a,method_b,task,fraction,metric") and "convirt" in line


def test_runs_on_other_splits_images_or_labels_are_refused_naming_the_file(tmp_path, capsys):
    targets, scores = data()
    make_run(tmp_path, "a", 0, cls_arrays(scores, targets))
    other = make_run(tmp_path, "b", 0, cls_arrays(scores, targets), split_hash="split-2")
    args = ["compare", "--suite", SUITE, "--runs", str(tmp_path), "--resamples", "50"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{other / 'result.json'}: split_hash split-2, but " in err and "split-1" in err
    make_run(tmp_path, "b", 0, cls_arrays(scores[:-1], targets[:-1]))  # one image fewer
    with pytest.raises(CxrbenchError, match=r"predictions\.npz: its 79 test images are not"):
        cmp.compare(SUITE, tmp_path, resamples=50)
    make_run(tmp_path, "b", 0, cls_arrays(scores, 1 - targets))
    with pytest.raises(CxrbenchError, match="labels of its test images differ"):
        cmp.compare(SUITE, tmp_path, resamples=50)
    make_run(tmp_path, "b", 0, cls_arrays(scores, targets), task_version=2)
    with pytest.raises(CxrbenchError, match="task_version 2, but"):
        cmp.compare(SUITE, tmp_path, resamples=50)


def test_missing_or_changed_predictions_and_unknown_metrics_are_refused(tmp_path) -> None:
    targets, scores = data()
    make_run(tmp_path, "a", 0, cls_arrays(scores, targets))
    b = make_run(tmp_path, "b", 0, cls_arrays(scores, targets))
    with pytest.raises(CxrbenchError, match="dice is not available for rsna_cls"):
        cmp.compare(SUITE, tmp_path, metric="test/dice", resamples=50)
    with pytest.raises(CxrbenchError, match="no runs of nope"):
        cmp.compare(SUITE, tmp_path, ["a", "nope"], resamples=50)
    (b / "predictions.npz").write_bytes(encode(cls_arrays(scores[::-1], targets)))
    with pytest.raises(CxrbenchError, match=r"predictions\.npz: its sha256 is not the one"):
        cmp.compare(SUITE, tmp_path, resamples=50)
    record = read_record(b / "result.json").to_dict()
    del record["predictions_sha256"]  # a record written before predictions were kept
    record["schema_version"] = 1
    (b / "result.json").write_text(json.dumps(record))
    assert read_record(b / "result.json").predictions_sha256 == ""  # old records still load
    with pytest.raises(CxrbenchError, match=re.escape(f"{b / 'result.json'}: the run kept no")):
        cmp.compare(SUITE, tmp_path, resamples=50)


def test_predictions_in_another_order_are_aligned_by_id(tmp_path) -> None:
    targets, scores = data()
    make_run(tmp_path, "a", 0, cls_arrays(scores + targets, targets))
    make_run(tmp_path, "b", 0, cls_arrays(scores, targets))
    before = cmp.compare(SUITE, tmp_path, resamples=100)
    order = np.random.default_rng(0).permutation(len(scores))
    ids = [f"img{i:03d}" for i in order]
    make_run(tmp_path, "b", 0, cls_arrays(scores[order], targets[order], ids))
    assert cmp.compare(SUITE, tmp_path, resamples=100) == before
    assert encode(cls_arrays(scores, targets)) == encode(cls_arrays(scores, targets))


# ------------------------------------------------------------------------- table --ci


def test_table_with_intervals_bolds_the_top_group(tmp_path) -> None:
    from cxrbench.report.tables import write_suite_tables
    from cxrbench.suite import Suite

    targets, scores = data(120)
    noise = np.random.default_rng(1).normal(0, 0.01, len(scores))
    for seed in (0, 1):
        make_run(tmp_path, "mgca", seed, cls_arrays(scores + targets * 0.6, targets))
        make_run(tmp_path, "gloria", seed, cls_arrays(scores + targets * 0.6 + noise, targets))
        make_run(tmp_path, "random_init", seed, cls_arrays(scores + targets * 0.05 * seed, targets))
    suite = Suite(name=SUITE, methods=["random_init", "gloria", "mgca"], tasks=["rsna_cls"],
                  fractions=[0.01], seeds=[0, 1])  # fmt: skip
    intervals = cmp.suite_intervals(suite, tmp_path)  # as the table: 2,000 resamples
    assert {m for (m, _, _), iv in intervals.items() if iv.top} == {"mgca", "gloria"}
    for iv in intervals.values():
        assert iv.low <= iv.high
    (_, md), (_, tex), (_, csv) = write_suite_tables(
        suite, tmp_path, tmp_path / "tables", ["md", "tex", "csv"], command="t", ci=True
    )
    good = intervals[("mgca", "rsna_cls", 0.01)]
    mean = np.mean([read_record(p).value for p in (tmp_path / SUITE / "mgca").rglob("*.json")])
    assert f"| **{mean * 100:.1f} [{good.low * 100:.1f}, {good.high * 100:.1f}]** |" in md
    assert "| random_init | " in md and "| random_init | **" not in md and " ± " not in md
    assert "not significantly different from it" in md
    assert (
        rf"\textbf{{{mean * 100:.1f}}}$_{{[{good.low * 100:.1f}, {good.high * 100:.1f}]}}$" in tex
    )
    assert csv.splitlines()[0].endswith(",ci_low,ci_high") and r"p $\geq$ 0.05" in tex
    suite_file = tmp_path / "s.yaml"
    suite_file.write_text(f"name: {SUITE}\nmethods: [random_init, mgca]\ntasks: [rsna_cls]\n"
                          "fractions: [0.01]\nseeds: [0, 1]\n")  # fmt: skip
    out = tmp_path / "out"
    argv = ["table", "--suite", str(suite_file), "--runs", str(tmp_path), "--out", str(out), "--ci"]
    assert main(argv) == 0
    text = (out / f"{SUITE}.md").read_text()
    assert f"--out {out} --ci · cxrbench" in text.splitlines()[0]
    assert f"| mgca | **{mean * 100:.1f} [" in text


def test_the_suite_metric_choice_is_the_default_metric(tmp_path) -> None:
    """A suite's ``metrics: {covidx_cls: auroc}`` makes compare (like the tables) read AUROC
    where the task's own metric is accuracy; --metric still chooses."""
    rng = np.random.default_rng(0)
    labels = np.eye(3)[np.r_[0, 1, 2, rng.integers(0, 3, 57)]]
    for method, signal in (("mgca", 0.5), ("random_init", 0.0)):
        arrays = {**cls_arrays(np.zeros(60), np.zeros(60)), "task": "covidx_cls",
                  "label_kind": "multiclass", "classes": ["a", "b", "c"], "targets": labels,
                  "scores": (labels * signal + rng.random((60, 3))).astype(np.float32)}  # fmt: skip
        make_run(tmp_path, method, 0, arrays, metric="test/accuracy")
    suite = tmp_path / "s.yaml"
    suite.write_text(f"name: {SUITE}\nmethods: [mgca, random_init]\ntasks: [covidx_cls]\n"
                     "fractions: [0.01]\nseeds: [0]\nmetrics: {covidx_cls: auroc}\n")  # fmt: skip
    assert cmp.compare(str(suite), tmp_path, resamples=50).rows[0].metric == "auroc"
    assert cmp.compare(SUITE, tmp_path, resamples=50).rows[0].metric == "accuracy"
    row = cmp.compare(str(suite), tmp_path, metric="accuracy", resamples=50).rows[0]
    assert row.metric == "accuracy" and not row.stratified
