"""Does the leaderboard gate catch real regressions? Inject them and run `make regress`'s check.

Runs the CI smoke suite (benchmarks/smoke.yaml) clean, then once per injected fault with ConVIRT
re-pre-trained under the fault (random init's runs are copied from the clean run: the fault is in
ConVIRT's code path only), and checks each against the committed baseline
(results/leaderboards/smoke.json). The faults are code bugs, patched into this process, so the
config hash stays the baseline's and the check judges the numbers (a config change would be
"incomparable" instead):

- ``shuffled_pairs``: each image is paired with the next report of its batch (an off-by-one in
  the pairing): the contrastive target is noise;
- ``frozen_encoder``: the image encoder gets no gradient (as with its learning rate at 0); the
  projection heads and the text tower still train.

Usage (from the repository root, with .venv installed; ~4 min a run on 2 CPU cores):

    .venv/bin/python benchmarks/regress_power.py [--out results/runs/power] [--clean RUNS]
        [--fault shuffled_pairs --fault frozen_encoder]

``--clean RUNS`` reuses the runs of a finished `make regress` (results/runs/regress/runs)
instead of running the clean suite again. Ends with one line per run:
``power <run> exit <status> regressed <k>/<n> convirt entries``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from cxrbench.cli import main as cxrbench
from cxrbench.methods.convirt import ConVIRT

SUITE = "benchmarks/smoke.yaml"
FAULTS = ("shuffled_pairs", "frozen_encoder")


def _shuffled_pairs_embed(self: ConVIRT, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    texts = list(batch["text"])
    return ORIGINAL_EMBED(self, {**batch, "text": texts[1:] + texts[:1]})


def _frozen_encoder_embed(self: ConVIRT, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    assert self.text is not None
    image = batch["image"]
    with torch.no_grad():
        pooled = self.backbone(image).pooled
    tokens = {k: v.to(image.device) for k, v in self.text.tokenize(batch["text"]).items()}
    text = self.text(tokens["input_ids"], tokens["attention_mask"]).cls
    return self.image_proj(pooled), self.text_proj(text)


ORIGINAL_EMBED = ConVIRT.embed
PATCHES = {"shuffled_pairs": _shuffled_pairs_embed, "frozen_encoder": _frozen_encoder_embed}


@contextlib.contextmanager
def injected(fault: str | None) -> Iterator[None]:
    if fault is None:
        yield
        return
    ConVIRT.embed = PATCHES[fault]  # type: ignore[method-assign]
    try:
        yield
    finally:
        ConVIRT.embed = ORIGINAL_EMBED  # type: ignore[method-assign]


def check(runs: Path) -> tuple[int, str]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        status = cxrbench(["leaderboard", "check", "--suite", SUITE, "--runs", str(runs)])
    return status, buffer.getvalue()


def regressed(report: str, method: str = "convirt") -> tuple[int, int]:
    rows = [line.split() for line in report.splitlines()[1:] if line.split()[1:2] == [method]]
    return sum(r[0] == "regressed" for r in rows), len(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results/runs/power", type=Path)
    parser.add_argument("--data-root", default=None, type=Path, help="default: OUT/synth-ci")
    parser.add_argument("--clean", default=None, type=Path, help="runs of a finished make regress")
    parser.add_argument("--fault", action="append", choices=FAULTS, help="default: all")
    args = parser.parse_args()
    data = args.data_root or args.out / "synth-ci"
    if not (data / "mimic-cxr-jpg").is_dir():
        cxrbench(["data", "synth", "--out", str(data), "--preset", "ci", "--no-progress"])
    bench = ["bench", "--suite", SUITE, "--data-root", str(data), "--no-progress"]
    clean = args.clean or args.out / "clean"
    if args.clean is None:
        cxrbench([*bench, "--out", str(clean)])
    summary = []
    status, report = check(clean)
    print(f"== clean\n{report}")
    summary.append(("clean", status, *regressed(report)))
    for fault in args.fault or FAULTS:
        runs = args.out / fault
        shutil.rmtree(runs, ignore_errors=True)
        shutil.copytree(clean / "smoke" / "random_init", runs / "smoke" / "random_init")
        with injected(fault):
            cxrbench([*bench, "--out", str(runs), "--method", "convirt", "--name", "smoke"])
        status, report = check(runs)
        print(f"== {fault}\n{report}")
        summary.append((fault, status, *regressed(report)))
    for name, status, k, n in summary:
        print(f"power {name} exit {status} regressed {k}/{n} convirt entries")
    clean_ok = summary[0][1] == 0
    caught = all(status != 0 and k > 0 for _, status, k, n in summary[1:])
    return 0 if clean_ok and caught else 1


if __name__ == "__main__":
    sys.exit(main())
