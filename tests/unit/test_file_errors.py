"""Every error about a user's file names it in one line (``<path>: <what failed>: <cause>``);
atomic writes get the umask's mode and leave no orphans; the CLI checks ``--out`` before any
work, writes errors and failure summaries to stderr, and exits with the documented statuses."""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import time
import traceback
from pathlib import Path

import pytest
import torch

from cxrbench import cli
from cxrbench.errors import CxrbenchError, FileError
from cxrbench.models import build_backbone, export_encoder, load_encoder, read_meta
from cxrbench.runs import reopen
from cxrbench.utils import io


class Pwned:
    """Unpickling this runs code: a weights-only load must refuse it."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _one_line(err: BaseException, *parts: object) -> str:
    message = str(err)
    assert "\n" not in message
    for part in parts:
        assert str(part) in message, (part, message)
    return message


def _a_file(tmp_path: Path) -> Path:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder is expected\n")
    return blocker


# ---------------------------------------------------------------- atomic writes


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_writes_get_the_umask_mode_not_0600(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        io.atomic_write_text(tmp_path / "result.json", "{}\n")
    finally:
        os.umask(previous)
    assert (tmp_path / "result.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch) -> None:
    path = tmp_path / "result.json"
    path.write_text("old\n")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io.os, "fsync", full)
    with pytest.raises(FileError) as info:
        io.atomic_write_text(path, "new\n")
    assert _one_line(info.value, path) == f"{path}: cannot write the file: No space left on device"
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_writing_under_a_file_names_the_file_in_the_way(tmp_path: Path) -> None:
    blocker = _a_file(tmp_path)
    for target in (blocker / "x.json", blocker / "sub" / "x.json"):
        with pytest.raises(FileError) as info:
            io.atomic_write_text(target, "{}")
        message = _one_line(info.value, target, "cannot write the file", blocker)
        assert "ot a" in message  # "not a folder" / "Not a directory"


def test_orphans_of_killed_writes_are_removed_when_a_run_folder_reopens(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "encoder").mkdir(parents=True)
    (run / "encoder" / "deep").mkdir()
    old = time.time() - 3600
    orphans = [run / ".result.json.k3j_x9a2.tmp", run / "encoder" / ".encoder.json.ab12cd34.tmp"]
    kept = [
        run / ".config.yaml.0a1b2c3d.tmp",  # written after this process started: in progress
        run / ".hidden",
        run / "notes.tmp",
        run / "encoder" / "deep" / ".x.json.ab12cd34.tmp",  # deeper than a run folder's files
    ]
    for path in orphans + kept:
        path.write_text("partial")
    for path in [*orphans, *kept[1:]]:
        os.utime(path, (old, old))
    reopen(run)
    assert not any(p.exists() for p in orphans)
    assert all(p.exists() for p in kept)
    reopen(tmp_path / "absent")  # a folder not made yet has nothing to clean


# ---------------------------------------------------------------- checkpoints and weights


def _truncated_zip(path: Path) -> Path:
    torch.save({"state_dict": {"w": torch.zeros(64)}, "epoch": 1}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_truncated_checkpoint_names_the_file(tmp_path: Path) -> None:
    path = _truncated_zip(tmp_path / "last.ckpt")
    for mmap in (False, True):
        with pytest.raises(FileError) as info:
            io.load_checkpoint(path, mmap=mmap)
        _one_line(info.value, path, "cannot load the checkpoint", "truncated")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(FileError, match=r"empty\.ckpt: cannot load the checkpoint: truncated"):
        io.load_checkpoint(tmp_path / "empty.ckpt")
    with pytest.raises(FileError, match=r"absent\.ckpt: cannot load the checkpoint: no such file"):
        io.load_checkpoint(tmp_path / "absent.ckpt")


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_code_in_a_checkpoint_is_refused_without_advice_to_unpickle(tmp_path, writer) -> None:
    path = tmp_path / "evil.ckpt"
    if writer == "torch":
        torch.save({"x": Pwned()}, path)
    else:
        path.write_bytes(pickle.dumps({"x": Pwned()}, protocol=2))
    with pytest.raises(FileError) as info:
        io.load_checkpoint(path)
    message = _one_line(info.value, path, "not a weights-only checkpoint")
    assert "never unpickles code" in message
    shown = "".join(traceback.format_exception(info.value))  # what error.txt would hold
    for advice in ("weights_only=False", "set to `False`", "Re-running", "weights only load"):
        assert advice.lower() not in shown.lower(), advice
    if writer == "torch":
        assert "posix.system" in message or "os.system" in message  # what it found


def test_a_run_folder_reopened_loses_its_orphans(tmp_path: Path) -> None:
    from cxrbench.runner.pretrain import run_pretrain
    from cxrbench.runner.resolve import load_config

    run = tmp_path / "run"
    run.mkdir()
    orphan = run / ".text_model.txt.ab12cd34.tmp"
    orphan.write_text("partial")
    os.utime(orphan, (time.time() - 86400, time.time() - 86400))  # before any process start
    run_pretrain(load_config("random_init", "tiny"), tmp_path / "no-data", run)  # reads no data
    assert not orphan.exists()


def test_a_truncated_resume_checkpoint_is_set_aside_naming_it(tmp_path: Path, caplog) -> None:
    from cxrbench.runner.checkpoints import resume_point

    last = _truncated_zip(tmp_path / "last.ckpt")
    assert resume_point(last) is None
    [aside] = list(last.parent.glob("last.ckpt.corrupt-*"))
    assert not last.exists() and str(last) in caplog.text and str(aside) in caplog.text
    assert "weights_only=False" not in caplog.text


def test_weights_files_name_themselves(tmp_path: Path) -> None:
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"\xff" * 8 + b"{}")
    with pytest.raises(FileError) as info:
        build_backbone("tiny", image_size=64, weights=bad)
    _one_line(info.value, bad, "cannot read the weights file", "not a safetensors file")
    evil = tmp_path / "w.bin"
    torch.save({"x": Pwned()}, evil)
    with pytest.raises(FileError) as info:
        build_backbone("tiny", image_size=64, weights=evil)
    assert "weights_only" not in _one_line(info.value, evil, "not a weights-only checkpoint")


# ---------------------------------------------------------------- encoder artifacts


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    model = build_backbone("tiny", image_size=64)
    return export_encoder(model, tmp_path / "enc", method="m", config_hash="h")


def test_a_corrupt_safetensors_file_names_itself(artifact: Path) -> None:
    weights = artifact / "encoder.safetensors"
    weights.write_bytes(weights.read_bytes()[:20])
    meta = read_meta(artifact)
    with pytest.raises(FileError) as info:
        load_encoder(artifact, verify=False)
    _one_line(info.value, weights, "cannot read the encoder weights", "not a safetensors file")
    with pytest.raises(CxrbenchError, match="does not match its record"):  # the digest first
        load_encoder(artifact)
    assert meta == read_meta(artifact)


def _edit(artifact: Path, **changes: object) -> Path:
    path = artifact / "encoder.json"
    meta = read_meta(artifact)
    for key, value in changes.items():
        if key == "name":
            meta["backbone_config"]["name"] = value
        else:
            meta[key] = value
    path.write_text(json.dumps(meta))
    return path


def test_json_naming_another_backbone_names_the_json_and_the_key(artifact: Path) -> None:
    path = _edit(artifact, backbone="resnet18")
    with pytest.raises(CxrbenchError) as info:
        load_encoder(artifact)
    _one_line(info.value, path, "key 'backbone' says 'resnet18'", "'backbone_config.name'")
    path = _edit(artifact, backbone="resnet18", name="resnet18")
    with pytest.raises(CxrbenchError) as info:
        load_encoder(artifact)
    _one_line(info.value, path, "key 'backbone_config'", "width")
    other = export_encoder(build_backbone("tiny", image_size=64, width=8), artifact.parent / "o",
                           method="m", config_hash="h")  # fmt: skip
    (artifact / "encoder.safetensors").write_bytes((other / "encoder.safetensors").read_bytes())
    # the weights swapped for another width's, the JSON (but for its digest) not
    path = _edit(artifact, backbone="tiny", name="tiny", sha256=read_meta(other)["sha256"])
    with pytest.raises(CxrbenchError) as info:
        load_encoder(artifact)
    _one_line(info.value, path, "key 'backbone' says 'tiny'", "encoder.safetensors", "shape")


# ---------------------------------------------------------------- the command line


def test_out_is_checked_before_any_work(tmp_path, monkeypatch, capsys) -> None:
    from cxrbench.runner import bench, pretrain

    def never(*args, **kwargs):
        raise AssertionError("work started before --out was checked")

    monkeypatch.setattr(pretrain, "run_pretrain", never)
    monkeypatch.setattr(bench, "run_bench", never)
    out = _a_file(tmp_path) / "runs"
    args = ["pretrain", "--method", "random_init", "--preset", "tiny", "--data-root",
            str(tmp_path), "--out", str(out)]  # fmt: skip
    assert cli.main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and f"{out}/tiny/random_init/s0: cannot use it as the run" in (
        captured.err
    )
    args = ["bench", "--preset", "tiny", "--method", "random_init", "--task", "rsna_cls",
            "--data-root", str(tmp_path), "--out", str(out)]  # fmt: skip
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cxrbench: error: {out}: cannot use it as the runs folder") and (
        "Traceback" not in err
    )


def test_a_full_out_folder_is_refused_and_nothing_is_created(tmp_path, monkeypatch) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io.os, "fsync", full)
    with pytest.raises(FileError) as info:
        io.check_writable(tmp_path / "a" / "b", "runs folder")
    _one_line(info.value, tmp_path / "a" / "b", "cannot write to the runs folder", "No space")
    monkeypatch.undo()
    io.check_writable(tmp_path / "a" / "b")
    assert list(tmp_path.iterdir()) == []  # neither the folders nor the probe file


def test_bench_failures_and_logs_go_to_stderr(tmp_path, monkeypatch, capsys) -> None:
    from cxrbench.runner import bench
    from cxrbench.runner.execute import Outcome

    def failing(*args, **kwargs) -> Outcome:
        import logging

        logging.getLogger("cxrbench.runner.execute").error("job k failed: why")
        return Outcome(failures=[("k", "why")])

    monkeypatch.setattr(bench, "run_bench", failing)
    args = ["bench", "--preset", "tiny", "--method", "random_init", "--task", "rsna_cls",
            "--data-root", str(tmp_path), "--out", str(tmp_path / "runs")]  # fmt: skip
    assert cli.main(args) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "job k failed: why" in captured.err
    assert "cxrbench: error: 1 job(s) failed" in captured.err


def test_a_failed_leaderboard_check_says_so_on_stderr(monkeypatch, capsys) -> None:
    from cxrbench.report import leaderboard_text

    monkeypatch.setattr(leaderboard_text, "run_check", lambda *a: ("STATUS ... FAILED", 1))
    assert cli.main(["leaderboard", "check", "--suite", "smoke"]) == 1
    out, err = capsys.readouterr()
    assert "FAILED" in out and "cxrbench: error: leaderboard check of smoke failed" in err


def test_an_os_error_no_helper_named_is_one_line(monkeypatch, capsys) -> None:
    def denied(args) -> int:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/data/x.csv")

    monkeypatch.setattr(cli, "cmd_ls", denied)
    assert cli.main(["ls"]) == 2
    assert capsys.readouterr().err == (
        "cxrbench: error: /data/x.csv: Permission denied (-v shows the traceback)\n"
    )
    with pytest.raises(PermissionError):
        cli.main(["-v", "ls"])


def test_ctrl_c_inside_lightning_exits_130(monkeypatch, capsys) -> None:
    """Lightning catches KeyboardInterrupt in fit and calls sys.exit(1); cxrbench says 130."""
    from unittest.mock import MagicMock

    from lightning.pytorch.trainer.call import _call_and_handle_interrupt

    def fit(args) -> int:
        trainer = MagicMock()
        trainer.strategy.launcher = None
        _call_and_handle_interrupt(trainer, lambda: signal.raise_signal(signal.SIGINT))
        return 0

    monkeypatch.setattr(cli, "cmd_ls", fit)
    # a process started in the background by a non-interactive shell inherits SIGINT ignored,
    # and cxrbench (rightly) leaves an ignored SIGINT alone: give this test Python's default
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert cli.main(["ls"]) == 130
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # main put it back
    finally:
        signal.signal(signal.SIGINT, previous)
    assert "cxrbench: interrupted" in capsys.readouterr().err

    def plain_exit(args) -> int:
        raise SystemExit(1)

    monkeypatch.setattr(cli, "cmd_ls", plain_exit)
    with pytest.raises(SystemExit):  # an exit that was no interrupt stays what it was
        cli.main(["ls"])
