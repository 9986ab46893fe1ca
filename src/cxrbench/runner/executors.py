"""The SLURM executor: a plan submitted through submitit, pre-training before transfer.

:func:`group_jobs` cuts a plan into submissions: one job per pre-training, then one job array per
(pre-training, task kind) holding that encoder's transfer runs (they share the encoder and the
resources of ``resources.transfer[_<kind>]``). :func:`submit_plan` submits them; an array waits
for the job of the encoder it needs (``--dependency=afterok:<job id>``, with
``--kill-on-invalid-dep=yes`` so a failed pre-training cancels its transfers instead of leaving
them pending forever). Finished runs are not submitted: a pre-training whose artifact exists has
no job (its arrays no dependency), a transfer whose ``result.json`` exists is left out (with
``force`` its folder is deleted at submission and it is submitted again).

A job calls :func:`~cxrbench.runner.execute.pretrain_job` or
:func:`~cxrbench.runner.execute.transfer_job` with plain picklable arguments (specs, the suite,
paths), so a SLURM job runs exactly what the local executor runs. A pre-training job with more
than one GPU runs one task per GPU (``tasks_per_node = gpus_per_node``) and its config has
``trainer.devices``/``num_nodes``/``strategy=ddp`` (:func:`~cxrbench.runner.plan.
pretrain_overrides`), which Lightning's SLURM environment turns into DDP over the tasks. Jobs are
:class:`Requeueable`: at the time limit submitit requeues them and the rerun resumes from
``last.ckpt``. :class:`SubmititBackend` is the one seam to submitit (tests swap in its debug
cluster and record the parameters of every submission).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import submitit

from cxrbench.errors import CxrbenchError
from cxrbench.models.artifact import META_FILE
from cxrbench.report.store import read_record
from cxrbench.runner.execute import Outcome, pretrain_job, transfer_job
from cxrbench.runner.plan import (
    Plan,
    PretrainSpec,
    Resources,
    Suite,
    TransferSpec,
    pretrain_dir,
    pretrain_overrides,
    resources_for,
    transfer_dir,
)

log = logging.getLogger(__name__)


@dataclass
class JobGroup:
    """One submission: a pre-training job, or the transfer array of one encoder and task kind."""

    stage: str  # "pretrain" or "transfer"
    label: str  # "mgca/pretrain" or "mgca/pretrain > classification"
    resources: Resources
    pretrain: PretrainSpec  # the encoder this group makes or needs
    pending: list[Any] = field(default_factory=list)  # specs to run
    finished: list[Any] = field(default_factory=list)  # specs whose result is there

    @property
    def tasks_per_node(self) -> int:  # DDP: one task per GPU
        return max(self.resources.gpus_per_node or 0, 1) if self.stage == "pretrain" else 1


def is_finished(suite: Suite, spec: PretrainSpec | TransferSpec, out: Path) -> bool:
    if isinstance(spec, PretrainSpec):
        return (pretrain_dir(suite, spec, out) / "encoder" / META_FILE).is_file()
    return (transfer_dir(suite, spec, out) / "result.json").is_file()


def group_jobs(plan: Plan, out: Path, force: bool = False) -> list[JobGroup]:
    """The plan's submissions in dependency order (every pre-training before any transfer)."""
    from cxrbench.tasks import TASKS

    suite = plan.suite
    groups = []
    for spec in plan.pretrain:
        group = JobGroup("pretrain", spec.key, resources_for(suite, "pretrain", spec.method), spec)
        (group.finished if is_finished(suite, spec, out) else group.pending).append(spec)
        groups.append(group)
    arrays: dict[tuple[str, str], JobGroup] = {}
    for t in plan.transfer:
        kind = TASKS.get(t.task).kind
        if (t.pretrain.key, kind) not in arrays:
            res = resources_for(suite, "transfer", kind)
            label = f"{t.pretrain.key} > {kind}"
            arrays[(t.pretrain.key, kind)] = JobGroup("transfer", label, res, t.pretrain)
        array = arrays[(t.pretrain.key, kind)]
        done = not force and is_finished(suite, t, out)
        (array.finished if done else array.pending).append(t)
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
    pretrain: dict[str, Any] = field(default_factory=dict)  # pre-training key -> job
    transfer: list[tuple[TransferSpec, Any]] = field(default_factory=list)
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
        failed: dict[str, BaseException] = {}
        for key, job in self.pretrain.items():
            err = _exception(job)
            if err is not None:
                failed[key] = err
                outcome.failures.append((key, f"{type(err).__name__}: {err}"))
        for spec, job in self.transfer:
            if spec.pretrain.key in failed:
                job.cancel(check=False)  # SLURM has cancelled it already (kill-on-invalid-dep)
                reason = f"its encoder failed to pre-train: {failed[spec.pretrain.key]}"
                outcome.failures.append((spec.key, reason))
                continue
            err = _exception(job)
            if err is not None:
                outcome.failures.append((spec.key, f"{type(err).__name__}: {err}"))
            else:
                outcome.records.append(job.result())
        return outcome


def _exception(job: Any) -> BaseException | None:
    try:
        err: BaseException | None = job.exception()
    except submitit.core.utils.UncompletedJobError as incomplete:  # cancelled, timed out
        return incomplete
    return err


