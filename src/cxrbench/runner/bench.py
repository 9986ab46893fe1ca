"""``cxrbench bench``: suite (file or flags) → data → plan → execute → table.

The executor is ``local`` (:func:`run_bench`: every job in order on this machine) or ``slurm``
(:func:`submit_bench`: the jobs submitted through submitit, ``executors.py``); :func:`dry_run`
prints the plan and its estimated cost without running anything or reading the data. A job's
estimate is, in this order: the mean wall time of finished runs under ``--out`` (pre-trainings of
the same method and preset, transfers with the same task, fraction and config hash), the suite's
``estimates:``, or :data:`DEFAULT_HOURS` (each entry says where it was measured).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrbench.errors import ConfigError, CxrbenchError
from cxrbench.runner.execute import Outcome, execute
from cxrbench.runner.plan import Suite, check, load_suite, make_plan, normalized

if TYPE_CHECKING:
    from cxrbench.runner.executors import Submission, SubmititBackend

log = logging.getLogger(__name__)
SYNTH_PRESETS = {"tiny": "tiny", "small": "small"}


def suite_from_args(args: Any) -> Suite:
    """The suite file if given, then flags replace its grid (each flag is repeatable)."""
    suite = load_suite(Path(args.suite)) if args.suite else Suite()
    changes: dict[str, Any] = {}
    for flag, key in (
        ("method", "methods"),
        ("task", "tasks"),
        ("fraction", "fractions"),
        ("seed", "seeds"),
        ("pretrain_seed", "pretrain_seeds"),
    ):
        values = getattr(args, flag, None)
        if values:
            changes[key] = [resolve_task(v) for v in values] if flag == "task" else list(values)
    if args.preset:
        changes["preset"] = args.preset
    if args.data_root:
        changes["data_root"] = args.data_root
    quiet = ["trainer.progress=false"] if args.no_progress else []
    changes["transfer_overrides"] = [*suite.transfer_overrides, *(args.set or []), *quiet]
    pretrain_sets = getattr(args, "pretrain_set", None) or []
    changes["pretrain_overrides"] = [*suite.pretrain_overrides, *pretrain_sets, *quiet]
    suite = normalized(replace(suite, **changes), "command line")
    if not args.suite and (args.method or args.task):
        suite = replace(suite, name=f"{suite.preset}")
    check(suite, "command line")
    return suite


def data_root_path(suite: Suite) -> Path:
    """The suite's data root (the SynthCXR corpus of a synthetic preset); nothing is read."""
    if suite.data_root:
        return Path(suite.data_root)
    if suite.preset not in SYNTH_PRESETS:
        raise ConfigError(
            "command line",
            "data_root",
            f"preset {suite.preset!r} runs on real data: pass --data-root",
        )
    return Path("datasets") / f"synth-{suite.preset}"


def data_root_for(suite: Suite, progress: bool) -> Path:
    """The suite's data root; the SynthCXR corpus of the preset is generated when missing."""
    root = data_root_path(suite)
    if suite.data_root:
        return root
    if not (root / "mimic-cxr-jpg" / "mimic-cxr-2.0.0-split.csv.gz").is_file():
        from cxrbench.synth import generate

        log.info("generating SynthCXR %s into %s", suite.preset, root)
        generate(root, SYNTH_PRESETS[suite.preset], seed=0, progress=progress)
    return root


def run_bench(suite: Suite, out: Path, force: bool = False, progress: bool = True) -> Outcome:
    data_root = data_root_for(suite, progress)
    plan = make_plan(suite)
    log.info(
        "suite %s: %d encoders, %d transfer runs on %s",
        suite.name,
        len(plan.pretrain),
        len(plan.transfer),
        data_root,
    )
    outcome = execute(plan, data_root, out, out.parent / "cache" / "features", force)
    log_failures(outcome)
    return outcome


def log_failures(outcome: Outcome) -> None:
    for key, reason in outcome.failures:
        log.error("FAILED %s: %s", key, reason)


def submit_bench(
    suite: Suite,
    out: Path,
    force: bool = False,
    progress: bool = True,
    backend: SubmititBackend | None = None,
) -> Submission:
    """Submit the suite's unfinished jobs to SLURM (``backend``: another submitit cluster)."""
    from cxrbench.runner.executors import submit_plan

    data_root = data_root_for(suite, progress)  # a SynthCXR corpus is made before submitting
    return submit_plan(make_plan(suite), data_root, out, out.parent / "cache" / "features",
                       force, backend)  # fmt: skip


def table_for(suite: Suite, outcome: Outcome, tables_dir: Path) -> str:
    from cxrbench.report.aggregate import aggregate
    from cxrbench.report.suites import planned_runs, spread_words
    from cxrbench.report.tables import markdown_table, write_table

    cells = aggregate(outcome.records, planned_seeds=planned_runs(suite))
    title = (
        f"{suite.name}: {', '.join(suite.tasks)} · preset {suite.preset} · "
        f"{spread_words(suite, outcome.records)}"
    )
    text = markdown_table(cells, title=title, method_order=suite.methods)
    command = "cxrbench " + " ".join(sys.argv[1:]) if sys.argv else "cxrbench bench"
    write_table(text, tables_dir / f"{suite.name}.md", command)
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
    },
    # measured on the same CPU: ConVIRT 4 epochs 211 s, CheXpert 1% probes 2-10 s
    # (results/runs/default); dense transfers 1-2 min each (benchmarks/methods_dense.yaml)
    "small": {
        "pretrain": (0.06, "measured: 2-core CPU, make bench"),
        "classification": (0.003, "measured: 2-core CPU, make bench"),
        "segmentation": (0.03, "measured: 2-core CPU, methods_dense"),
        "detection": (0.03, "measured: 2-core CPU, methods_dense"),
    },
    # pre-training: MGCA's author, ~1 day for 50 epochs on ~217k pairs on 2 RTX 3090 (MGCA issue
    # #2, reference/protocols-of-anchors.md §8); transfers: guesses, not measured
    "paper": {
        "pretrain": (24.0, "MGCA issue #2: ~1 day on 2 GPUs"),
        "classification": (0.5, "guess, not measured"),
        "segmentation": (2.0, "guess, not measured"),
        "detection": (3.0, "guess, not measured"),
    },
}
UNTRAINED_HOURS = (0.02, "nothing is trained: build and export only")


