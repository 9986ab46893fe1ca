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
PREDICTIONS_FILE = "predictions.npz"  # its test-set predictions (cxrbench.predictions), before it
ENCODER_DIR = "encoder"  # a pre-training run's artifact folder
META_FILE = "encoder.json"  # the artifact's metadata, written last
ERROR_FILE = "error.txt"  # traceback, config hash and command of a failed job
LAST_CHECKPOINT = "checkpoints/last.ckpt"  # where an interrupted run resumes from
STAGES = ("pretrain", "transfer")


def has_progress(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds anything a run made that a rerun would reuse: a checkpoint,
    the encoder artifact or the result. A folder without any (its run failed before saving)
    may be taken over by a run with another config."""
    run_dir = Path(run_dir)
    checkpoints = run_dir / "checkpoints"
    saved = checkpoints.is_dir() and any(checkpoints.glob("*.ckpt"))
    return saved or (run_dir / ENCODER_DIR).exists() or (run_dir / RESULT_FILE).is_file()


def finished(stage: str, run_dir: Path) -> bool:
    """Whether the run of ``stage`` in ``run_dir`` has finished."""
    if stage == "pretrain":
        return (Path(run_dir) / ENCODER_DIR / META_FILE).is_file()
    if stage == "transfer":
        return (Path(run_dir) / RESULT_FILE).is_file()
    raise ValueError(f"stage is one of {STAGES}, got {stage!r}")


def reopen(run_dir: Path) -> None:
    """Called when a run folder is opened to start or resume its run: removes the temporary
    files that writes killed mid-way left in it (and in its sub-folders). (The resume point is
    checked by :func:`cxrbench.runner.checkpoints.resume_point`: one that does not load is set
    aside and the run starts over.)"""
    from cxrbench.utils.io import remove_orphan_temps

    remove_orphan_temps(Path(run_dir))
