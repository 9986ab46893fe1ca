"""A task YAML's ``fractions:`` entry: the protocol's per-fraction values (MGCA's 1% detection lr
and batch) apply to runs at that fraction only, enter the config hash, and a job resolved for one
fraction refuses to run at another."""

from __future__ import annotations

import pytest

from cxrbench.errors import CxrbenchError
from cxrbench.runner.resolve import load_task


def test_fraction_entry_applies_only_at_its_fraction() -> None:
    base = load_task("rsna_det", "paper")
    one = load_task("rsna_det", "paper", fraction=0.01)
    ten = load_task("rsna_det", "paper", fraction=0.1)
    assert (base.cfg.optim.lr, base.cfg.train.batch_size) == (5e-4, 16)
    assert (one.cfg.optim.lr, one.cfg.train.batch_size) == (2e-4, 8)
    assert (ten.cfg.optim.lr, ten.cfg.train.batch_size) == (5e-4, 16)
    assert one.config_hash != ten.config_hash == base.config_hash
    assert load_task("objectcxr_det", "paper", fraction=0.01).cfg.optim.lr == 2.5e-4


def test_set_overrides_still_win_over_the_fraction_entry() -> None:
    job = load_task("rsna_det", "paper", ["optim.lr=1.0e-3"], fraction=0.01)
    assert (job.cfg.optim.lr, job.cfg.train.batch_size) == (1e-3, 8)


def test_a_job_for_one_fraction_refuses_another(tmp_path) -> None:
    from cxrbench.data.features import FeatureCache
    from cxrbench.runner.transfer import run_transfer

    job = load_task("rsna_det", "tiny", fraction=0.01)
    with pytest.raises(CxrbenchError, match=r"fraction=0\.1"):
        run_transfer(job, tmp_path / "encoder", tmp_path, fraction=0.1, seed=0,
                     run_dir=tmp_path / "run", cache=FeatureCache(tmp_path / "c"))  # fmt: skip
