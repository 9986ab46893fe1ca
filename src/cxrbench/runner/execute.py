"""Execute a plan: pre-train what is missing, run every transfer, isolate failures.

Completed runs are skipped (their ``result.json`` exists), interrupted ones resume, and a failing
run is reported and does not stop the others (its dependents are skipped with the reason). The
exit status tells whether everything succeeded.

:func:`pretrain_job` and :func:`transfer_job` are the two jobs of a plan, with plain picklable
arguments, so the SLURM executor (``executors.py``) runs exactly what this local one runs.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from cxrbench.data.features import FeatureCache
from cxrbench.errors import CxrbenchError
from cxrbench.models.artifact import META_FILE
from cxrbench.report.schema import ResultRecord
from cxrbench.runner.plan import (
    Plan,
    PretrainSpec,
    Suite,
    TransferSpec,
    pretrain_dir,
    pretrain_overrides,
    transfer_dir,
)
from cxrbench.runner.pretrain import load_config, run_pretrain
from cxrbench.runner.transfer import TransferJob, load_task, run_transfer

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    records: list[ResultRecord] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (job key, reason)
    skipped: int = 0

    @property
    def ok(self) -> bool:
        return not self.failures


def pretrain_job(spec: PretrainSpec, suite: Suite, data_root: Path, out: Path) -> Path:
    """One pre-training (a finished one returns its artifact): the local executor calls it in
    order, a SLURM job (``executors.py``) calls it on a node, with the same arguments."""
    job = load_config(spec.method, suite.preset, pretrain_overrides(suite, spec))
    return run_pretrain(job, data_root, pretrain_dir(suite, spec, out))


def transfer_job(
    spec: TransferSpec,
    suite: Suite,
    data_root: Path,
    out: Path,
    cache_root: Path,
    force: bool = False,
    job: TransferJob | None = None,
) -> ResultRecord:
    """One transfer run on its method's encoder artifact (a finished run returns its record;
    ``force`` deletes it first). ``job``: the resolved task config, when the caller has it."""
    artifact = pretrain_dir(suite, spec.pretrain, out) / "encoder"
    if not (artifact / META_FILE).is_file():
        raise CxrbenchError(f"{artifact}: no encoder artifact; pre-train {spec.pretrain.key} first")
    if job is None:
        job = load_task(spec.task, suite.preset, suite.transfer_overrides, spec.fraction)
    run_dir = transfer_dir(suite, spec, out)
    if force and run_dir.exists():
        shutil.rmtree(run_dir)
    return run_transfer(
        job,
        artifact,
        data_root,
        fraction=spec.fraction,
        seed=spec.seed,
        run_dir=run_dir,
        cache=FeatureCache(cache_root),
        suite=suite.name,
    )


def execute(
    plan: Plan, data_root: Path, out: Path, cache_root: Path, force: bool = False
) -> Outcome:
    outcome = Outcome()
    artifacts: dict[str, Path | Exception] = {}
    for spec in plan.pretrain:
        try:
            artifacts[spec.key] = pretrain_job(spec, plan.suite, data_root, out)
        except Exception as err:
            log.error("pre-training %s failed: %s", spec.key, err)
            artifacts[spec.key] = err
            outcome.failures.append((spec.key, f"{type(err).__name__}: {err}"))
    jobs = {  # resolved up front, so a bad task config stops the suite before any run
        (name, fraction): load_task(
            name, plan.suite.preset, plan.suite.transfer_overrides, fraction
        )
        for name in plan.suite.tasks
        for fraction in plan.suite.fractions
    }
    total = len(plan.transfer)
    for k, transfer in enumerate(plan.transfer, 1):
        _transfer(transfer, k, total, plan, jobs, artifacts, data_root, out, cache_root, force,
                  outcome)  # fmt: skip
    return outcome


def _transfer(
    spec: TransferSpec,
    k: int,
    total: int,
    plan: Plan,
    jobs: dict,
    artifacts: dict,
    data_root: Path,
    out: Path,
    cache_root: Path,
    force: bool,
    outcome: Outcome,
) -> None:
    artifact = artifacts[spec.pretrain.key]
    if isinstance(artifact, Exception):
        outcome.failures.append((spec.key, f"its encoder failed to pre-train: {artifact}"))
        return
    done = not force and (transfer_dir(plan.suite, spec, out) / "result.json").is_file()
    start = time.perf_counter()
    try:
        record = transfer_job(spec, plan.suite, data_root, out, cache_root, force,
                              jobs[(spec.task, spec.fraction)])  # fmt: skip
    except Exception as err:
        log.error("[%d/%d] %s failed: %s", k, total, spec.key, err)
        outcome.failures.append((spec.key, f"{type(err).__name__}: {err}"))
        return
    outcome.records.append(record)
    outcome.skipped += done
    state = "done before" if done else f"{time.perf_counter() - start:.1f} s"
    log.info("[%d/%d] %s: %s %.4f (%s)", k, total, spec.key, record.metric, record.value, state)
