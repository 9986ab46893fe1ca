"""``cxrbench bench``: suite (file or flags) → resolved plan → data → jobs → records → table.

The suite is resolved first (:func:`~cxrbench.runner.resolve.resolve`): with a problem nothing
is generated, submitted or run. The executor is then ``local`` (:func:`run_bench`: every job in
order on this machine) or ``slurm`` (:func:`submit_bench`: the jobs submitted through submitit,
``executors.py``); :func:`dry_run` prints the plan and its estimated cost without running anything
or reading the data. A job's estimate is, in this order: the median wall time of finished runs
under ``--out`` (pre-trainings of the method and preset, transfers with the same config hash), the
suite's ``estimates:``, or :data:`DEFAULT_HOURS` (each entry says where it was measured). The
table is written by :mod:`cxrbench.report.tables`, the one writer of ``tables/<suite>.md``.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrbench.errors import ConfigError, CxrbenchError
from cxrbench.runner.execute import Outcome, execute
from cxrbench.runner.plan import make_plan
from cxrbench.runner.resolve import SYNTH_PRESETS, Job, ResolvedPlan, data_root_path, resolve
from cxrbench.suite import Suite, check, grid_name, load_suite, normalized

if TYPE_CHECKING:
    from cxrbench.runner.executors import JobGroup, Submission, SubmititBackend

log = logging.getLogger(__name__)
GRID_FLAGS = (
    ("method", "methods"),
    ("task", "tasks"),
    ("fraction", "fractions"),
    ("seed", "seeds"),
)


def suite_from_args(args: Any) -> Suite:
    """The suite file if given, then flags replace its grid (each flag is repeatable). A suite
    made from flags, or a suite file whose grid or preset the flags change, is named after its
    grid (:func:`~cxrbench.suite.grid_name`) unless ``--name`` says otherwise: it never shares
    the suite file's folder. ``--pretrain-seed`` adds seeds to the same grid and keeps the name."""
    suite = load_suite(Path(args.suite), complete=False) if args.suite else Suite()
    changes: dict[str, Any] = {}
    for flag, key in (*GRID_FLAGS, ("pretrain_seed", "pretrain_seeds")):
        values = getattr(args, flag, None)
        if values:
            changes[key] = [resolve_task(v) for v in values] if flag == "task" else list(values)
    if "tasks" in changes:  # the suite's metric choices for the tasks still in the grid
        changes["metrics"] = {t: m for t, m in suite.metrics.items() if t in changes["tasks"]}
    encoders = getattr(args, "encoder", None) or []
    if encoders:
        changes["encoders"] = {**suite.encoders, **dict(_encoder_flag(e) for e in encoders)}
        if not args.suite and not getattr(args, "method", None):
            changes["methods"] = []  # `--encoder` alone: only the given encoders
    if args.preset:
        changes["preset"] = args.preset
    if args.data_root:
        changes["data_root"] = args.data_root
    quiet = ["trainer.progress=false"] if args.no_progress else []
    changes["transfer_overrides"] = [*suite.transfer_overrides, *(args.set or []), *quiet]
    pretrain_sets = getattr(args, "pretrain_set", None) or []
    changes["pretrain_overrides"] = [*suite.pretrain_overrides, *pretrain_sets, *quiet]
    changed = [k for k in ("methods", "tasks", "fractions", "seeds", "preset", "encoders")
               if k in changes and changes[k] != getattr(suite, k)]  # fmt: skip
    suite = normalized(replace(suite, **changes), "command line")
    check(suite, "command line")
    name = getattr(args, "name", None)
    if name:
        suite = replace(suite, name=name)
    elif not args.suite or changed:
        suite = replace(suite, name=grid_name(suite))
    return suite


def _encoder_flag(text: str) -> tuple[str, str]:
    """``--encoder NAME=DIR`` → (NAME, DIR)."""
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise ConfigError("command line", "--encoder", f"NAME=DIR, got {text!r}")
    return name, folder


def command_line() -> str:
    return "cxrbench " + " ".join(sys.argv[1:]) if len(sys.argv) > 1 else "cxrbench bench"


def resolve_bench(
    suite: Suite, out: Path, force: bool = False, progress: bool = True
) -> ResolvedPlan:
    """The suite's resolved plan (caches under ``<out>/../cache``)."""
    return resolve(suite, Path(out), force=force, progress=progress, command=command_line())


def data_root_for(plan: ResolvedPlan, progress: bool) -> Path:
    """The plan's data root; the SynthCXR corpus of the preset is generated when missing."""
    return _synth_made(plan.data_root, plan.suite, progress)


def suite_data_root(suite: Suite, progress: bool) -> Path:
    """The suite's data root (``--data-root``, or its preset's SynthCXR corpus under
    ``datasets/``, generated when missing or out of date)."""
    return _synth_made(data_root_path(suite), suite, progress)


