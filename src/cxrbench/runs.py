"""Run folders: the files that say what a run is and whether it finished.

A pre-training run has finished when its encoder artifact's metadata exists (the artifact is
written last); a transfer run when its ``result.json`` exists (written last, atomically). Every
part of cxrbench that asks "is this run finished?" (the executors, the dry run, the job functions)
asks :func:`finished`, so they cannot disagree. A failed job leaves :data:`ERROR_FILE` in its
folder. A run that starts or resumes in a folder first calls :func:`reopen` on it.
"""

from __future__ import annotations

from pathlib import Path

RESULT_FILE = "result.json"  # a transfer run's record
ENCODER_DIR = "encoder"  # a pre-training run's artifact folder
META_FILE = "encoder.json"  # the artifact's metadata, written last
ERROR_FILE = "error.txt"  # traceback, config hash and command of a failed job
LAST_CHECKPOINT = "checkpoints/last.ckpt"  # where an interrupted run resumes from
STAGES = ("pretrain", "transfer")


def finished(stage: str, run_dir: Path) -> bool:
    """Whether the run of ``stage`` in ``run_dir`` has finished."""
    if stage == "pretrain":
        return (Path(run_dir) / ENCODER_DIR / META_FILE).is_file()
    if stage == "transfer":
        return (Path(run_dir) / RESULT_FILE).is_file()
    raise ValueError(f"stage is one of {STAGES}, got {stage!r}")


def reopen(run_dir: Path) -> None:
    """Called when a run folder is opened to start or resume its run: removes the temporary
    files that writes killed mid-way left in it (and in its sub-folders), and checks that the
    resume point ``checkpoints/last.ckpt``, if any, is a whole weights-only checkpoint, so a
    truncated one is named here instead of failing inside Lightning without a path."""
    from cxrbench.errors import FileError
    from cxrbench.utils.io import load_checkpoint, remove_orphan_temps

    run_dir = Path(run_dir)
    remove_orphan_temps(run_dir)
    last = run_dir / LAST_CHECKPOINT
    if last.is_file():
        try:
            load_checkpoint(last, mmap=True)  # tensors are mapped, not read
        except FileError as err:
            hint = "delete it to start the run over (a run killed while saving leaves one)"
            raise FileError(err.path, "cannot resume from the checkpoint", err.cause, hint) from (
                err.__cause__
            )
