"""The data commands end to end on SynthCXR: synth, inspect, splits (every dataset)."""

from __future__ import annotations

import json

import pytest

from cxrbench.cli import main
from cxrbench.data.formats import FOLDERS
from cxrbench.data.splits import load_splits


@pytest.mark.parametrize("dataset", ["mimic", "chexpert", "rsna", "siim", "objectcxr", "covidx"])
def test_inspect_and_splits_on_synth(dataset, synth_tiny, capsys) -> None:
    root = synth_tiny / FOLDERS[dataset]  # the data root or the dataset's own folder
    assert main(["data", "inspect", "--dataset", dataset, "--data-root", str(synth_tiny)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["problems"] == [] and summary["images"] > 0
    assert main(["data", "splits", "--dataset", dataset, "--data-root", str(root)]) == 0
    made = json.loads(capsys.readouterr().out)
    splits = load_splits(dataset, root)
    assert made["split_hash"] == splits.split_hash
    assert len(splits.train) > len(splits.val) > 0 and len(splits.test) > 0
    if dataset == "chexpert":  # official valid.csv frontal rows are the test set
        assert all("/valid/" in i for i in splits.test)
    if dataset == "objectcxr":
        assert all(int(name[:5]) > 8000 for name in splits.test)  # dev.csv


def test_inspect_reports_a_missing_image(synth_tiny, tmp_path, capsys) -> None:
    import shutil

    root = tmp_path / "object-cxr"
    shutil.copytree(synth_tiny / "object-cxr", root)
    victim = sorted((root / "train").glob("*.jpg"))[0]
    victim.unlink()
    assert main(["data", "inspect", "--dataset", "objectcxr", "--root", str(root)]) == 1
    captured = capsys.readouterr()  # the old spelling works and says which one to use
    assert "--root is deprecated, use --data-root" in captured.err
    problems = json.loads(captured.out)["problems"]
    assert any(victim.name in p for p in problems)


def test_synth_command_and_missing_root_error(tmp_path, capsys) -> None:
    assert (
        main(["data", "inspect", "--dataset", "rsna", "--data-root", str(tmp_path / "nope")]) == 2
    )
    err = capsys.readouterr().err
    assert "nope" in err and "datasets/README.md" in err
    assert main(["ls", "datasets"]) == 0
    assert "siim (siim-acr)" in capsys.readouterr().out.splitlines()
    assert main(["ls"]) == 0  # --preset's presets and the SynthCXR presets, each under its name
    lines = capsys.readouterr().out.splitlines()
    assert "presets: tiny, small, paper" in lines
    assert "synth-presets: tiny, small, full, ci" in lines
