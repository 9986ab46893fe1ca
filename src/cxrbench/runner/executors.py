"""The SLURM executor: a resolved plan submitted through submitit, pre-training before transfer.

:func:`group_jobs` cuts a plan into submissions: one job per pre-training, then one job array per
(pre-training, task kind) holding that encoder's transfer runs (they share the encoder and the
resources of ``resources.transfer[_<kind>]``). :func:`submit_plan` submits them; an array waits
for the job of the encoder it needs (``--dependency=afterok:<job id>``, with
``--kill-on-invalid-dep=yes`` so a failed pre-training cancels its transfers instead of leaving
them pending forever). Finished runs are not submitted: a pre-training whose artifact exists has
no job (its arrays no dependency), a transfer whose ``result.json`` exists is left out (with
``force`` its folder is deleted at submission and it is submitted again).

A job calls :func:`~cxrbench.runner.execute.pretrain_job` or
:func:`~cxrbench.runner.execute.transfer_job` with its resolved, picklable
:class:`~cxrbench.runner.resolve.Job`, so a SLURM job runs exactly what the local executor runs,
and nothing is submitted while the plan has a problem. A pre-training job with more than one GPU
runs one task per GPU (``tasks_per_node = gpus_per_node``) and its config has
``trainer.devices``/``num_nodes``/``strategy=ddp`` (:func:`~cxrbench.runner.resolve.
pretrain_overrides`), which Lightning's SLURM environment turns into DDP over the tasks. Jobs are
:class:`Requeueable`: at the time limit submitit requeues them and the rerun resumes from
``last.ckpt``. :class:`SubmititBackend` is the one seam to submitit (tests swap in its debug
cluster and record the parameters of every submission).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

from cxrbench.errors import CxrbenchError
from cxrbench.report.store import read_record
from cxrbench.runner.execute import Outcome, pretrain_job, reason, transfer_job
from cxrbench.runner.resolve import Job, PretrainJob, ResolvedPlan
from cxrbench.runs import RESULT_FILE
from cxrbench.suite import Resources, Suite

log = logging.getLogger(__name__)


@dataclass
class JobGroup:
    """One submission: a pre-training job, or the transfer array of one encoder and task kind."""

    stage: str  # "pretrain" or "transfer"
    label: str  # "mgca/pretrain/s0" or "mgca/pretrain/s0 > classification"
    resources: Resources
    pretrain: str  # key of the encoder this group makes or needs
    pending: list[Job] = field(default_factory=list)  # jobs to run
    finished: list[Job] = field(default_factory=list)  # jobs whose result is there

    @property
    def tasks_per_node(self) -> int:  # DDP: one task per GPU
        return max(self.resources.gpus_per_node or 0, 1) if self.stage == "pretrain" else 1


def group_jobs(plan: ResolvedPlan, force: bool = False) -> list[JobGroup]:
    """The plan's submissions in dependency order (every pre-training before any transfer)."""
    groups = []
    for job in plan.pretrain:
        group = JobGroup("pretrain", job.key, job.resources, job.key)
        (group.finished if job.finished else group.pending).append(job)
        groups.append(group)
    arrays: dict[tuple[str, str], JobGroup] = {}
    for job in plan.transfer:
        assert job.depends_on is not None and job.kind is not None
        if (job.depends_on, job.kind) not in arrays:
            label = f"{job.depends_on} > {job.kind}"
            arrays[(job.depends_on, job.kind)] = JobGroup("transfer", label, job.resources,
                                                          job.depends_on)  # fmt: skip
        array = arrays[(job.depends_on, job.kind)]
        done = not force and job.finished
        (array.finished if done else array.pending).append(job)
    return groups + list(arrays.values())