def _measured(out: Path) -> tuple[dict, dict]:
    """Wall seconds of finished runs under ``out``: pre-trainings by (method, preset) and
    transfers by (task, fraction, config hash)."""
    import json

    from cxrbench.models.artifact import META_FILE
    from cxrbench.report.store import read_record

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
    for path in out.rglob("result.json") if out.is_dir() else []:
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


def dry_run(suite: Suite, out: Path, executor: str = "local", force: bool = False) -> str:
    """The plan as text: every job, what is finished (and skipped), the requests and the
    estimated cost of what would run. Reads configs and finished runs, never the data."""
    from cxrbench.runner.executors import auto_text_jobs, config_problems, group_jobs

    plan = make_plan(suite)
    out = Path(out)
    problems = config_problems(plan, out)
    costing = _Costing(suite, executor, *_measured(out), _transfer_hashes(suite))
    lines = [
        f"dry run of suite {suite.name} (preset {suite.preset}, executor {executor}): "
        f"nothing is run",
        f"data root {data_root_path(suite)} (not read); runs under {out / suite.name}",
    ]
    groups = group_jobs(plan, out, force)
    lines += costing.stage_lines("pretrain", groups) + costing.stage_lines("transfer", groups)
    lines.append("estimates (wall hours per job, where each comes from):")
    for (stage, name, hours, source), fractions in costing.estimates.items():
        which = f" f{','.join(fractions)}" if fractions else ""
        lines.append(f"  {stage} {name}{which}: {hours:.3g} h ({source})")
    lines.append(
        f"estimated cost of what would run: {costing.gpu_hours:,.1f} GPU-hours, "
        f"{costing.cpu_hours:,.1f} CPU-hours"
    )
    if executor == "slurm" and not problems and len(auto_text_jobs(plan, out)) > 1:
        lines.append(
            "note: text.model=auto: the corpus text model must exist before the jobs start "
            "(cxrbench pretrain-text), or give --pretrain-set text.model=PATH"
        )
    if problems:
        lines.append("problems (the run would stop on these before the first job):")
        lines += [f"  {p}" for p in problems]
    return "\n".join(lines)


def _transfer_hashes(suite: Suite) -> dict[tuple[str, float], str | None]:
    from cxrbench.runner.transfer import load_task

    hashes: dict[tuple[str, float], str | None] = {}
    for task in suite.tasks:
        for fraction in suite.fractions:
            try:
                job = load_task(task, suite.preset, suite.transfer_overrides, fraction)
                hashes[(task, fraction)] = job.config_hash
            except CxrbenchError:  # a problem config_problems lists
                hashes[(task, fraction)] = None
    return hashes


@dataclass
class _Costing:
    """The dry run's per-group lines, the estimate of each job and the total cost."""

    suite: Suite
    executor: str
    pretrain_measured: dict
    transfer_measured: dict
    hashes: dict
    gpu_hours: float = 0.0
    cpu_hours: float = 0.0
    estimates: dict[tuple[str, str, float, str], list[str]] = field(default_factory=dict)

    def hours(self, stage: str, spec: Any) -> float:
        """One job's wall hours; records the estimate (and its fraction) for the listing."""
        if stage == "pretrain":
            h, source = pretrain_hours(self.suite, spec.method, self.pretrain_measured)
            key, fraction = spec.method, ""
        else:
            config_hash = self.hashes[(spec.task, spec.fraction)]
            h, source = transfer_hours(self.suite, spec.task, spec.fraction, config_hash,
                                       self.transfer_measured)  # fmt: skip
            key, fraction = spec.task, f"{spec.fraction:g}"
        seen = self.estimates.setdefault((stage, key, h, source), [])
        if fraction and fraction not in seen:
            seen.append(fraction)
        return h

    def stage_lines(self, stage: str, groups: list) -> list[str]:
        mine = [g for g in groups if g.stage == stage]
        done = sum(len(g.finished) for g in mine)
        total = done + sum(len(g.pending) for g in mine)
        arrays = "job arrays" if self.executor == "slurm" else "groups"
        noun = "jobs" if stage == "pretrain" else f"runs in {len(mine)} {arrays}"
        lines = [f"{stage}: {total} {noun}, {done} finished (skipped), {total - done} to run"]
        for g in mine:
            for spec in g.finished:
                self.hours(stage, spec)
            hours = sum(self.hours(stage, spec) for spec in g.pending)
            r = g.resources
            self.gpu_hours += hours * r.nodes * r.gpus_per_node
            self.cpu_hours += hours * r.nodes * g.tasks_per_node * r.cpus_per_task
            request = f"{_request(g)}; " if self.executor == "slurm" else ""
            state = f"{len(g.pending)} to run, {len(g.finished)} finished"
            lines.append(f"  {g.label}: {state}; {request}est. {hours:.3g} h")
        return lines
