"""Suite names from the command line: a grid made or changed by flags gets its own folder (named
after the grid, or ``--name``), a suite file used as written keeps its name, and the old flag
spellings still parse."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrbench.cli import build_parser
from cxrbench.errors import ConfigError
from cxrbench.runner.bench import suite_from_args

SUITE = "name: s\npreset: small\nmethods: [convirt, random_init]\ntasks: [chexpert_cls]\n"


def _suite(tmp_path: Path, *flags: str):
    path = tmp_path / "s.yaml"
    path.write_text(SUITE)
    return suite_from_args(build_parser().parse_args(["bench", "--suite", str(path), *flags]))


def test_a_suite_file_keeps_its_name_unless_flags_change_its_grid(tmp_path) -> None:
    assert _suite(tmp_path).name == "s"
    assert _suite(tmp_path, "--pretrain-seed", "3", "--no-progress").name == "s"  # same grid
    assert _suite(tmp_path, "--method", "convirt", "--method", "random_init").name == "s"
    place = _suite(tmp_path, "--method", "place", "--task", "siim")
    assert place.name.startswith("small-place-siim_seg-") and place.tasks == ["siim_seg"]
    other = _suite(tmp_path, "--method", "place", "--task", "siim", "--fraction", "0.1")
    assert other.name.startswith("small-place-siim_seg-") and other.name != place.name
    assert _suite(tmp_path, "--preset", "tiny").name.startswith("tiny-convirt+random_init-")
    assert _suite(tmp_path, "--method", "place", "--name", "mine").name == "mine"


def test_narrowing_the_tasks_keeps_the_metric_choices_of_the_tasks_left(tmp_path) -> None:
    path = tmp_path / "dense.yaml"
    path.write_text("name: d\npreset: small\nmethods: [convirt]\ntasks: [siim_seg, rsna_det]\n"
                    "metrics: {siim_seg: dice_global}\n")  # fmt: skip

    def narrowed(*tasks: str):
        flags = [f for t in tasks for f in ("--task", t)]
        return suite_from_args(build_parser().parse_args(["bench", "--suite", str(path), *flags]))

    assert narrowed("rsna_det").metrics == {}  # was: "metrics.siim_seg: not a task of this suite"
    assert narrowed("siim_seg", "rsna_det").metrics == {"siim_seg": "dice_global"}


def test_flag_grids_are_named_after_the_grid(tmp_path) -> None:
    def named(*flags: str) -> str:
        return suite_from_args(build_parser().parse_args(["bench", *flags])).name

    one = named("--preset", "tiny", "--method", "convirt", "--task", "rsna_cls")
    assert one.startswith("tiny-convirt-rsna_cls-")
    assert one == named("--preset", "tiny", "--method", "convirt", "--task", "rsna_cls")
    assert one == named("--preset", "tiny", "--method", "convirt", "--task", "rsna_cls",
                        "--no-progress")  # fmt: skip
    assert one != named("--preset", "tiny", "--method", "convirt", "--task", "rsna_cls",
                        "--set", "train.max_epochs=3")  # fmt: skip
    assert one != named("--preset", "tiny", "--method", "convirt", "--task", "rsna_cls",
                        "--seed", "1")  # fmt: skip


def test_old_flag_spellings_still_parse(capsys) -> None:
    args = build_parser().parse_args(
        ["pretrain", "--method", "convirt", "--root", "d", "--set", "a=1", "--pretrain-set", "b=2"]
    )
    assert args.data_root == "d" and args.set == ["a=1", "b=2"]
    err = capsys.readouterr().err
    assert "--root is deprecated, use --data-root" in err
    assert "--set is deprecated, use --pretrain-set" in err


def test_given_encoders_from_a_suite_file_and_flags(tmp_path) -> None:
    path = tmp_path / "e.yaml"
    path.write_text(SUITE + "encoders: {mgca-r50: /x/mgca}\n")
    args = build_parser().parse_args(["bench", "--suite", str(path)])
    suite = suite_from_args(args)
    assert suite.name == "s" and suite.rows == ["convirt", "random_init", "mgca-r50"]
    more = _suite(tmp_path, "--encoder", "gloria-r50=/x/gloria")
    assert more.rows == ["convirt", "random_init", "gloria-r50"]  # a file's methods stay
    assert more.name.startswith("small-convirt+random_init+gloria-r50-")
    alone = suite_from_args(build_parser().parse_args(["bench", "--encoder", "a=/x"]))
    assert alone.methods == [] and alone.rows == ["a"]
    for bad, why in (("a", "NAME=DIR"), ("Mine=/x", "a row name"), ("convirt=/x", "a row name")):
        with pytest.raises(ConfigError, match=why):
            suite_from_args(build_parser().parse_args(["bench", "--encoder", bad]))
