"""Suites: what a benchmark runs, as data (``benchmarks/*.yaml`` or the ``cxrbench bench`` flags).

A suite names methods, tasks, label fractions, transfer seeds and pre-training seeds, the preset
and the data root, config overrides, and what its jobs ask of a SLURM cluster. This module only
loads and validates suites: :mod:`cxrbench.runner.resolve` turns one into jobs, and
:mod:`cxrbench.report` selects a suite's records with it. It imports neither of them, so the
report never depends on the runner.

A suite is a folder, ``<runs>/<name>/``. A suite made from flags (no file) is named after its
grid (:func:`grid_name`), and so is a suite file whose grid the flags change: two different grids
never share a folder, a table or a leaderboard.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from cxrbench.config import build, load_yaml
from cxrbench.errors import ConfigError, RegistryError

PROTOCOL_SEEDS = [42, 0, 1]
ENCODER_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
TASK_KINDS = ("classification", "segmentation", "detection", "zeroshot", "retrieval")


@dataclass
class Resources:
    """What one SLURM job asks for. A field left unset is taken from the section below it:
    ``pretrain_<method>`` → ``pretrain`` → the defaults (and ``transfer_<kind>`` → ``transfer`` →
    defaults); :func:`cxrbench.runner.resolve.resources_for` resolves them."""

    nodes: int | None = None
    gpus_per_node: int | None = None  # pre-training: > 1 GPU (or > 1 node) runs DDP
    cpus_per_task: int | None = None  # a DDP job runs one task per GPU
    mem_gb: float | None = None
    timeout_min: int | None = None
    partition: str | None = None


@dataclass
class SlurmSpec:
    """How jobs are submitted (``--executor slurm``)."""

    folder: str | None = None  # submitit's logs and pickles (default <out>/../slurm/<suite>)
    account: str | None = None
    qos: str | None = None
    array_parallelism: int = 64  # array tasks running at once
    setup: list[str] = field(default_factory=list)  # shell lines before srun (module load, ...)
    additional: dict[str, str] = field(default_factory=dict)  # more sbatch flags: {constraint: x}


@dataclass
class Estimates:
    """Wall hours of one job, for the dry run's cost when no finished run measured it."""

    pretrain_hours: dict[str, float] = field(default_factory=dict)  # method or "default"
    transfer_hours: dict[str, float] = field(default_factory=dict)  # task, kind or "default"


@dataclass
class Suite:
    name: str = "adhoc"
    preset: str = "small"
    data_root: str | None = None  # None: the SynthCXR corpus of the preset
    methods: list[str] = field(default_factory=lambda: ["convirt", "random_init"])
    tasks: list[str] = field(default_factory=lambda: ["chexpert_cls"])
    fractions: list[float] = field(default_factory=lambda: [0.01])
    seeds: list[int] = field(default_factory=lambda: list(PROTOCOL_SEEDS))
    pretrain_seeds: list[int] = field(default_factory=lambda: [0])
    pretrain_seed: int | None = None  # shorthand for pretrain_seeds: [N]
    pretrain_overrides: list[str] = field(default_factory=list)
    method_overrides: dict[str, list[str]] = field(default_factory=dict)  # per method, pre-training
    transfer_overrides: list[str] = field(default_factory=list)
    resources: dict[str, Resources] = field(default_factory=dict)  # see resources_for
    slurm: SlurmSpec = field(default_factory=SlurmSpec)
    estimates: Estimates = field(default_factory=Estimates)
    #: per task, the metric tables and leaderboards read (default: the task's own), e.g.
    #: ``{covidx_cls: auroc}``; every transfer run records all of its metrics either way
    metrics: dict[str, str] = field(default_factory=dict)
    #: rows evaluated on an encoder artifact that exists already (``cxrbench import``, another
    #: suite's pre-training), no pre-training: ``{name: artifact folder}`` (``--encoder NAME=DIR``)
    encoders: dict[str, str] = field(default_factory=dict)

    @property
    def rows(self) -> list[str]:
        """The table rows: the methods, then the given encoders."""
        return [*self.methods, *self.encoders]