def submit_plan(
    plan: Plan,
    data_root: Path,
    out: Path,
    cache_root: Path,
    force: bool = False,
    backend: SubmititBackend | None = None,
) -> Submission:
    """Submit the unfinished jobs of ``plan``; every config is validated before the first
    submission, so a bad one fails here and not on a node hours later."""
    problems = config_problems(plan, out)
    if problems:
        raise CxrbenchError("nothing submitted: " + "; ".join(problems))
    _check_text_model(plan, data_root, out)
    suite = plan.suite
    folder = Path(suite.slurm.folder) if suite.slurm.folder else out.parent / "slurm" / suite.name
    backend = backend or SubmititBackend(folder)
    quiet = ["trainer.progress=false"]  # no progress bars in log files (not in any config hash)
    suite = replace(suite, pretrain_overrides=[*suite.pretrain_overrides, *quiet],
                    transfer_overrides=[*suite.transfer_overrides, *quiet])  # fmt: skip
    sub = Submission(backend.folder)
    ids: dict[str, str] = {}
    for group in group_jobs(plan, out, force):
        sub.finished += [transfer_dir(suite, t, out) / "result.json"
                         for t in group.finished if group.stage == "transfer"]  # fmt: skip
        if not group.pending:
            continue
        after = ids.get(group.pretrain.key) if group.stage == "transfer" else None
        params = job_parameters(suite, group, after)
        if group.stage == "pretrain":
            [job] = backend.submit(Requeueable(pretrain_job),
                                   [(group.pretrain, suite, data_root, out)], params)  # fmt: skip
            sub.pretrain[group.pretrain.key] = job
            ids[group.pretrain.key] = str(job.job_id)
            sub.lines.append(f"  {group.label}: job {job.job_id}")
            continue
        if force:  # deleted here, not in the job: a requeued job must resume, not restart
            for t in group.pending:
                shutil.rmtree(transfer_dir(suite, t, out), ignore_errors=True)
        calls = [(t, suite, data_root, out, cache_root) for t in group.pending]
        jobs = backend.submit(Requeueable(transfer_job), calls, params)
        sub.transfer += list(zip(group.pending, jobs, strict=True))
        wait = f" after {after}" if after else ""
        sub.lines.append(f"  {group.label}: {len(jobs)} runs, jobs {_id_range(jobs)}{wait}")
    return sub


def _id_range(jobs: list[Any]) -> str:
    first, last = str(jobs[0].job_id), str(jobs[-1].job_id)
    return first if first == last else f"{first}..{last}"


def auto_text_jobs(plan: Plan, out: Path) -> list[PretrainSpec]:
    """Unfinished pre-trainings that train the corpus text model themselves (``text.model`` is
    ``auto`` and it is not there yet): run at once on a cluster, they would race to write it."""
    from cxrbench.methods import METHODS
    from cxrbench.runner.pretrain import load_config

    found = []
    for spec in plan.pretrain:
        if METHODS.get(spec.method).needs_text and not is_finished(plan.suite, spec, out):
            job = load_config(spec.method, plan.suite.preset, pretrain_overrides(plan.suite, spec))
            if job.cfg.text.model == "auto":
                found.append(spec)
    return found


def _check_text_model(plan: Plan, data_root: Path, out: Path) -> None:
    from cxrbench.data.roots import dataset_folder
    from cxrbench.models.text_corpus import mimic_folder, read_summary
    from cxrbench.runner.pretrain import load_config

    specs = auto_text_jobs(plan, out)
    if len(specs) < 2:
        return
    job = load_config(specs[0].method, plan.suite.preset)
    text_preset = "tiny" if job.preset == "tiny" else "small"  # as pretrain.resolve_text_model
    mimic = mimic_folder(dataset_folder("mimic", data_root, job.cfg.data))
    folder = mimic / f"cxrbench-text-bert-{text_preset}"  # pretrain_text's default folder
    if read_summary(folder) is None:
        raise CxrbenchError(
            f"{len(specs)} pre-training jobs would train the corpus text model {folder} at once; "
            f"train it first (cxrbench pretrain-text --root {data_root} --preset {text_preset}) "
            "or give one with --pretrain-set text.model=PATH"
        )


def config_problems(plan: Plan, out: Path) -> list[str]:
    """What would stop the plan before its first job, without reading data: a config that does
    not validate, or a finished pre-training made with another config than the planned one."""
    from cxrbench.config import load_yaml
    from cxrbench.runner.pretrain import load_config
    from cxrbench.runner.transfer import load_task

    s, problems = plan.suite, []
    for spec in plan.pretrain:
        try:
            job = load_config(spec.method, s.preset, pretrain_overrides(s, spec))
        except CxrbenchError as err:
            problems.append(f"{spec.key}: {err}")
            continue
        stored = pretrain_dir(s, spec, out) / "config.yaml"  # run_pretrain refuses it locally
        found = load_yaml(stored).values.get("config_hash") if stored.is_file() else None
        if found not in (None, job.config_hash):
            problems.append(
                f"{stored.parent}: holds a run with config hash {found}, the plan's is "
                f"{job.config_hash}; use another --out or delete the folder"
            )
    for task in s.tasks:
        for fraction in s.fractions:
            try:
                load_task(task, s.preset, s.transfer_overrides, fraction)
            except CxrbenchError as err:
                problems.append(f"{task} f{fraction:g}: {err}")
    return problems
