"""What the dense-task perf scripts share (``dense_cache.py``, ``eval_batch.py``): their common
flags, the start-up checks and header line, and the preset's encoder shape with random weights."""

from __future__ import annotations

import argparse
import platform
import resource
import warnings
from pathlib import Path
from typing import Any

import torch

from cxrbench.models.backbones import build_backbone
from cxrbench.runner.resolve import TransferJob, load_config

TASKS = ("siim_seg", "rsna_seg", "rsna_det", "objectcxr_det")


def parser(doc: str, epochs: int) -> argparse.ArgumentParser:
    """``--root --preset --fraction --task --epochs --repeats``; a script adds its own."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=Path("datasets/synth-small"))
    p.add_argument("--preset", default="small")
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--task", action="append", choices=TASKS)
    p.add_argument("--epochs", type=int, default=epochs, help="epochs of the run extrapolated")
    p.add_argument("--repeats", type=int, default=3)
    return p


def start(args: argparse.Namespace) -> None:
    """Refuse a missing corpus, quiet Lightning's outside-a-Trainer warning, print the header."""
    # the systems log from their steps; outside a Trainer Lightning warns once per system
    warnings.filterwarnings("ignore", message=".*self.trainer.* reference is not registered")
    if not args.root.is_dir():
        raise SystemExit(f"{args.root}: no SynthCXR corpus here; run `make data` first")
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
        f"threads; preset {args.preset}, fraction {args.fraction}; median of {args.repeats} rounds"
    )


def preset_encoder(job: TransferJob, preset: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The preset's pre-training backbone (ConVIRT's shape) at the task's input size, random
    weights from seed 0 (timings do not depend on them), and the meta a system reads."""
    backbone = load_config("convirt", preset).cfg.backbone
    torch.manual_seed(0)
    kwargs: dict[str, Any] = {"width": backbone.width} if backbone.width else {}
    encoder = build_backbone(backbone.name, image_size=job.cfg.image.crop, **kwargs)
    return encoder, {"feature_dims": encoder.feature_dims, "sha256": "perf"}


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
