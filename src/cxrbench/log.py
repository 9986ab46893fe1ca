"""Logging set-up: one handler on stderr, rank-zero only under DDP, never report text."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.logging import RichHandler


class RankZeroFilter(logging.Filter):
    """Drop records from processes whose global rank is not zero (torchrun / SLURM / Lightning)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
            value = os.environ.get(var)
            if value is not None:
                return value == "0"
        return True


def setup_logging(verbose: bool = False) -> None:
    # stderr: stdout holds a command's results (tables, JSON, paths), never its log lines
    handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False,
                          markup=False)  # fmt: skip
    handler.addFilter(RankZeroFilter())
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[handler],
        force=True,
    )
    quiet_libraries()


def quiet_libraries() -> None:
    """Keep Lightning's and transformers' chatter (tips, device banners, load bars) out of runs."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning"):
        lib = logging.getLogger(name)
        lib.handlers.clear()
        lib.setLevel(logging.WARNING)
        lib.propagate = True
    # torch deprecated the LeafSpec check Lightning's pytree helper makes: one line per fit, and
    # nothing a user can act on (it is Lightning's to change)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


@contextmanager
def progress_bar(enabled: bool, *, transient: bool = False) -> Iterator[Any]:
    """A rich progress bar on stderr (stdout may carry a JSON summary), or ``None`` when not
    ``enabled``; ``transient`` removes it when done."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=Console(stderr=True), transient=transient) as bar:
        yield bar
