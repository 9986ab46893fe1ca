"""Suites and plans: which encoders to pre-train and which transfer runs to make.

A suite (``benchmarks/*.yaml``, or the ``cxrbench bench`` flags) names methods, tasks, label
fractions and seeds. The plan pre-trains one encoder per method (per task dataset for
``supervised``, the oracle trained on that dataset's labels) at each of ``pretrain_seeds`` and runs
every method × task × fraction × seed transfer on each. Run folders are keyed by identity:
``<out>/<suite>/<method>/pretrain[-<dataset>]/s<pretrain seed>/`` and
``<out>/<suite>/<method>/<task>/f<fraction>[/p<pretrain seed>]/s<seed>/`` (``p<k>/`` only for a
pre-training seed other than 0, so the folders of one-seed suites keep their names).

Several pre-training seeds measure the noise of pre-training itself, which is what moves a
number from one CPU to another (the leaderboard gate, :mod:`cxrbench.report.leaderboard`).

A suite may also say what each job asks of a SLURM cluster (``resources:``), how to submit
(``slurm:``) and what a job costs when no finished run has measured it (``estimates:``); see
:class:`Resources`, :class:`SlurmSpec` and :class:`Estimates`. A pre-training job given more
than one GPU (or node) runs Lightning's DDP on them: :func:`pretrain_overrides` adds
``trainer.devices``, ``trainer.num_nodes`` and ``trainer.strategy=ddp`` to its config, whichever
executor runs it, so a run's identity does not depend on where it ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from cxrbench.config import build, load_yaml
from cxrbench.errors import ConfigError, RegistryError
from cxrbench.methods import METHODS
from cxrbench.tasks import TASKS

PROTOCOL_SEEDS = [42, 0, 1]
TASK_KINDS = ("classification", "segmentation", "detection")


@dataclass
class Resources:
    """What one SLURM job asks for. A field left unset is taken from the section below it:
    ``pretrain_<method>`` → ``pretrain`` → the defaults of :func:`resources_for` (and
    ``transfer_<kind>`` → ``transfer`` → defaults)."""

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


@dataclass(frozen=True)
class PretrainSpec:
    method: str
    seed: int
    dataset: str | None  # the supervised oracle's dataset

    @property
    def key(self) -> str:
        dataset = f"-{self.dataset}" if self.dataset else ""
        return f"{self.method}/pretrain{dataset}/s{self.seed}"


@dataclass(frozen=True)
class TransferSpec:
    method: str
    task: str
    fraction: float
    seed: int
    pretrain: PretrainSpec

    @property
    def key(self) -> str:
        pretrain = f"p{self.pretrain.seed}/" if self.pretrain.seed != 0 else ""
        return f"{self.method}/{self.task}/f{self.fraction:g}/{pretrain}s{self.seed}"


@dataclass(frozen=True)
class Plan:
    suite: Suite
    pretrain: tuple[PretrainSpec, ...]
    transfer: tuple[TransferSpec, ...]


def load_suite(path: Path) -> Suite:
    """A suite file, validated (unknown keys, wrong types and unknown names name the file)."""
    layer = load_yaml(path)
    suite = normalized(build(Suite, [layer]), str(path))
    check(suite, str(path))
    return suite


def normalized(suite: Suite, source: str = "suite") -> Suite:
    """``pretrain_seed: N`` folded into ``pretrain_seeds: [N]`` (both given and different: an
    error)."""
    if suite.pretrain_seed is None:
        return suite
    if suite.pretrain_seeds not in ([0], [suite.pretrain_seed]):
        raise ConfigError(source, "pretrain_seed", "give pretrain_seeds or pretrain_seed, not both")
    return replace(suite, pretrain_seeds=[suite.pretrain_seed], pretrain_seed=None)


def check(suite: Suite, source: str = "suite") -> None:
    for key, names, registry in (
        ("methods", suite.methods, METHODS),
        ("tasks", suite.tasks, TASKS),
    ):
        if not names:
            raise ConfigError(source, key, "needs at least one entry")
        for name in names:
            registry.get(name)  # did-you-mean error on a typo
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
    _check_resources(suite, source)
    _check_estimates(suite, source)


def _check_resources(suite: Suite, source: str) -> None:
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


#: what a job asks for when the suite does not say (gpus: 1 when the preset runs on a GPU)
DEFAULT_RESOURCES = {"nodes": 1, "cpus_per_task": 4, "mem_gb": 16.0, "timeout_min": 240}


def resources_for(suite: Suite, stage: str, name: str) -> Resources:
    """The resolved request of a ``stage`` ("pretrain" or "transfer") job; ``name`` is the method
    (pre-training) or the task kind (transfer)."""
    from cxrbench.runner.pretrain import preset_section

    trainer = preset_section(suite.preset, stage).values.get("trainer") or {}
    values: dict = {**DEFAULT_RESOURCES, "gpus_per_node": int(trainer.get("accelerator") == "gpu")}
    for key in (stage, f"{stage}_{name}"):
        section = suite.resources.get(key)
        if section is not None:
            values.update({k: v for k, v in vars(section).items() if v is not None})
    return Resources(**values)


def pretrain_overrides(suite: Suite, spec: PretrainSpec) -> list[str]:
    """The config overrides of one pre-training run: the suite's, the method's, its seed and,
    when its job has more than one GPU or node, Lightning DDP over all of them."""
    overrides = [
        *suite.pretrain_overrides,
        *suite.method_overrides.get(spec.method, []),
        f"seed={spec.seed}",
    ]
    if spec.dataset:
        overrides.append(f"params.dataset={spec.dataset}")
    res = resources_for(suite, "pretrain", spec.method)
    gpus, nodes = res.gpus_per_node or 0, res.nodes or 1
    if gpus > 1 or nodes > 1:
        overrides += [
            f"trainer.devices={max(gpus, 1)}",
            f"trainer.num_nodes={nodes}",
            "trainer.strategy=ddp",
        ]
    return overrides


def pretrain_dir(suite: Suite, spec: PretrainSpec, out: Path) -> Path:
    return Path(out) / suite.name / spec.key


def transfer_dir(suite: Suite, spec: TransferSpec, out: Path) -> Path:
    return Path(out) / suite.name / spec.key


def make_plan(suite: Suite) -> Plan:
    pretrain: dict[str, PretrainSpec] = {}
    transfer = []
    for method in suite.methods:
        for pretrain_seed in suite.pretrain_seeds:
            for task in suite.tasks:
                dataset = TASKS.get(task).dataset if method == "supervised" else None
                spec = PretrainSpec(method, pretrain_seed, dataset)
                pretrain.setdefault(spec.key, spec)
                for fraction in suite.fractions:
                    for seed in suite.seeds:
                        transfer.append(TransferSpec(method, task, fraction, seed, spec))
    return Plan(suite, tuple(pretrain.values()), tuple(transfer))
