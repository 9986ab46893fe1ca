"""Several pre-training seeds in one suite: one encoder per (method, pre-training seed), every
transfer on each, folders keyed by both seeds (a one-seed suite keeps its folder names), the
``pretrain_seed`` shorthand, bad seeds named, and ``bench --pretrain-seed``."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from cxrbench.errors import ConfigError
from cxrbench.report.schema import ResultRecord
from cxrbench.report.suites import planned_grid, planned_runs, spread_words
from cxrbench.runner.bench import suite_from_args
from cxrbench.runner.plan import make_plan, pretrain_dir, transfer_dir
from cxrbench.suite import Suite, load_suite


def test_each_pretraining_seed_has_its_encoder_and_transfers(tmp_path) -> None:
    suite = Suite(name="g", preset="tiny", methods=["convirt", "random_init"], tasks=["rsna_cls"],
                  fractions=[0.1], seeds=[42, 0], pretrain_seeds=[0, 3])  # fmt: skip
    plan = make_plan(suite)
    assert [p.key for p in plan.pretrain] == [
        "convirt/pretrain/s0", "convirt/pretrain/s3",
        "random_init/pretrain/s0", "random_init/pretrain/s3",
    ]  # fmt: skip
    assert len(plan.transfer) == 2 * 2 * 2 and planned_runs(suite) == 4
    paths = {transfer_dir(suite, t, tmp_path).relative_to(tmp_path) for t in plan.transfer}
    assert Path("g/convirt/rsna_cls/f0.1/s42") in paths  # pre-training seed 0: as before
    assert Path("g/convirt/rsna_cls/f0.1/p3/s42") in paths
    assert pretrain_dir(suite, plan.pretrain[1], tmp_path) == tmp_path / "g/convirt/pretrain/s3"
    for t in plan.transfer:
        assert t.pretrain.seed in (0, 3) and t.key.endswith(f"s{t.seed}")
    assert len(planned_grid(suite)) == 8 and ("convirt", "rsna_cls", 0.1, 3, 0) in planned_grid(
        suite
    )


def test_supervised_oracle_per_dataset_and_seed() -> None:
    suite = Suite(methods=["supervised"], tasks=["rsna_cls", "covidx_cls"], pretrain_seeds=[1, 2])
    keys = [p.key for p in make_plan(suite).pretrain]
    assert keys == ["supervised/pretrain-rsna/s1", "supervised/pretrain-covidx/s1",
                    "supervised/pretrain-rsna/s2", "supervised/pretrain-covidx/s2"]  # fmt: skip


def _suite_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nmethods: [convirt]\ntasks: [rsna_cls]\n" + text)
    return path


def test_shorthand_and_errors_name_the_file_and_key(tmp_path) -> None:
    assert load_suite(_suite_file(tmp_path, "pretrain_seed: 4\n")).pretrain_seeds == [4]
    assert load_suite(_suite_file(tmp_path, "")).pretrain_seeds == [0]
    for text, words in (
        ("pretrain_seed: 4\npretrain_seeds: [1, 2]\n", "not both"),
        ("pretrain_seeds: []\n", "at least one seed"),
        ("pretrain_seeds: [1, 1]\n", "listed twice"),
        ("seeds: [-1]\n", ">= 0"),
    ):
        with pytest.raises(ConfigError, match=words) as err:
            load_suite(_suite_file(tmp_path, text))
        assert "s.yaml" in str(err.value)


def test_bench_flag_replaces_the_suites_pretraining_seeds(tmp_path) -> None:
    path = _suite_file(tmp_path, "pretrain_seeds: [0, 1]\n")
    args = argparse.Namespace(suite=str(path), method=None, task=None, fraction=None, seed=None,
                              pretrain_seed=[5, 6, 7], preset=None, data_root=None,
                              no_progress=True, set=None, pretrain_set=None)  # fmt: skip
    suite = suite_from_args(args)
    assert suite.pretrain_seeds == [5, 6, 7] and suite.name == "s"
    args.pretrain_seed = [-2]
    with pytest.raises(ConfigError, match=">= 0"):
        suite_from_args(args)


def test_caption_says_which_pretraining_seeds(tmp_path) -> None:
    suite = Suite(seeds=[42], pretrain_seeds=[0, 1])
    assert spread_words(suite) == (
        "mean ± std over 2 runs: transfer seeds (42) × 2 pre-training seeds (0, 1)"
    )
    one = Suite(seeds=[42, 0, 1])
    assert spread_words(one) == (
        "mean ± std over 3 transfer seeds (42, 0, 1) on pre-training seed 0 "
        "(± leaves out pre-training noise)"
    )
    record = ResultRecord(
        suite="s", method="m", task="t", task_version=1, fraction=1.0, seed=42, pretrain_seed=9,
        metric="x", higher_is_better=True, metrics={"x": 1.0}, config_hash="c", code_version="v",
        encoder_sha256="e", split_hash="s", data_fingerprint="d", probe_mode="cached",
        wall_seconds=1.0, device="cpu", created="2026-12-02T00:00:00",
    )  # fmt: skip
    assert "on pre-training seed 9" in spread_words(one, [record])  # what the records hold


def test_tasks_that_train_nothing_run_once_and_only_with_a_text_side() -> None:
    """Zero-shot and retrieval use no labels: one fraction (1.0) whatever the suite lists, and
    no job for a method without an image–text space (supervised); the tables' grid agrees."""
    suite = Suite(name="z", preset="tiny", methods=["convirt", "supervised"],
                  tasks=["rsna_cls", "chexpert_zeroshot"], fractions=[0.01, 0.1],
                  seeds=[42])  # fmt: skip
    plan = make_plan(suite)
    jobs = {(t.method, t.task, t.fraction) for t in plan.transfer}
    assert jobs == {("convirt", "rsna_cls", 0.01), ("convirt", "rsna_cls", 0.1),
                    ("supervised", "rsna_cls", 0.01), ("supervised", "rsna_cls", 0.1),
                    ("convirt", "chexpert_zeroshot", 1.0)}  # fmt: skip
    grid = planned_grid(suite)
    assert ("convirt", "chexpert_zeroshot", 1.0, 0, 42) in grid
    assert not any(g[:2] == ("supervised", "chexpert_zeroshot") for g in grid)
