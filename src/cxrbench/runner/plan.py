"""Suites and plans: which encoders to pre-train and which transfer runs to make.

A suite (``benchmarks/*.yaml``, or the ``cxrbench bench`` flags) names methods, tasks, label
fractions and seeds. The plan pre-trains one encoder per method (per task dataset for
``supervised``, the oracle trained on that dataset's labels) at ``pretrain_seed`` and runs every
method × task × fraction × seed transfer on it. Run folders are keyed by identity:
``<out>/<suite>/<method>/pretrain[-<dataset>]/s<pretrain seed>/`` and
``<out>/<suite>/<method>/<task>/f<fraction>/s<seed>/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cxrbench.config import build, load_yaml
from cxrbench.errors import ConfigError
from cxrbench.methods import METHODS
from cxrbench.tasks import TASKS

PROTOCOL_SEEDS = [42, 0, 1]


@dataclass
class Suite:
    name: str = "adhoc"
    preset: str = "small"
    data_root: str | None = None  # None: the SynthCXR corpus of the preset
    methods: list[str] = field(default_factory=lambda: ["convirt", "random_init"])
    tasks: list[str] = field(default_factory=lambda: ["chexpert_cls"])
    fractions: list[float] = field(default_factory=lambda: [0.01])
    seeds: list[int] = field(default_factory=lambda: list(PROTOCOL_SEEDS))
    pretrain_seed: int = 0
    pretrain_overrides: list[str] = field(default_factory=list)
    method_overrides: dict[str, list[str]] = field(default_factory=dict)  # per method, pre-training
    transfer_overrides: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PretrainSpec:
    method: str
    seed: int
    dataset: str | None  # the supervised oracle's dataset

    @property
    def key(self) -> str:
        return f"{self.method}/pretrain" + (f"-{self.dataset}" if self.dataset else "")


@dataclass(frozen=True)
class TransferSpec:
    method: str
    task: str
    fraction: float
    seed: int
    pretrain: PretrainSpec

    @property
    def key(self) -> str:
        return f"{self.method}/{self.task}/f{self.fraction:g}/s{self.seed}"


@dataclass(frozen=True)
class Plan:
    suite: Suite
    pretrain: tuple[PretrainSpec, ...]
    transfer: tuple[TransferSpec, ...]


def load_suite(path: Path) -> Suite:
    """A suite file, validated (unknown keys, wrong types and unknown names name the file)."""
    layer = load_yaml(path)
    suite = build(Suite, [layer])
    check(suite, str(path))
    return suite


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
    if not suite.seeds:
        raise ConfigError(source, "seeds", "needs at least one seed")


def make_plan(suite: Suite) -> Plan:
    pretrain: dict[str, PretrainSpec] = {}
    transfer = []
    for method in suite.methods:
        for task in suite.tasks:
            dataset = TASKS.get(task).dataset if method == "supervised" else None
            spec = PretrainSpec(method, suite.pretrain_seed, dataset)
            pretrain.setdefault(spec.key, spec)
            for fraction in suite.fractions:
                for seed in suite.seeds:
                    transfer.append(TransferSpec(method, task, fraction, seed, spec))
    return Plan(suite, tuple(pretrain.values()), tuple(transfer))