class Requeueable(submitit.helpers.Checkpointable):
    """A job function that submitit requeues at SLURM's time limit (the rerun resumes from the
    run's ``last.ckpt``); pickled by reference, so ``fn`` must be a top-level function."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


class SubmititBackend:
    """Submits job groups with submitit: a fresh executor per group, so the parameters of one
    group (its dependency above all) never leak into the next."""

    def __init__(self, folder: Path, cluster: str = "slurm") -> None:
        if cluster == "slurm" and shutil.which("sbatch") is None:
            raise CxrbenchError(
                "--executor slurm needs SLURM's sbatch on PATH (submit from a login node)"
            )
        self.folder = Path(folder)
        self.cluster = cluster

    def submit(
        self, fn: Callable[..., Any], calls: Sequence[tuple], params: dict[str, Any]
    ) -> list[Any]:
        """One job per call; several calls go in one job array (``executor.batch()``)."""
        executor = submitit.AutoExecutor(folder=self.folder / "%j", cluster=self.cluster)
        executor.update_parameters(**params)
        if len(calls) == 1:
            return [executor.submit(fn, *calls[0])]
        with executor.batch():
            jobs = [executor.submit(fn, *args) for args in calls]
        return jobs


def job_parameters(suite: Suite, group: JobGroup, after: str | None) -> dict[str, Any]:
    """submitit's ``update_parameters`` for a group; ``after``: the job id it waits for."""
    r, s = group.resources, suite.slurm
    extra: dict[str, Any] = dict(s.additional)
    if after:
        extra["kill-on-invalid-dep"] = "yes"
    params = {
        "name": f"cxrbench-{suite.name}-{group.label.replace('/', '-').replace(' > ', '-')}",
        "nodes": r.nodes,
        "tasks_per_node": group.tasks_per_node,
        "gpus_per_node": r.gpus_per_node or None,  # 0: ask for none
        "cpus_per_task": r.cpus_per_task,
        "mem_gb": r.mem_gb,
        "timeout_min": r.timeout_min,
        "slurm_partition": r.partition,
        "slurm_account": s.account,
        "slurm_qos": s.qos,
        "slurm_array_parallelism": s.array_parallelism,
        "slurm_setup": list(s.setup) or None,
        "slurm_additional_parameters": extra or None,
        "slurm_dependency": f"afterok:{after}" if after else None,
    }
    return {k: v for k, v in params.items() if v is not None}


@dataclass
class Submission:
    """The submitted jobs (submitit ``Job`` objects) and the runs that were already finished."""

    folder: Path
    pretrain: dict[str, tuple[Job, Any]] = field(default_factory=dict)  # key -> (job, submitit)
    transfer: list[tuple[Job, Any]] = field(default_factory=list)
    finished: list[Path] = field(default_factory=list)  # result.json of finished transfers
    lines: list[str] = field(default_factory=list)  # one per submission, for the user

    def summary(self) -> str:
        head = (
            f"submitted {len(self.pretrain)} pre-training jobs and {len(self.transfer)} transfer "
            f"runs; {len(self.finished)} finished runs not resubmitted; logs in {self.folder}"
        )
        return "\n".join([head, *self.lines])

    def wait(self) -> Outcome:
        """Wait for every job (the debug cluster runs them here, in submission order) and
        collect the records, finished runs included; failures are isolated as locally."""
        outcome = Outcome(skipped=len(self.finished))
        outcome.records += [read_record(p) for p in self.finished]
        failed: set[str] = set()
        for key, (job, submitted) in self.pretrain.items():
            err = _exception(submitted)
            if err is not None:
                failed.add(key)
                outcome.failures.append((key, reason(job, err)))
        for job, submitted in self.transfer:
            if job.depends_on in failed:
                submitted.cancel(check=False)  # SLURM has cancelled it already
                outcome.failures.append((job.key, f"its encoder {job.depends_on} failed"))
                continue
            err = _exception(submitted)
            if err is not None:
                outcome.failures.append((job.key, reason(job, err)))
            else:
                outcome.records.append(submitted.result())
        return outcome


