"""Execute a plan: pre-train what is missing, run every transfer, isolate failures.

Completed runs are skipped (their ``result.json`` exists), interrupted ones resume, and a failing
run is reported and does not stop the others (its dependents are skipped with the reason). The
exit status tells whether everything succeeded.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from cxrbench.data.features import FeatureCache
from cxrbench.report.schema import ResultRecord
from cxrbench.runner.plan import Plan, PretrainSpec, TransferSpec
from cxrbench.runner.pretrain import load_config, run_pretrain
from cxrbench.runner.transfer import load_task, run_transfer

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    records: list[ResultRecord] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (job key, reason)
    skipped: int = 0

    @property
    def ok(self) -> bool:
        return not self.failures


def _pretrain(spec: PretrainSpec, plan: Plan, data_root: Path, out: Path) -> Path:
    s = plan.suite
    overrides = [
        *s.pretrain_overrides,
        *s.method_overrides.get(spec.method, []),
        f"seed={spec.seed}",
    ]
    if spec.dataset:
        overrides.append(f"params.dataset={spec.dataset}")
    job = load_config(spec.method, s.preset, overrides)
    return run_pretrain(job, data_root, out / s.name / spec.key / f"s{spec.seed}")


def execute(
    plan: Plan, data_root: Path, out: Path, cache_root: Path, force: bool = False
) -> Outcome:
    outcome = Outcome()
    artifacts: dict[str, Path | Exception] = {}
    for spec in plan.pretrain:
        try:
            artifacts[spec.key] = _pretrain(spec, plan, data_root, out)
        except Exception as err:
            log.error("pre-training %s failed: %s", spec.key, err)
            artifacts[spec.key] = err
            outcome.failures.append((spec.key, f"{type(err).__name__}: {err}"))
    cache = FeatureCache(cache_root)
    jobs = {  # resolved up front, so a bad task config stops the suite before any run
        (name, fraction): load_task(
            name, plan.suite.preset, plan.suite.transfer_overrides, fraction
        )
        for name in plan.suite.tasks
        for fraction in plan.suite.fractions
    }
    total = len(plan.transfer)
    for k, transfer in enumerate(plan.transfer, 1):
        _transfer(transfer, k, total, plan, jobs, artifacts, data_root, out, cache, force, outcome)
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
    cache: FeatureCache,
    force: bool,
    outcome: Outcome,
) -> None:
    artifact = artifacts[spec.pretrain.key]
    if isinstance(artifact, Exception):
        outcome.failures.append((spec.key, f"its encoder failed to pre-train: {artifact}"))
        return
    run_dir = out / plan.suite.name / spec.key
    if force and run_dir.exists():
        shutil.rmtree(run_dir)
    done = (run_dir / "result.json").is_file()
    start = time.perf_counter()
    try:
        record = run_transfer(
            jobs[(spec.task, spec.fraction)],
            artifact,
            data_root,
            fraction=spec.fraction,
            seed=spec.seed,
            run_dir=run_dir,
            cache=cache,
            suite=plan.suite.name,
        )
    except Exception as err:
        log.error("[%d/%d] %s failed: %s", k, total, spec.key, err)
        outcome.failures.append((spec.key, f"{type(err).__name__}: {err}"))
        return
    outcome.records.append(record)
    outcome.skipped += done
    state = "done before" if done else f"{time.perf_counter() - start:.1f} s"
    log.info("[%d/%d] %s: %s %.4f (%s)", k, total, spec.key, record.metric, record.value, state)