def load_suite(path: Path, *, complete: bool = True) -> Suite:
    """A suite file, validated (unknown keys, wrong types and unknown names name the file).
    ``complete=False``: its rows may come from the command line (``methods: []`` with the
    encoders given by ``--encoder``); the caller checks the merged suite."""
    layer = load_yaml(path)
    suite = normalized(build(Suite, [layer]), str(path))
    check(suite, str(path), rows_later=not complete)
    return suite


def normalized(suite: Suite, source: str = "suite") -> Suite:
    """``pretrain_seed: N`` folded into ``pretrain_seeds: [N]`` (both given and different: an
    error)."""
    if suite.pretrain_seed is None:
        return suite
    if suite.pretrain_seeds not in ([0], [suite.pretrain_seed]):
        raise ConfigError(source, "pretrain_seed", "give pretrain_seeds or pretrain_seed, not both")
    return replace(suite, pretrain_seeds=[suite.pretrain_seed], pretrain_seed=None)


def check(suite: Suite, source: str = "suite", *, rows_later: bool = False) -> None:
    """Names, fractions, seeds and sections of ``suite`` (errors name ``source`` and the key).
    ``rows_later``: no methods nor encoders yet is fine (the command line adds them)."""
    from cxrbench.methods import METHODS
    from cxrbench.tasks import TASKS

    for key, names, registry in (
        ("methods", suite.methods, METHODS),
        ("tasks", suite.tasks, TASKS),
    ):
        if not names and not (key == "methods" and (suite.encoders or rows_later)):
            rows = " (or an encoder to evaluate: --encoder NAME=DIR)" if key == "methods" else ""
            raise ConfigError(source, key, f"needs at least one entry{rows}")
        for name in names:
            registry.get(name)  # did-you-mean error on a typo
    for name, folder in suite.encoders.items():
        if not ENCODER_NAME.fullmatch(name) or name in METHODS:
            why = "a registered method's name" if name in METHODS else "not [a-z0-9_.-]+"
            raise ConfigError(source, f"encoders.{name}", f"a row name of its own, got {why}")
        if not folder:
            raise ConfigError(source, f"encoders.{name}", "the encoder artifact folder")
    for f in suite.fractions:
        if not 0 < f <= 1:
            raise ConfigError(source, "fractions", f"a label fraction is in (0, 1], got {f}")
    for key, seeds in (("seeds", suite.seeds), ("pretrain_seeds", suite.pretrain_seeds)):
        if not seeds:
            raise ConfigError(source, key, "needs at least one seed")
        if any(s < 0 for s in seeds):
            raise ConfigError(source, key, f"seeds are integers >= 0, got {min(seeds)}")
        if len(set(seeds)) != len(seeds):
            raise ConfigError(source, key, "a seed is listed twice")
    for task, metric in suite.metrics.items():
        if task not in suite.tasks:
            raise ConfigError(
                source, f"metrics.{task}", f"not a task of this suite ({', '.join(suite.tasks)})"
            )
        if not metric or metric.startswith("val/"):
            raise ConfigError(
                source, f"metrics.{task}", f"a test metric such as auroc, got {metric!r}"
            )
    _check_resources(suite, source)
    _check_estimates(suite, source)


