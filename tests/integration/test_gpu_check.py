"""``benchmarks/perf/gpu_check.sh --cpu``: the GPU check's CPU smoke run prints its whole table.

The script is what a lent GPU runs in one go, so it must not first fail there: this runs it end
to end at tiny shapes on the session's synth-tiny corpus (no corpus generated) and checks the
exit status and a numeric row per method. Timings are never asserted.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
METHODS = ("convirt", "mgca", "gloria", "mflag")


@pytest.mark.slow
def test_gpu_check_cpu_smoke_prints_a_row_per_method(synth_tiny) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = ["bash", "benchmarks/perf/gpu_check.sh", "--cpu", "--steps", "2",
           "--data-root", str(synth_tiny)]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "| method | pairs/s ours | pairs/s plain | ratio |" in out
    for name in METHODS:
        row = re.search(rf"^\| {name} \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \|", out, re.M)
        assert row, f"no numeric row for {name}:\n{out}"
        assert all(float(x) > 0 for x in row.groups())
    assert re.search(r"^loader pairs/s .*decode [0-9]+", out, re.M), out
