"""Splits: stratified, hashed, stable under row order, nested fractions, clear errors."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from cxrbench.data.splits import load_splits, make_splits, splits_dir
from cxrbench.errors import CxrbenchError, DataFormatError


def _write_rsna(root: Path, n: int, n_pos: int, shuffle_seed: int | None = None) -> None:
    """An RSNA stage-2 label file (no images needed for splitting)."""
    rows = []
    for i in range(n):
        pid = f"{i:04d}aaaa-0000-0000-0000-000000000000"
        if i < n_pos:
            rows.append(f"{pid},10,20,30,40,1")
            if i % 3 == 0:  # a second box for some patients: one row per box
                rows.append(f"{pid},50,60,10,10,1")
        else:
            rows.append(f"{pid},,,,,0")
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(rows)
    root.mkdir(parents=True, exist_ok=True)
    (root / "stage_2_train_labels.csv").write_text(
        "patientId,x,y,width,height,Target\n" + "\n".join(rows) + "\n"
    )
    (root / "stage_2_train_images").mkdir(exist_ok=True)


def test_rsna_split_proportions_stratified_and_disjoint(tmp_path) -> None:
    root = tmp_path / "rsna-pneumonia"
    _write_rsna(root, n=1000, n_pos=300)
    s = make_splits("rsna", root)
    assert (len(s.train), len(s.val), len(s.test)) == (600, 200, 200)
    assert not set(s.train) & set(s.val) and not set(s.train) & set(s.test)
    assert not set(s.val) & set(s.test)
    positives = {f"{i:04d}aaaa-0000-0000-0000-000000000000" for i in range(300)}
    # stratified: 30% positives in every part
    for part in (s.train, s.val, s.test):
        assert abs(len(positives & set(part)) / len(part) - 0.3) < 0.01


def test_same_ids_on_a_reshuffled_csv(tmp_path) -> None:
    a, b = tmp_path / "a" / "rsna-pneumonia", tmp_path / "b" / "rsna-pneumonia"
    _write_rsna(a, n=500, n_pos=120)
    _write_rsna(b, n=500, n_pos=120, shuffle_seed=7)
    sa, sb = make_splits("rsna", a), make_splits("rsna", b)
    assert (sa.train, sa.val, sa.test) == (sb.train, sb.val, sb.test)
    assert sa.fraction(0.01) == sb.fraction(0.01)
    assert sa.split_hash == sb.split_hash


def test_fractions_nested_stratified_and_seed_free(tmp_path) -> None:
    root = tmp_path / "rsna-pneumonia"
    _write_rsna(root, n=2000, n_pos=400)
    s = make_splits("rsna", root)
    f1, f10, f100 = (s.fraction(f) for f in (0.01, 0.1, 1.0))
    assert set(f1) < set(f10) < set(f100) == set(s.train)
    assert (len(f1), len(f10)) == (round(0.01 * len(s.train)), round(0.1 * len(s.train)))
    positives = {f"{i:04d}aaaa-0000-0000-0000-000000000000" for i in range(400)}
    assert abs(len(positives & set(f10)) / len(f10) - 0.2) <= 0.01
    assert abs(len(positives & set(f1)) / len(f1) - 0.2) <= 0.1
    # loading again (what every training seed does) gives the very same ids
    assert load_splits("rsna", root).fraction(0.01) == f1


def test_fraction_without_positives_is_an_error(tmp_path) -> None:
    root = tmp_path / "rsna-pneumonia"
    _write_rsna(root, n=1000, n_pos=20)  # 2% positives: 1% of 600 training ids = 6 ids
    splits = make_splits("rsna", root)
    with pytest.raises(CxrbenchError, match=r"fraction 0\.01 .*'positive' with zero positive"):
        splits.fraction(0.01)
    assert len(splits.fraction(0.1)) == 60


def test_stored_files_are_verified_and_reused(tmp_path) -> None:
    root = tmp_path / "rsna-pneumonia"
    _write_rsna(root, n=300, n_pos=100)
    first = make_splits("rsna", root)
    stamp = (splits_dir(root) / "splits.json").stat().st_mtime_ns
    assert make_splits("rsna", root) == first  # reused, not rewritten
    assert (splits_dir(root) / "splits.json").stat().st_mtime_ns == stamp
    with (splits_dir(root) / "val.txt").open("a") as fh:
        fh.write("extra-id\n")
    with pytest.raises(DataFormatError, match=r"val\.txt.*sha256"):
        load_splits("rsna", root)
    assert make_splits("rsna", root, force=True) == first  # remade identically


def test_missing_splits_say_how_to_make_them(tmp_path) -> None:
    with pytest.raises(DataFormatError, match="cxrbench data splits --dataset siim"):
        load_splits("siim", tmp_path / "siim-acr")


def test_val_limit_is_a_fixed_stratified_subset_in_split_order() -> None:
    import numpy as np

    from cxrbench.data.labels import Labelled
    from cxrbench.tasks.base import val_subset

    ids = [f"img{i:03d}" for i in range(100)]
    labels = {i: np.array([1.0 if n % 4 == 0 else 0.0]) for n, i in enumerate(ids)}  # 25 % positive
    labelled = Labelled("multilabel", ("Pneumonia",), {i: Path(i) for i in ids}, labels)
    assert val_subset(ids, labelled, 0) == ids and val_subset(ids, labelled, 100) == ids
    sub = val_subset(ids, labelled, 40)
    assert len(sub) == 40 and sub == [i for i in ids if i in set(sub)]  # split order kept
    assert sum(labels[i][0] for i in sub) == 10  # the split's 25 % positives
    # the ids decide, not their order
    assert val_subset(list(reversed(ids)), labelled, 40) == list(reversed(sub))
    assert set(val_subset(ids, labelled, 20)) <= set(sub)  # nested within a stratum's hash order
    # more positives wanted than negatives exist: the rest comes from the other stratum
    few_neg = {i: np.array([0.0 if n < 3 else 1.0]) for n, i in enumerate(ids)}
    skew = Labelled("multilabel", ("Pneumonia",), {i: Path(i) for i in ids}, few_neg)
    assert len(val_subset(ids, skew, 50)) == 50


def test_val_limit_enters_the_config_hash_only_when_set() -> None:
    from cxrbench.runner.resolve import load_task

    base = load_task("siim_seg", "small")
    assert load_task("siim_seg", "small", ["train.val_limit=0"]).config_hash == base.config_hash
    limited = load_task("siim_seg", "small", ["train.val_limit=200"])
    assert limited.cfg.train.val_limit == 200 and limited.config_hash != base.config_hash
    with pytest.raises(CxrbenchError, match="val_limit"):
        load_task("siim_seg", "small", ["train.val_limit=-1"])
