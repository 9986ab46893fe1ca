"""An imported checkpoint evaluated like a method: `bench --encoder NAME=DIR`, labelled in the
table with the checkpoint's format and sha256."""

from __future__ import annotations

import torch
import torchvision

from cxrbench.cli import main
from cxrbench.report.store import read_record

GRID = ["--preset", "tiny", "--task", "rsna_cls", "--fraction", "0.5", "--seed", "42",
        "--no-progress"]  # fmt: skip


def test_bench_evaluates_an_imported_encoder_as_a_row(synth_tiny, tmp_path, capsys) -> None:
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    enc = tmp_path / "enc"
    assert (
        main(["import", "--from", "torchvision", str(tmp_path / "r18.pth"), "--out", str(enc)]) == 0
    )
    source_sha = capsys.readouterr().out.split("checkpoint sha256 ")[1].split()[0]
    runs = tmp_path / "runs"
    dirs = ["--data-root", str(synth_tiny), "--out", str(runs)]
    assert main(["bench", *GRID, *dirs, "--encoder", f"mine={enc}", "--name", "imp"]) == 0
    table = capsys.readouterr().out
    assert f"mine: imported torchvision checkpoint, sha256 {source_sha[:12]}" in table
    assert "random_init" not in table  # `--encoder` alone: only the given encoder's row
    [result] = runs.glob("imp/mine/rsna_cls/f0.5/s42/result.json")
    record = read_record(result)
    assert record.method == "mine" and 0 <= record.value <= 1
    assert record.extra["encoder_source"] == {"imported": "torchvision",
                                              "checkpoint_sha256": source_sha}  # fmt: skip
    assert not (runs / "imp" / "mine" / "pretrain").exists()  # nothing was pre-trained

    # beside a method; a missing artifact and a method's name are refused before anything runs
    assert main(["bench", *GRID, *dirs, "--encoder", f"x={tmp_path / 'none'}", "--dry-run"]) == 2
    assert "encoders.x: no encoder artifact" in capsys.readouterr().out
    assert main(["bench", *GRID, *dirs, "--encoder", f"convirt={enc}", "--dry-run"]) != 0
    assert "encoders.convirt" in capsys.readouterr().err


def test_the_imported_suite_dry_runs_clean_with_given_encoders(tmp_path, capsys) -> None:
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    enc = tmp_path / "enc"
    assert (
        main(["import", "--from", "torchvision", str(tmp_path / "r18.pth"), "--out", str(enc)]) == 0
    )
    args = ["bench", "--suite", "benchmarks/imported.yaml", "--name", "imported", "--data-root",
            str(tmp_path / "data"), "--out", str(tmp_path / "runs"), "--dry-run"]  # fmt: skip
    assert main([*args, "--encoder", f"r18={enc}", "--executor", "slurm"]) == 0
    out = capsys.readouterr().out
    assert "pretrain: 0 jobs" in out and "transfer: 63 runs in 3 job arrays" in out
    assert "given:r18 > segmentation: 18 to run" in out
    assert main(args) != 0  # no encoder given: no rows
    assert "'methods': needs at least one entry (or an encoder" in capsys.readouterr().err
