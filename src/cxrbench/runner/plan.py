"""Plans: which encoders to pre-train and which transfer runs to make.

A suite (``benchmarks/*.yaml``, or the ``cxrbench bench`` flags) names methods, tasks, label
fractions and seeds. The plan pre-trains one encoder per method (per task dataset for
``supervised``, the oracle trained on that dataset's labels) at each of ``pretrain_seeds`` and runs
every method × task × fraction × seed transfer on each; the suite's given ``encoders`` (no
pre-training) get the same transfers. Run folders are keyed by identity:
``<out>/<suite>/<method>/pretrain[-<dataset>]/s<pretrain seed>/`` and
``<out>/<suite>/<method>/<task>/f<fraction>[/p<pretrain seed>]/s<seed>/`` (``p<k>/`` only for a
pre-training seed other than 0, so the folders of one-seed suites keep their names).

Several pre-training seeds measure the noise of pre-training itself, which is what moves a
number from one CPU to another (the leaderboard gate, :mod:`cxrbench.report.leaderboard`).

The plan is the job graph only (identities and dependencies); :mod:`cxrbench.runner.resolve`
gives every node its run folder, merged config, hash and resources. The suite itself lives in
:mod:`cxrbench.suite`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from cxrbench.suite import Suite, method_runs_task, task_fractions
from cxrbench.suite import load_suite as load_suite  # re-exported for older imports
from cxrbench.tasks import TASKS

log = logging.getLogger(__name__)

#: ``depends_on`` of a transfer on a given encoder (``Suite.encoders``): no pre-training job
GIVEN = "given:"


@dataclass(frozen=True)
class PretrainSpec:
    method: str
    seed: int
    dataset: str | None  # the supervised oracle's dataset
    artifact: str | None = None  # a given encoder's folder (no pre-training job)

    @property
    def key(self) -> str:
        if self.artifact is not None:
            return f"{GIVEN}{self.method}"
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

    @property
    def jobs(self) -> tuple[PretrainSpec | TransferSpec, ...]:
        return (*self.pretrain, *self.transfer)


def pretrain_dir(suite: Suite, spec: PretrainSpec, out: Path) -> Path:
    return Path(out) / suite.name / spec.key


def transfer_dir(suite: Suite, spec: TransferSpec, out: Path) -> Path:
    return Path(out) / suite.name / spec.key


def make_plan(suite: Suite) -> Plan:
    """Every (method, task, fraction, seed) of the suite. A method without an image–text space
    (``supervised``, ``imagenet``) is left out of the tasks that need one (zero-shot,
    retrieval); an encoder the suite names is kept (its run says whether it has a text side)."""
    pretrain: dict[str, PretrainSpec] = {}
    transfer = []
    for method in suite.methods:
        for pretrain_seed in suite.pretrain_seeds:
            for task in suite.tasks:
                if not method_runs_task(method, task):
                    log.warning("%s has no image–text space: left out of %s", method, task)
                    continue
                dataset = TASKS.get(task).dataset if method == "supervised" else None
                spec = PretrainSpec(method, pretrain_seed, dataset)
                pretrain.setdefault(spec.key, spec)
                for fraction in task_fractions(suite, task):
                    for seed in suite.seeds:
                        transfer.append(TransferSpec(method, task, fraction, seed, spec))
    for name, folder in suite.encoders.items():  # evaluated as they are: no pre-training
        given = PretrainSpec(name, 0, None, artifact=folder)
        for task in suite.tasks:
            for fraction in task_fractions(suite, task):
                for seed in suite.seeds:
                    transfer.append(TransferSpec(name, task, fraction, seed, given))
    return Plan(suite, tuple(pretrain.values()), tuple(transfer))