def _exception(job: Any) -> BaseException | None:
    try:
        err: BaseException | None = job.exception()
    except submitit.core.utils.UncompletedJobError as incomplete:  # cancelled, timed out
        return incomplete
    return err


def submit_plan(
    plan: ResolvedPlan, force: bool = False, backend: SubmititBackend | None = None
) -> Submission:
    """Submit the unfinished jobs of ``plan``; a plan with problems submits nothing, so a bad
    config fails here and not on a node hours later. Resolve it with ``progress=False``: no
    progress bars in log files."""
    plan.check("nothing submitted")
    text = text_model_problems(plan)
    if text:
        raise CxrbenchError("nothing submitted: " + text)
    suite = plan.suite
    default = plan.out.parent / "slurm" / suite.name
    folder = Path(suite.slurm.folder) if suite.slurm.folder else default
    backend = backend or SubmititBackend(folder)
    sub = Submission(backend.folder)
    ids: dict[str, str] = {}
    for group in group_jobs(plan, force):
        if group.stage == "transfer":
            sub.finished += [job.run_dir / RESULT_FILE for job in group.finished]
        if not group.pending:
            continue
        after = ids.get(group.pretrain) if group.stage == "transfer" else None
        params = job_parameters(suite, group, after)
        if group.stage == "pretrain":
            [job] = group.pending
            [submitted] = backend.submit(Requeueable(pretrain_job), [(job,)], params)
            sub.pretrain[job.key] = (job, submitted)
            ids[job.key] = str(submitted.job_id)
            sub.lines.append(f"  {group.label}: job {submitted.job_id}")
            continue
        if force:  # deleted here, not in the job: a requeued job must resume, not restart
            for job in group.pending:
                shutil.rmtree(job.run_dir, ignore_errors=True)
        jobs = backend.submit(Requeueable(transfer_job), [(j,) for j in group.pending], params)
        sub.transfer += list(zip(group.pending, jobs, strict=True))
        wait = f" after {after}" if after else ""
        sub.lines.append(f"  {group.label}: {len(jobs)} runs, jobs {_id_range(jobs)}{wait}")
    return sub


def _id_range(jobs: list[Any]) -> str:
    first, last = str(jobs[0].job_id), str(jobs[-1].job_id)
    return first if first == last else f"{first}..{last}"


def auto_text_jobs(plan: ResolvedPlan) -> list[Job]:
    """Unfinished pre-trainings that train the corpus text model themselves (``text.model`` is
    ``auto`` and it is not there yet): run at once on a cluster, they would race to write it."""
    from cxrbench.methods import METHODS

    found = []
    for job in plan.pretrain:
        assert isinstance(job.config, PretrainJob)
        needs = METHODS.get(job.method).needs_text and job.config.cfg.text.model == "auto"
        if needs and not job.finished:
            found.append(job)
    return found


def text_model_problems(plan: ResolvedPlan) -> str | None:
    """Several pre-training jobs that would train the same corpus text model at once (it is
    read from the data root's MIMIC folder of the job's own config, overrides included)."""
    from cxrbench.data.roots import dataset_folder
    from cxrbench.models.text_corpus import mimic_folder, read_summary

    jobs = auto_text_jobs(plan)
    if len(jobs) < 2:
        return None
    config = jobs[0].config
    assert isinstance(config, PretrainJob)
    text_preset = "tiny" if config.preset == "tiny" else "small"  # as pretrain.resolve_text_model
    mimic = mimic_folder(dataset_folder("mimic", plan.data_root, config.cfg.data))
    folder = mimic / f"cxrbench-text-bert-{text_preset}"  # pretrain_text's default folder
    if read_summary(folder) is not None:
        return None
    return (
        f"{len(jobs)} pre-training jobs would train the corpus text model {folder} at once; "
        f"train it first (cxrbench pretrain-text --data-root {plan.data_root} --preset "
        f"{text_preset}) or give one with --pretrain-set text.model=PATH"
    )