def _synth_made(root: Path, suite: Suite, progress: bool) -> Path:
    if suite.data_root:
        return root
    from cxrbench.synth import generate, stale_reason

    preset = SYNTH_PRESETS[suite.preset]
    if not (root / "mimic-cxr-jpg" / "mimic-cxr-2.0.0-split.csv.gz").is_file():
        log.info("generating SynthCXR %s into %s", suite.preset, root)
        generate(root, preset, seed=0, progress=progress)
    elif reason := stale_reason(root, preset, seed=0):
        # a corpus from older code would give numbers no current table or baseline matches
        log.warning("SynthCXR corpus %s is out of date (%s): regenerating it", root, reason)
        generate(root, preset, seed=0, progress=progress)
    return root


def run_bench(suite: Suite, out: Path, force: bool = False, progress: bool = True) -> Outcome:
    """Resolve (a problem stops here), make the data if needed, run every job here."""
    plan = resolve_bench(suite, out, force)
    plan.check()
    data_root = data_root_for(plan, progress)
    log.info("suite %s: %d encoders, %d transfer runs on %s", suite.name, len(plan.pretrain),
             len(plan.transfer), data_root)  # fmt: skip
    return execute(plan, force)  # the CLI says how many failed (stderr); each is logged


def submit_bench(
    suite: Suite,
    out: Path,
    force: bool = False,
    progress: bool = True,
    backend: SubmititBackend | None = None,
) -> Submission:
    """Submit the suite's unfinished jobs to SLURM (``backend``: another submitit cluster)."""
    from cxrbench.runner.executors import submit_plan

    plan = resolve_bench(suite, out, force, progress=False)  # no progress bars in SLURM logs
    plan.check("nothing submitted")
    data_root_for(plan, progress)  # a SynthCXR corpus is made before submitting
    return submit_plan(plan, force, backend)


def table_for(suite: Suite, out: Path, tables_dir: Path) -> str:
    """The suite's table, written by the report module (``tables/<suite>.md``), as text."""
    from cxrbench.report.tables import write_suite_tables

    [(_, text)] = write_suite_tables(suite, Path(out), tables_dir, ["md"], command=command_line())
    return text


def resolve_task(name: str) -> str:
    """A task key, or a dataset name standing for its only registered task (``siim`` →
    ``siim_seg``); a dataset with several tasks must be said in full."""
    from cxrbench.errors import RegistryError
    from cxrbench.tasks import TASKS

    if name in TASKS:
        return name
    matches = [t for t in TASKS.names() if TASKS.get(t).dataset == name]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise RegistryError(f"task {name!r} is ambiguous; say one of: {', '.join(matches)}")
    TASKS.get(name)  # raises with did-you-mean
    return name


#: Wall hours of one job when neither a finished run nor the suite's ``estimates:`` says, per
#: preset and stage / task kind, with where each number comes from.
DEFAULT_HOURS: dict[str, dict[str, tuple[float, str]]] = {
    # measured on the development machine's 2 CPU cores while other benchmarks ran: ConVIRT
    # pre-training 174 s, rsna_cls 10% 8 s, siim_seg 10% 39 s, rsna_det 10% 51 s on synth-tiny
    "tiny": {
        "pretrain": (0.05, "measured: 2-core CPU, ConVIRT"),
        "classification": (0.002, "measured: 2-core CPU, rsna_cls"),
        "segmentation": (0.011, "measured: 2-core CPU, siim_seg"),
        "detection": (0.014, "measured: 2-core CPU, rsna_det"),
        "zeroshot": (0.001, "measured on synth-small: 2-core CPU, 2-4 s"),
        "retrieval": (0.001, "measured on synth-small: 2-core CPU, 3-4 s"),
    },
    # measured on the same CPU: ConVIRT 4 epochs 211 s, CheXpert 1% probes 2-10 s
    # (results/runs/default); dense transfers: medians of the methods_dense grid at 10% (issue
    # 17, 8 methods x 3 seeds, frozen maps computed once per run, validation every 2 epochs):
    # U-Net 78 s (siim_seg 53 s, rsna_seg 82 s), YOLOv3 26 s (objectcxr_det 21 s, rsna_det 34 s)
    "small": {
        "pretrain": (0.06, "measured: 2-core CPU, make bench"),
        "classification": (0.003, "measured: 2-core CPU, make bench"),
        "segmentation": (0.0216, "measured: 2-core CPU, median of 48 siim/rsna_seg runs at 10%"),
        "detection": (0.0071, "measured: 2-core CPU, median of 48 rsna/objectcxr_det runs at 10%"),
        # evaluation only: one pass over 50-100 test images and the prompts / reports (issue 20)
        "zeroshot": (0.001, "measured: 2-core CPU, chexpert_zeroshot 2-4 s"),
        "retrieval": (0.001, "measured: 2-core CPU, mimic_retrieval 3-4 s"),
    },
    # pre-training: MGCA's author, ~1 day for 50 epochs on ~217k pairs on 2 RTX 3090 (MGCA issue
    # #2, reference/protocols-of-anchors.md §8); transfers: guesses, not measured
    "paper": {
        "pretrain": (24.0, "MGCA issue #2: ~1 day on 2 GPUs"),
        "classification": (0.5, "guess, not measured"),
        "segmentation": (2.0, "guess, not measured"),
        "detection": (3.0, "guess, not measured"),
        "zeroshot": (0.05, "guess, not measured"),
        "retrieval": (0.05, "guess, not measured"),
    },
}
UNTRAINED_HOURS = (0.02, "nothing is trained: build and export only")