def _check_resources(suite: Suite, source: str) -> None:
    from cxrbench.methods import METHODS

    sections = ("pretrain", "transfer", *(f"transfer_{k}" for k in TASK_KINDS))
    for key, res in suite.resources.items():
        if key.startswith("pretrain_"):
            try:
                METHODS.get(key.removeprefix("pretrain_"))
            except RegistryError as err:
                raise ConfigError(source, f"resources.{key}", str(err)) from None
        elif key not in sections:
            raise ConfigError(
                source,
                f"resources.{key}",
                "sections are pretrain, transfer, pretrain_<method> and transfer_<kind> "
                f"(kinds: {', '.join(TASK_KINDS)})",
            )
        for name in ("nodes", "cpus_per_task", "timeout_min", "mem_gb"):
            value = getattr(res, name)
            if value is not None and value < 1:
                raise ConfigError(source, f"resources.{key}.{name}", f"must be >= 1, got {value}")
        if res.gpus_per_node is not None and res.gpus_per_node < 0:
            raise ConfigError(source, f"resources.{key}.gpus_per_node", "must be >= 0")
        one_device = (res.gpus_per_node or 0) <= 1 and (res.nodes or 1) == 1
        if key.startswith("transfer") and not one_device:
            raise ConfigError(
                source, f"resources.{key}", "a transfer runs on one device (one node, <= 1 GPU)"
            )


def _check_estimates(suite: Suite, source: str) -> None:
    from cxrbench.methods import METHODS
    from cxrbench.tasks import TASKS

    for key in suite.estimates.pretrain_hours:
        if key != "default" and key not in METHODS:
            raise ConfigError(
                source, f"estimates.pretrain_hours.{key}", "keys are methods or 'default'"
            )
    for key in suite.estimates.transfer_hours:
        if key != "default" and key not in TASK_KINDS and key not in TASKS:
            raise ConfigError(
                source, f"estimates.transfer_hours.{key}", "keys are tasks, kinds or 'default'"
            )


def load_suite_arg(text: str) -> Suite:
    """``--suite``: a suite file, or the name of one in ``benchmarks/``."""
    path = Path(text)
    if not path.is_file() and not text.endswith(".yaml"):
        path = Path("benchmarks") / f"{text}.yaml"
    if not path.is_file():
        raise ConfigError(text, None, f"no suite file {text!r} (nor benchmarks/{text}.yaml)")
    return load_suite(path)


def grid_name(suite: Suite) -> str:
    """A name that differs between grids: the preset, the methods and tasks (up to three of each,
    then a count) and a short hash of the whole grid (fractions, seeds, overrides, data root), e.g.
    ``tiny-convirt-chexpert_cls-3f1c9a0e``. Pre-training seeds are left out: like a suite file's
    folder, one grid's folder gathers the runs of every pre-training seed it was given."""
    grid = "|".join(
        str(x) for x in (
            suite.preset, suite.data_root, suite.methods, suite.tasks, suite.fractions,
            suite.seeds, _quiet(suite.pretrain_overrides),
            _quiet(suite.transfer_overrides), sorted(suite.method_overrides.items()),
        )
    ) + (f"|{sorted(suite.encoders.items())}" if suite.encoders else "")  # fmt: skip
    digest = hashlib.sha256(grid.encode()).hexdigest()[:8]
    return "-".join([suite.preset, _names(suite.rows), _names(suite.tasks), digest])


def _names(names: list[str]) -> str:
    return "+".join(names) if len(names) <= 3 else f"{names[0]}+{len(names) - 1}more"


def _quiet(overrides: list[str]) -> list[str]:
    """Overrides without those that change no result (progress bars)."""
    return [o for o in overrides if not o.startswith("trainer.progress=")]


def task_fractions(suite: Suite, task: str) -> list[float]:
    """The label fractions a task runs at: the suite's, or only 1.0 for a task that trains
    nothing (zero-shot, retrieval: no labels are used, a fraction would repeat the same run)."""
    from cxrbench.tasks import TASKS

    only = task in TASKS and TASKS.get(task).evaluation_only  # a task not registered: as listed
    return [1.0] if only else list(suite.fractions)


def method_runs_task(method: str, task: str) -> bool:
    """Whether a suite plans ``task`` for ``method``: not a task that needs an image–text space
    (zero-shot, retrieval) for a method without one. A row the suite names by an encoder folder
    (not a registered method) is planned: its run says whether it has a text side."""
    from cxrbench.methods import METHODS
    from cxrbench.tasks import TASKS

    if task not in TASKS or not TASKS.get(task).evaluation_only or method not in METHODS:
        return True
    return bool(METHODS.get(method).vl_space)
