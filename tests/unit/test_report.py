"""Result records, atomic writes, aggregation over seeds and the generated Markdown table."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from cxrbench.errors import CxrbenchError, FileError
from cxrbench.report.aggregate import aggregate
from cxrbench.report.schema import ResultRecord
from cxrbench.report.store import collect, read_record, write_record
from cxrbench.report.tables import markdown_table


def rec(method: str, fraction: float, seed: int, value: float, **kw) -> ResultRecord:
    base = dict(
        suite="s",
        method=method,
        task="rsna_cls",
        task_version=1,
        fraction=fraction,
        seed=seed,
        pretrain_seed=0,
        metric="test/auroc",
        higher_is_better=True,
        metrics={"test/auroc": value, "val/loss": 0.5},
        config_hash="abc",
        code_version="0.1.0",
        encoder_sha256="e" * 64,
        split_hash="s",
        data_fingerprint="d",
        probe_mode="cached",
        wall_seconds=1.0,
        device="cpu",
        created="2026-11-22T00:00:00",
    )
    base.update(kw)
    return ResultRecord(**base)


def test_round_trip_and_collect(tmp_path) -> None:
    r = rec("convirt", 0.01, 42, 0.7)
    write_record(tmp_path / "a" / "result.json", r)
    assert read_record(tmp_path / "a" / "result.json") == r
    assert collect(tmp_path) == [r]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch) -> None:
    path = tmp_path / "result.json"
    write_record(path, rec("convirt", 0.01, 42, 0.7))

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(FileError, match=r"result\.json.*disk full"):  # names the file
        write_record(path, rec("convirt", 0.01, 42, 0.9))
    assert read_record(path).value == 0.7
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temp file left


def test_missing_key_names_it_and_the_file(tmp_path) -> None:
    data = rec("convirt", 0.01, 42, 0.7).to_dict()
    del data["split_hash"]
    (tmp_path / "result.json").write_text(json.dumps(data))
    with pytest.raises(CxrbenchError, match=r"result\.json.*'split_hash'"):
        read_record(tmp_path / "result.json")


def test_aggregate_mean_std_and_incomplete_cells() -> None:
    values = [0.70, 0.74, 0.75]
    records = [rec("convirt", 0.01, s, v) for s, v in zip((42, 0, 1), values, strict=True)]
    records += [rec("random_init", 0.01, 42, 0.6), rec("random_init", 0.01, 0, 0.62)]
    cells = {c.method: c for c in aggregate(records, planned_seeds=3)}
    assert cells["convirt"].mean == pytest.approx(np.mean(values))
    assert cells["convirt"].std == pytest.approx(np.std(values, ddof=1))
    assert cells["convirt"].complete and not cells["random_init"].complete
    with pytest.raises(CxrbenchError, match="task_version"):
        aggregate([rec("convirt", 0.01, 42, 0.7), rec("convirt", 0.01, 0, 0.7, task_version=2)])


def test_markdown_table_golden() -> None:
    records = [
        rec("convirt", 0.01, 42, 0.70),
        rec("convirt", 0.01, 0, 0.74),
        rec("convirt", 0.1, 42, 0.80),
        rec("convirt", 0.1, 0, 0.82),
        rec("random_init", 0.01, 42, 0.60),
        rec("random_init", 0.1, 42, 0.85),
    ]
    text = markdown_table(
        aggregate(records, planned_seeds=2), title="t", method_order=["random_init", "convirt"]
    )
    expected = (
        "**t**\n\n"
        "metrics: rsna_cls auroc\n\n"
        "| method | rsna_cls 1% | rsna_cls 10% |\n"
        "|---|---|---|\n"
        "| random_init | 60.0 † | **85.0** † |\n"
        "| convirt | **72.0 ± 2.8** | 81.0 ± 1.4 |\n\n"
        "† fewer seeds than planned (random_init rsna_cls 1%: 1/2, random_init rsna_cls 10%: 1/2)\n"
    )
    assert text == expected