def _measured(out: Path) -> tuple[dict, dict]:
    """Wall seconds of finished runs under ``out``: pre-trainings by (method, preset) and
    transfers by (task, fraction, config hash)."""
    import json

    from cxrbench.report.store import read_record
    from cxrbench.runs import META_FILE, RESULT_FILE

    pretrain: dict[tuple, list[float]] = {}
    for path in out.rglob(META_FILE) if out.is_dir() else []:
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):  # unreadable: measures nothing
            continue
        extra = meta.get("extra", {})
        if "wall_seconds" in extra and "preset" in extra:
            key = (meta.get("method"), extra["preset"])
            pretrain.setdefault(key, []).append(float(extra["wall_seconds"]))
    transfer: dict[tuple, list[float]] = {}
    for path in out.rglob(RESULT_FILE) if out.is_dir() else []:
        try:
            r = read_record(path)
        except CxrbenchError:
            continue
        transfer.setdefault((r.task, r.fraction, r.config_hash), []).append(r.wall_seconds)
    return pretrain, transfer


def _from_runs(seconds: list[float], what: str) -> tuple[float, str]:
    """The median: runs that shared their cores with others would pull a mean up."""
    import statistics

    return statistics.median(seconds) / 3600, f"measured: median of {len(seconds)} {what}"


def pretrain_hours(suite: Suite, method: str, measured: dict) -> tuple[float, str]:
    """Wall hours of one pre-training and where the number comes from."""
    from cxrbench.methods import METHODS

    if (method, suite.preset) in measured:
        return _from_runs(measured[(method, suite.preset)], "finished pre-trainings")
    given = suite.estimates.pretrain_hours
    if method in given:
        return given[method], f"suite estimates.pretrain_hours.{method}"
    if not METHODS.get(method).trains:
        return UNTRAINED_HOURS
    if "default" in given:
        return given["default"], "suite estimates.pretrain_hours.default"
    hours, why = DEFAULT_HOURS.get(suite.preset, DEFAULT_HOURS["paper"])["pretrain"]
    return hours, f"code default ({why})"


def transfer_hours(
    suite: Suite, task: str, fraction: float, config_hash: str | None, measured: dict
) -> tuple[float, str]:
    """Wall hours of one transfer run and where the number comes from."""
    from cxrbench.tasks import TASKS

    if (task, fraction, config_hash) in measured:
        return _from_runs(measured[(task, fraction, config_hash)], "finished runs")
    kind = TASKS.get(task).kind
    for key in (task, kind, "default"):
        if key in suite.estimates.transfer_hours:
            return suite.estimates.transfer_hours[key], f"suite estimates.transfer_hours.{key}"
    hours, why = DEFAULT_HOURS.get(suite.preset, DEFAULT_HOURS["paper"])[kind]
    return hours, f"code default ({why})"


def _request(group: Any) -> str:
    r = group.resources
    gpus = f"{r.gpus_per_node} GPU" if r.gpus_per_node else "no GPU"
    ddp = " (DDP)" if group.stage == "pretrain" and (r.nodes > 1 or r.gpus_per_node > 1) else ""
    cpus = r.cpus_per_task * group.tasks_per_node
    part = f", {r.partition}" if r.partition else ""
    return f"{r.nodes} node × {gpus}{ddp}, {cpus} CPU, {r.mem_gb:g} GB, {r.timeout_min} min{part}"


