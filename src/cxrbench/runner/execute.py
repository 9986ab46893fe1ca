"""Execute a resolved plan here: pre-train what is missing, run every transfer, isolate failures.

The plan comes resolved (:mod:`cxrbench.runner.resolve`): every config merged and validated, and
:func:`execute` refuses a plan with problems before any job runs. Completed runs are skipped,
interrupted ones resume, and a failing job does not stop the others (its dependents are skipped
with the reason). A failed job leaves ``error.txt`` in its run folder (traceback, config hash,
command) and is logged once, with that path. The exit status tells whether everything succeeded.

:func:`pretrain_job` and :func:`transfer_job` are the two job functions: they take one resolved
:class:`~cxrbench.runner.resolve.Job` (picklable) and only execute it, so the SLURM executor
(``executors.py``) runs exactly what this local one runs.
"""

from __future__ import annotations

import logging
import shutil
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from cxrbench.data.features import FeatureCache
from cxrbench.errors import CxrbenchError
from cxrbench.report.schema import ResultRecord
from cxrbench.runner.plan import GIVEN
from cxrbench.runner.pretrain import run_pretrain
from cxrbench.runner.resolve import Job, PretrainJob, ResolvedPlan, TransferJob
from cxrbench.runner.transfer import run_transfer
from cxrbench.runs import META_FILE, finished
from cxrbench.utils.io import atomic_write_text

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Outcome:
    records: list[ResultRecord] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (job key, reason)
    skipped: int = 0

    @property
    def ok(self) -> bool:
        return not self.failures


def pretrain_job(job: Job) -> Path:
    """One pre-training (a finished one returns its artifact): the local executor calls it in
    order, a SLURM job (``executors.py``) calls it on a node."""
    assert isinstance(job.config, PretrainJob) and job.stage == "pretrain"
    config = job.config
    # the image store (data.store) sits beside the feature cache: <out>/../cache/images
    store_root = job.cache_root.parent / "images"
    return _reporting(job, lambda: run_pretrain(config, job.data_root, job.run_dir, store_root))


def transfer_job(job: Job) -> ResultRecord:
    """One transfer run on its pre-training's encoder artifact (a finished run returns its
    record)."""
    assert isinstance(job.config, TransferJob) and job.stage == "transfer"
    assert job.encoder is not None and job.fraction is not None
    config, encoder, fraction = job.config, job.encoder, job.fraction

    given = str(job.depends_on).startswith(GIVEN)  # an encoder the suite names, not pre-trains

    def run() -> ResultRecord:
        if given and not (encoder / META_FILE).is_file():
            raise CxrbenchError(f"{encoder}: no encoder artifact ({META_FILE} is missing)")
        if not given and not finished("pretrain", encoder.parent):
            raise CxrbenchError(f"{encoder}: no encoder artifact; pre-train {job.depends_on} first")
        return run_transfer(config, encoder, job.data_root, fraction=fraction, seed=job.seed,
                            run_dir=job.run_dir, cache=FeatureCache(job.cache_root),
                            suite=job.suite, row=job.method if given else None)  # fmt: skip

    return _reporting(job, run)


def _reporting(job: Job, run: Callable[[], T]) -> T:
    with failure_report(job):
        return run()


@contextmanager
def failure_report(job: Job) -> Iterator[None]:
    """Write ``error.txt`` (traceback, config hash, command) into the job's run folder when the
    body raises; a stale one from an earlier attempt is removed first."""
    job.error_file.unlink(missing_ok=True)
    try:
        yield
    except Exception:
        text = (
            f"job: {job.stage} {job.suite}/{job.key}\nconfig hash: {job.config_hash}\n"
            f"command: {job.command}\n\n{traceback.format_exc()}"
        )
        try:
            atomic_write_text(job.error_file, text)
        except (OSError, CxrbenchError) as err:  # e.g. the full disk the job died of
            log.warning("could not write %s (%s); the job's own error follows", job.error_file, err)
        raise


def reason(job: Job, err: BaseException) -> str:
    """What a failure says: the error in one line and where its traceback is."""
    where = f" (traceback: {job.error_file})" if job.error_file.is_file() else ""
    return f"{type(err).__name__}: {err}{where}"


def execute(plan: ResolvedPlan, force: bool = False) -> Outcome:
    """Run every job of ``plan`` here, in order; ``force`` re-runs finished transfers."""
    plan.check()
    outcome = Outcome()
    failed: dict[str, BaseException] = {}
    for job in plan.pretrain:
        try:
            pretrain_job(job)
        except Exception as err:
            failed[job.key] = err
            outcome.failures.append((job.key, reason(job, err)))
            log.error("pre-training %s failed: %s", job.key, reason(job, err))
    transfers = plan.transfer
    for k, job in enumerate(transfers, 1):
        assert job.depends_on is not None
        if job.depends_on in failed:
            outcome.failures.append((job.key, f"its encoder {job.depends_on} failed"))
            continue
        _transfer(job, f"[{k}/{len(transfers)}]", force, outcome)
    return outcome


def _transfer(job: Job, counter: str, force: bool, outcome: Outcome) -> None:
    if force and job.run_dir.exists():
        shutil.rmtree(job.run_dir)
    done = job.finished
    start = time.perf_counter()
    try:
        record = transfer_job(job)
    except Exception as err:
        outcome.failures.append((job.key, reason(job, err)))
        log.error("%s %s failed: %s", counter, job.key, reason(job, err))
        return
    outcome.records.append(record)
    outcome.skipped += done
    state = "done before" if done else f"{time.perf_counter() - start:.1f} s"
    log.info("%s %s: %s %.4f (%s)", counter, job.key, record.metric, record.value, state)


def log_failures(outcome: Outcome) -> None:
    """Failures that were not logged as they happened (SLURM jobs), one line each."""
    for key, why in outcome.failures:
        log.error("FAILED %s: %s", key, why)
