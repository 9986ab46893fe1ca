"""Fault injection through the command line, as a hostile user would: one summary line per case.

    python benchmarks/faults/run_faults.py [--work DIR] [--keep]

Each case runs ``cxrbench`` in subprocesses on a synth-tiny corpus (generated into ``--work``,
~10 s) and prints ``case <name>: ok|FAIL  <what was seen>``; the exit status is the number of
failed cases. The fast, in-process versions of these cases are in
``tests/integration/test_faults.py``; this script adds what needs real processes: ``kill -9``
at a mid-epoch checkpoint, two concurrent runs on one folder, and the CLI's exit codes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ENV = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
CLI = [sys.executable, "-m", "cxrbench"]


def cxr(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=ENV, capture_output=True, text=True, **kw)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pretrain_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["pretrain", "--method", "convirt", "--data-root", str(data), "--preset", "tiny",
            "--out", str(out), "--no-progress", "--set", "trainer.checkpoint_every=10",
            "trainer.max_epochs=2", *extra]  # fmt: skip


def case_kill9_mid_epoch(data: Path, work: Path) -> tuple[bool, str]:
    straight = cxr(*pretrain_args(data, work / "straight"))
    if straight.returncode:
        return False, f"uninterrupted run failed: {straight.stderr[-300:]}"
    artifact = Path(straight.stdout.strip().splitlines()[-1])
    out = work / "killed"
    proc = subprocess.Popen([*CLI, *pretrain_args(data, out)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    ckpt, step = None, None
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        found = list(out.rglob("last.ckpt"))
        if found:
            import torch

            try:
                step = int(torch.load(found[0], weights_only=True)["global_step"])
            except Exception:  # being replaced right now
                step = None
            if step is not None and step % 10 == 0 and step > 0:
                ckpt = found[0]
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if ckpt is None:
        return False, "the run finished or never checkpointed before the kill"
    resumed = cxr(*pretrain_args(data, out))
    if resumed.returncode:
        return False, f"resume failed: {resumed.stderr[-300:]}"
    again = Path(resumed.stdout.strip().splitlines()[-1])
    a, b = sha(artifact / "encoder.safetensors"), sha(again / "encoder.safetensors")
    return a == b, f"killed after step {step}; encoder sha256 {b[:8]} vs uninterrupted {a[:8]}"


def bench_args(data: Path, out: Path) -> list[str]:
    return ["bench", "--preset", "tiny", "--method", "random_init", "--task", "chexpert_cls",
            "--fraction", "1.0", "--seed", "0", "--data-root", str(data), "--out", str(out),
            "--no-progress"]  # fmt: skip


def case_concurrent_runs(data: Path, work: Path) -> tuple[bool, str]:
    alone = cxr(*bench_args(data, work / "alone"))
    if alone.returncode:
        return False, f"single run failed: {alone.stderr[-300:]}"
    out = work / "shared"
    procs = [subprocess.Popen([*CLI, *bench_args(data, out)], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    codes = [p.wait() for p in procs]
    errs = [p.stderr.read() if p.stderr else "" for p in procs]
    results = list(out.rglob("result.json"))
    value = lambda p: json.loads(p.read_text())["metrics"]["test/auroc"]  # noqa: E731
    ref = value(next((work / "alone").rglob("result.json")))
    same = len(results) == 1 and value(results[0]) == ref
    waited = any("in use by" in e for e in errs)
    ok = codes == [0, 0] and same
    return ok, (f"exit codes {codes}; {len(results)} result, AUROC "
                f"{value(results[0]) if results else None} vs alone {ref}; "
                f"{'one waited for the other' if waited else 'no wait seen'}")  # fmt: skip


def case_bad_numbers(data: Path, work: Path) -> tuple[bool, str]:
    out = work / "bad"
    bad = cxr(*pretrain_args(data, out, "trainer.max_epochs=-5", "data.batch_size=0"))
    created = out.exists() and any(out.rglob("config.yaml"))
    seed = cxr(*bench_args(data, work / "seed")[:-1], "--seed", "-1", "--dry-run")
    good = cxr(*pretrain_args(data, out, "trainer.max_epochs=1"))
    ok = bad.returncode == 2 and not created and seed.returncode == 2 and good.returncode == 0
    return ok, (f"max_epochs=-5: exit {bad.returncode} ({bad.stderr.strip()[-120:]}); "
                f"config written: {created}; --seed -1 dry run: exit {seed.returncode}; "
                f"corrected rerun: exit {good.returncode}")  # fmt: skip


def case_corrupt_checkpoint(data: Path, work: Path) -> tuple[bool, str]:
    out = work / "corrupt"
    first = cxr(*pretrain_args(data, out, "trainer.max_epochs=1"))
    if first.returncode:
        return False, f"first run failed: {first.stderr[-300:]}"
    run_dir = Path(first.stdout.strip().splitlines()[-1]).parent
    reference = sha(run_dir / "encoder" / "encoder.safetensors")
    shutil.rmtree(run_dir / "encoder")
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])  # a truncated file
    again = cxr(*pretrain_args(data, out, "trainer.max_epochs=1"))
    aside = list(ckpt.parent.glob("last.ckpt.corrupt-*"))
    same = again.returncode == 0 and sha(run_dir / "encoder" / "encoder.safetensors") == reference
    seen = f"rerun exit {again.returncode}; set aside: {[p.name for p in aside]}; same: {same}"
    return same and len(aside) == 1, seen


def case_no_mimic_for_random_init(data: Path, work: Path) -> tuple[bool, str]:
    empty = work / "empty-root"
    empty.mkdir(parents=True, exist_ok=True)
    run = cxr("pretrain", "--method", "random_init", "--data-root", str(empty), "--preset", "tiny",
              "--out", str(work / "ri"), "--no-progress")  # fmt: skip
    return run.returncode == 0, f"exit {run.returncode} {run.stderr.strip()[-160:]}"


def case_full_disk(data: Path, work: Path) -> tuple[bool, str]:
    """A real full disk: ``--out`` on a 40 MB tmpfs (a tiny-preset checkpoint is ~21 MB, and an
    atomic save needs room for the old and the new one), then space freed (the tmpfs remounted
    at 400 MB) and the same command run again. Needs root (mount); skipped otherwise."""
    mnt = work / "mnt"
    mnt.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40M", "tmpfs", str(mnt)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode:
        return True, f"skipped: cannot mount a tmpfs here ({mounted.stderr.strip()})"
    try:
        straight = cxr(*pretrain_args(data, work / "straight"))
        artifact = Path(straight.stdout.strip().splitlines()[-1])
        full = cxr(*pretrain_args(data, mnt / "out"))
        ckpts = sorted(p.name for p in (mnt / "out").rglob("checkpoints/*"))
        subprocess.run(["mount", "-o", "remount,size=400M", str(mnt)], check=True)
        again = cxr(*pretrain_args(data, mnt / "out"))
        if again.returncode:
            return False, f"rerun with space: exit {again.returncode} {again.stderr[-300:]}"
        resumed = Path(again.stdout.strip().splitlines()[-1])
        a, b = sha(artifact / "encoder.safetensors"), sha(resumed / "encoder.safetensors")
        error = (full.stderr.strip().splitlines() or [""])[-1][:160]
        return full.returncode != 0 and a == b, (
            f"full disk: exit {full.returncode} ({error}); left {ckpts}; after freeing space: "
            f"exit 0, encoder sha256 {b[:8]} vs uninterrupted {a[:8]}"
        )
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


CASES: dict[str, Callable[[Path, Path], tuple[bool, str]]] = {
    "kill9_mid_epoch_resume": case_kill9_mid_epoch,
    "concurrent_runs_one_folder": case_concurrent_runs,
    "bad_numbers_then_corrected": case_bad_numbers,
    "corrupt_checkpoint": case_corrupt_checkpoint,
    "random_init_without_mimic": case_no_mimic_for_random_init,
    "full_disk_then_freed": case_full_disk,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--case", action="append", choices=list(CASES))
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="cxrbench-faults-"))
    data = work / "synth-tiny"
    if not data.exists():
        made = cxr("data", "synth", "--out", str(data), "--preset", "tiny", "--no-progress")
        if made.returncode:
            print(made.stderr, file=sys.stderr)
            return 1
    failed = 0
    for name in args.case or list(CASES):
        start = time.perf_counter()
        ok, seen = CASES[name](data, work / name)
        failed += not ok
        took = time.perf_counter() - start
        print(f"case {name}: {'ok' if ok else 'FAIL'}  {seen}  ({took:.0f} s)", flush=True)
    print(f"{len(args.case or CASES) - failed} ok, {failed} failed (work folder {work})")
    return failed


if __name__ == "__main__":
    raise SystemExit(main())