def dry_run(
    suite: Suite,
    out: Path,
    executor: str = "local",
    force: bool = False,
    plan: ResolvedPlan | None = None,
) -> str:
    """The plan as text: every job, what is finished (and skipped), the requests, the estimated
    cost of what would run and every problem that stops it. Reads configs and finished runs,
    never the data. ``plan``: the suite resolved already."""
    from cxrbench.runner.executors import auto_text_jobs, group_jobs

    out = Path(out)
    plan = plan or resolve_bench(suite, out, force)
    costing = _Costing(suite, executor, *_measured(out))
    lines = [
        f"dry run of suite {suite.name} (preset {suite.preset}, executor {executor}): "
        f"nothing is run",
        f"data root {plan.data_root} (not read); runs under {out / suite.name}",
    ]
    groups = group_jobs(plan, force)
    lines += costing.stage_lines("pretrain", groups) + costing.stage_lines("transfer", groups)
    lines.append("estimates (wall hours per job, where each comes from):")
    for (stage, name, hours, source), fractions in costing.estimates.items():
        which = f" f{','.join(fractions)}" if fractions else ""
        lines.append(f"  {stage} {name}{which}: {hours:.3g} h ({source})")
    where = (
        f"one job at a time on this machine's {_local_cpus()} cores (torch threads)"
        if executor == "local"
        else "CPUs as requested per job"
    )
    lines.append(
        f"estimated cost of what would run: {costing.wall_hours:,.2f} wall hours of jobs, "
        f"{costing.gpu_hours:,.1f} GPU-hours, {costing.cpu_hours:,.1f} CPU-hours ({where})"
    )
    lines.append(
        f"estimated cost of the whole grid, finished jobs included: {costing.grid_hours:,.2f} "
        f"wall hours of jobs, {costing.grid_cpu_hours:,.1f} CPU-hours"
    )
    if executor == "slurm" and not plan.problems and len(auto_text_jobs(plan)) > 1:
        lines.append(
            "note: text.model=auto: the corpus text model must exist before the jobs start "
            "(cxrbench pretrain-text), or give --pretrain-set text.model=PATH"
        )
    unresolved = len(make_plan(suite).jobs) - len(plan.jobs)
    if unresolved:
        lines.append(f"{unresolved} planned jobs not resolved (not counted above): see problems")
    if plan.problems:
        lines.append(
            f"problems ({len(plan.problems)}; the suite does not start until they are fixed):"
        )
        lines += [f"  {p}" for p in plan.problems]
    return "\n".join(lines)


def _local_cpus() -> int:
    """The cores a local job uses: torch's intra-op threads, which default to the cores here."""
    import torch

    return torch.get_num_threads()


@dataclass
class _Costing:
    """The dry run's per-group lines, the estimate of each job and the total cost."""

    suite: Suite
    executor: str
    pretrain_measured: dict
    transfer_measured: dict
    gpu_hours: float = 0.0
    cpu_hours: float = 0.0
    wall_hours: float = 0.0
    grid_hours: float = 0.0  # every job of the grid, finished ones included
    grid_cpu_hours: float = 0.0
    estimates: dict[tuple[str, str, float, str], list[str]] = field(default_factory=dict)

    def hours(self, stage: str, job: Job) -> float:
        """One job's wall hours; records the estimate (and its fraction) for the listing."""
        if stage == "pretrain":
            h, source = pretrain_hours(self.suite, job.method, self.pretrain_measured)
            key, fraction = job.method, ""
        else:
            assert job.task is not None and job.fraction is not None
            h, source = transfer_hours(self.suite, job.task, job.fraction, job.config_hash,
                                       self.transfer_measured)  # fmt: skip
            key, fraction = job.task, f"{job.fraction:g}"
        seen = self.estimates.setdefault((stage, key, h, source), [])
        if fraction and fraction not in seen:
            seen.append(fraction)
        return h

    def stage_lines(self, stage: str, groups: list[JobGroup]) -> list[str]:
        mine = [g for g in groups if g.stage == stage]
        done = sum(len(g.finished) for g in mine)
        total = done + sum(len(g.pending) for g in mine)
        arrays = "job arrays" if self.executor == "slurm" else "groups"
        noun = "jobs" if stage == "pretrain" else f"runs in {len(mine)} {arrays}"
        lines = [f"{stage}: {total} {noun}, {done} finished (skipped), {total - done} to run"]
        for g in mine:
            finished = sum(self.hours(stage, job) for job in g.finished)
            hours = sum(self.hours(stage, job) for job in g.pending)
            r = g.resources  # resolved: every field set (resolve.resources_for)
            nodes, cpus = r.nodes or 1, (r.cpus_per_task or 1) * g.tasks_per_node
            if self.executor == "local":  # the request is slurm's; a job here uses every core
                nodes, cpus = 1, _local_cpus()
            self.wall_hours += hours
            self.gpu_hours += hours * nodes * (r.gpus_per_node or 0)
            self.cpu_hours += hours * nodes * cpus
            self.grid_hours += hours + finished
            self.grid_cpu_hours += (hours + finished) * nodes * cpus
            request = f"{_request(g)}; " if self.executor == "slurm" else ""
            state = f"{len(g.pending)} to run, {len(g.finished)} finished"
            lines.append(f"  {g.label}: {state}; {request}est. {hours:.3g} h")
        return lines
