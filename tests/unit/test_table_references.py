"""Trivial reference rows under a table's methods (report/references.py, report/tables.py).

Tiny run folders with predictions.npz (written as the runner writes them, test_compare's
``make_run``), then the tables ``cxrbench table`` and ``cxrbench bench`` print: the references
against hand-computed values and against the metric code scoring a trivial prediction, never
bold, ``–`` when the runs kept no predictions."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
from tests.unit.test_compare import SUITE, cls_arrays, make_run

from cxrbench.predictions import Predictions
from cxrbench.report.references import values_from_predictions
from cxrbench.report.schema import ResultRecord
from cxrbench.report.store import read_record, write_record
from cxrbench.report.tables import suite_layout, write_suite_tables
from cxrbench.suite import Suite

# 10 test images, 4 with an empty target mask: the all-empty prediction's per-image Dice is 0.4
TARGET = np.array([0, 120, 0, 80, 50, 0, 200, 0, 60, 30], dtype=np.int64)


def seg_arrays(dice_on_positives: float, empty_pred_on_empty: bool = True) -> dict:
    """A segmentation file on :data:`TARGET`: predicted = target on positives with the given
    Dice; on empty targets an empty prediction (Dice 1) or a 10-pixel false positive (Dice 0)."""
    inter = np.round(TARGET * dice_on_positives).astype(np.int64)
    predicted = TARGET.copy()
    if not empty_pred_on_empty:
        predicted[TARGET == 0] = 10
    total = predicted + TARGET
    dice = np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)
    return {
        "kind": "segmentation", "task": "siim_seg", "ids": [f"img{i:03d}" for i in range(10)],
        "intersection": inter, "predicted": predicted, "target": TARGET.copy(), "dice": dice,
    }  # fmt: skip


def multiclass_arrays(labels: np.ndarray, signal: float, seed: int = 0) -> dict:
    n = len(labels)
    onehot = np.eye(3)[labels]
    scores = onehot * signal + np.random.default_rng(seed).random((n, 3))
    return {**cls_arrays(np.zeros(n), np.zeros(n)), "task": "covidx_cls",
            "label_kind": "multiclass", "classes": ["a", "b", "c"], "targets": onehot,
            "scores": scores.astype(np.float32)}  # fmt: skip


def suite(tasks: list[str], methods: list[str], seeds=(0, 1), **kw) -> Suite:
    return Suite(name=SUITE, methods=methods, tasks=tasks, fractions=[0.01], seeds=list(seeds),
                 **kw)  # fmt: skip


def tables(s: Suite, runs: Path) -> tuple[str, str, str]:
    (_, md), (_, tex), (_, text) = write_suite_tables(
        s, runs, runs / "tables", ["md", "tex", "csv"], command="test"
    )
    return md, tex, text


def row(md: str, label: str) -> str:
    [line] = [ln for ln in md.splitlines() if ln.startswith(f"| {label} |")]
    return line


def seg_runs(runs: Path) -> None:
    # "good" segments the positives well but marks every empty image: below the all-empty Dice
    for seed in (0, 1):
        make_run(runs, "good", seed, seg_arrays(0.6, empty_pred_on_empty=False))
        make_run(runs, "poor", seed, seg_arrays(0.3, empty_pred_on_empty=False))


def test_all_empty_dice_is_the_share_of_empty_test_images(tmp_path) -> None:
    seg_runs(tmp_path)
    share = float(np.mean(TARGET == 0))
    assert share == 0.4  # hand-computed: 4 of 10
    # the metric code scoring an all-empty prediction agrees
    empty = {**seg_arrays(0.0), "intersection": np.zeros(10, np.int64),
             "predicted": np.zeros(10, np.int64)}  # fmt: skip
    scored = Predictions(Path("x"), empty).metrics()
    assert scored["test/dice"] == pytest.approx(share) and scored["test/dice_global"] == 0.0
    assert scored["test/dice_pos"] == 0.0
    assert values_from_predictions(seg_arrays(0.5)) == {"dice": pytest.approx(share)}

    md, tex, text = tables(suite(["siim_seg"], ["good", "poor"]), tmp_path)
    assert row(md, "*all-empty mask*") == "| *all-empty mask* | *40.0* |"
    assert r"\midrule" + "\n" + r"\textit{all-empty mask} & \textit{40.0} \\" in tex
    assert "italic rows: trivial references, never ranked or bold (all-empty mask:" in md
    assert "0 for Dice (positives) and Dice (global)" in md and "– where" not in md
    ref = [r for r in csv.DictReader(text.splitlines()) if r["source"] == "reference"]
    assert [(r["method"], r["metric"], r["mean"], r["best"]) for r in ref] == [
        ("all-empty mask", "dice", "40.000", "0")
    ]

    for metric in ("dice_global", "dice_pos"):
        md, _, _ = tables(suite(["siim_seg"], ["good"], metrics={"siim_seg": metric}), tmp_path)
        assert row(md, "*all-empty mask*") == "| *all-empty mask* | *0.0* |"


def test_reference_rows_are_never_bold_even_above_every_method(tmp_path) -> None:
    seg_runs(tmp_path)
    layout, _ = suite_layout(suite(["siim_seg"], ["good", "poor"]), tmp_path, None, Path("-"))
    [ref] = layout.references
    assert ref.values[0] == pytest.approx(40.0)
    means = {r.method: r.entries[0] for r in layout.rows}
    assert all(e is not None and e.mean < 40.0 for e in means.values())  # both below it
    assert [m for m, e in means.items() if e is not None and e.best] == ["good"]
    assert all(r.method != "all-empty mask" for r in layout.rows)  # not a method: plots skip it
    md, tex, _ = tables(suite(["siim_seg"], ["good", "poor"]), tmp_path)
    assert row(md, "good").startswith("| good | **") and "**" not in row(md, "*all-empty mask*")
    assert r"\textbf" not in next(ln for ln in tex.splitlines() if "all-empty" in ln)


def test_multiclass_accuracy_shows_the_majority_class_rate(tmp_path) -> None:
    labels = np.array([1, 0, 1, 2, 1, 1, 0, 1, 2, 1, 1, 0])  # class 1: 7 of 12
    for seed in (0, 1):
        make_run(tmp_path, "mgca", seed, multiclass_arrays(labels, 0.3, seed),
                 metric="test/accuracy")  # fmt: skip
    md, tex, _ = tables(suite(["covidx_cls"], ["mgca"]), tmp_path)
    assert row(md, "*majority class*") == f"| *majority class* | *{7 / 12 * 100:.1f}* |"
    assert "| *majority class* | *58.3* |" in md
    assert r"\textit{majority class} & \textit{58.3} \\" in tex


def test_auroc_shows_chance_and_detection_shows_zero(tmp_path) -> None:
    targets = np.r_[np.ones(5), np.zeros(15)]
    scores = np.random.default_rng(0).random(20)
    for seed in (0, 1):
        make_run(tmp_path, "convirt", seed, cls_arrays(scores, targets))
    md, tex, _ = tables(suite(["rsna_cls"], ["convirt"]), tmp_path)
    assert row(md, "*chance*") == "| *chance* | *50.0* |"
    assert r"\textit{chance} & \textit{50.0} \\" in tex
    assert "chance: AUROC of uninformative scores (50)" in md


def test_runs_without_predictions_show_a_dash(tmp_path, caplog) -> None:
    labels = np.array([1, 0, 1, 2, 1, 1, 0, 1, 2, 1, 1, 0])
    folders = [
        make_run(tmp_path, "mgca", seed, multiclass_arrays(labels, 0.3, seed),
                 metric="test/accuracy")
        for seed in (0, 1)
    ] + [make_run(tmp_path, "good", seed, seg_arrays(0.9)) for seed in (0, 1)]  # fmt: skip
    for folder in folders:  # as a schema-1 run: no predictions file, no sha256
        record = read_record(folder / "result.json")
        old = {**record.to_dict(), "predictions_sha256": "", "schema_version": 1}
        write_record(folder / "result.json", ResultRecord(**old))
        (folder / "predictions.npz").unlink()
    s = suite(["covidx_cls", "siim_seg", "rsna_det"], ["mgca", "good"])
    md, tex, text = tables(s, tmp_path)
    assert row(md, "*majority class*") == "| *majority class* | – |  |"
    assert row(md, "*all-empty mask*") == "| *all-empty mask* |  | – |"
    assert r"\textit{majority class} & -- &  \\" in tex
    assert "– where it depends on the test set and no run of the column kept its predictions" in md
    assert not [r for r in csv.DictReader(text.splitlines()) if r["source"] == "reference"]

    # one run of the cell with its predictions is enough
    make_run(tmp_path, "mgca", 2, multiclass_arrays(labels, 0.3, 2), metric="test/accuracy")
    md, _, _ = tables(suite(["covidx_cls"], ["mgca"], seeds=[0, 1, 2]), tmp_path)
    assert row(md, "*majority class*") == "| *majority class* | *58.3* |"

    # runs on other test sets: no reference, a warning naming both
    other = np.array([0, 0, 0, 0, 0, 1, 0, 0, 2, 0, 0, 0])  # majority rate 10/12
    make_run(tmp_path, "mgca", 3, multiclass_arrays(other, 0.3, 3), metric="test/accuracy")
    with caplog.at_level(logging.WARNING):
        md, _, _ = tables(suite(["covidx_cls"], ["mgca"], seeds=[0, 1, 2, 3]), tmp_path)
    assert row(md, "*majority class*") == "| *majority class* | – |"
    assert "test sets differ" in caplog.text


def test_bench_prints_the_reference_rows(tmp_path, monkeypatch) -> None:
    """``cxrbench bench``'s table (``runner.bench.table_for``) is the suite table: same rows."""
    from cxrbench.runner.bench import table_for

    monkeypatch.setattr("sys.argv", ["cxrbench", "bench"])
    for seed in (0, 1):
        make_run(tmp_path, "place", seed, seg_arrays(0.9))
    text = table_for(suite(["siim_seg"], ["place"]), tmp_path, tmp_path / "tables")
    assert "| *all-empty mask* | *40.0* |" in text
    assert (tmp_path / "tables" / f"{SUITE}.md").read_text().endswith(text)
