"""The one resolution step: suite (+ preset, overrides, data root) → a plan of resolved jobs.

:func:`resolve` turns a suite into a :class:`ResolvedPlan`: every pre-training and transfer run as
a frozen, picklable :class:`Job` (its run folder, fully merged and validated config, config hash,
SLURM resources and the pre-training it depends on) plus the list of everything that would stop
the suite (a config that does not validate, a run folder made with another config, a preset that
needs a data root). The local executor (``execute.py``), the SLURM executor (``executors.py``)
and the dry run (``bench.py``) iterate the same jobs, and refuse to start while the list of
problems is not empty: a typo costs seconds, not a pre-training.

This is the only module that merges config layers and computes config hashes:

- pre-training: ``defaults ← configs/method/<m>.yaml ← preset pretrain: ← overrides``
  (:func:`load_config`), the overrides being the suite's, the method's, the seed and, for a job
  with more than one GPU or node, Lightning DDP over them (:func:`pretrain_overrides`);
- transfer: ``configs/task/<t>.yaml ← its fractions.<f>: ← preset transfer: ← preset
  transfer_<kind>: ← preset transfer_<task>: ← overrides`` (:func:`load_task`).

Keys that do not change a result (workers, progress bars, where datasets live) stay out of the
hashes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cxrbench.config import (
    Layer,
    build,
    check_ranges,
    config_hash,
    load_yaml,
    packaged_config,
    parse_overrides,
    to_plain,
    without_keys,
)
from cxrbench.data.formats import DATASETS
from cxrbench.errors import ConfigError, CxrbenchError
from cxrbench.methods import METHODS
from cxrbench.methods.base import PretrainConfig
from cxrbench.runner.plan import PretrainSpec, TransferSpec, make_plan, pretrain_dir, transfer_dir
from cxrbench.runs import ERROR_FILE, finished
from cxrbench.suite import Resources, Suite
from cxrbench.tasks import TASKS
from cxrbench.tasks.base import Task, TaskConfig

#: pre-training keys that do not change what is learned (left out of the config hash); where
#: datasets live is not part of the identity, their contents are fingerprinted
PRETRAIN_NON_RESULT_KEYS = (
    "data.workers",
    *(f"data.{d}" for d in DATASETS),
    "trainer.progress",
    "trainer.log_every",
    "trainer.checkpoint_every",
)
#: pre-training keys added after encoders existed, with their defaults: left out of the hash
#: at the default, so earlier encoders keep their identity
PRETRAIN_KEYS_ADDED = (("text", "depth", None), ("", "recipe", "unified"))
RECIPES = ("unified", "official")
#: ``train.*`` keys added after results existed, with their defaults (off or as before): a
#: config at the default leaves the key out of its hash, so earlier runs keep their identity
TRAIN_KEYS_ADDED = (
    ("min_steps_per_epoch", 0),
    ("max_steps_per_epoch", 0),
    ("ema", 0.0),
    ("val_every", 1),
    ("val_limit", 0),
)
#: ``optim.*`` keys of transfer added after results existed, handled as :data:`TRAIN_KEYS_ADDED`
OPTIM_KEYS_ADDED = (("schedule", "constant"),)
SCHEDULES = ("constant", "cosine")
LOOPS = ("auto", "lightning")
LOSSLESS_STORE = ("off", "exact")  # image-store modes whose pixels are the decoded files'
TRANSFER_NON_RESULT_KEYS = (
    "train.workers",
    "trainer.progress",
    "trainer.checkpoint_every",
    "trainer.loop",
    "train.feature_batch_size",
    "train.map_cache_gib",
    "train.eval_batch_size",
    "data",
)
PRESET_SECTIONS = ("pretrain", "transfer", "transfer_<kind>", "transfer_<task>")
SYNTH_PRESETS = {"tiny": "tiny", "small": "small"}  # trainer preset → its SynthCXR corpus


@dataclass(frozen=True)
class PretrainJob:
    cfg: PretrainConfig
    params: Any  # the method's validated Config instance
    preset: str
    config_hash: str


@dataclass(frozen=True)
class TransferJob:
    task: Task
    cfg: TaskConfig
    config_hash: str
    fraction: float | None = None  # the label fraction the protocol was resolved for


# ------------------------------------------------------------------------------ config layers


def preset_section(preset: str, section: str) -> Layer:
    """A section of ``configs/trainer/<preset>.yaml``: ``pretrain:``, ``transfer:`` (every task)
    ``transfer_<kind>:`` (tasks of one kind, merged after ``transfer:``) or ``transfer_<task>:``
    (one task, merged last: where a task needs its own CPU schedule); empty when absent."""
    from cxrbench.suite import TASK_KINDS

    layer = load_yaml(packaged_config("trainer", preset))
    keys = [str(k) for k in layer.values]
    known = {*PRESET_SECTIONS[:2], *(f"transfer_{k}" for k in (*TASK_KINDS, *TASKS.names()))}
    unknown = sorted(k for k in keys if k not in known)
    if unknown:
        expected = "presets hold " + ", ".join(f"{s}:" for s in PRESET_SECTIONS)
        raise ConfigError(layer.source, unknown[0], expected)
    values = layer.values.get(section) or OmegaConf.create({})
    return Layer(f"{layer.source} ({section}:)", values)


def load_config(
    method: str, preset: str = "small", overrides: list[str] | None = None
) -> PretrainJob:
    """Validate the layered config of ``method`` under ``preset`` (errors name file and key)."""
    cls = METHODS.get(method)
    method_layer = load_yaml(packaged_config("method", method))
    official = method_layer.values.pop("official", None)
    layers = [
        Layer("<defaults>", OmegaConf.create({"method": method})),
        method_layer,
        preset_section(preset, "pretrain"),
        parse_overrides(overrides or []),
    ]
    if not cls.needs_text:  # a preset's required text.model (paper: ???) is not this method's
        layers.append(Layer("<no text model>", OmegaConf.create({"text": {"model": "auto"}})))
    for layer in layers[1:]:
        if "method" in layer.values and layer.values["method"] != method:
            raise ConfigError(layer.source, "method", "cannot change the method to another one")
    cfg = build(PretrainConfig, layers)
    if cfg.recipe not in RECIPES:
        given = next(x.source for x in reversed(layers) if "recipe" in x.values)
        raise ConfigError(given, "recipe", f"one of {', '.join(RECIPES)}, got {cfg.recipe!r}")
    if cfg.recipe == "official":
        if official is None:
            msg = f"method {method!r} has no official: section (docs/methods.md says why)"
            raise ConfigError(method_layer.source, "official", msg)
        # after the preset, before --set: the paper's values where the protocol differs
        layers.insert(3, Layer(f"{method_layer.source} (official:)", official))
        cfg = build(PretrainConfig, layers)
    check_ranges(cfg, layers)
    if cfg.text.padding not in ("longest", "max_length"):
        source = next((x.source for x in reversed(layers) if "padding" in x.values.get("text", {})),
                      None)  # fmt: skip
        msg = f"must be 'longest' or 'max_length', got {cfg.text.padding!r}"
        raise ConfigError(source, "text.padding", msg)
    params: Any = build(cls.Config, [Layer(x.source, x.values.get("params", {})) for x in layers])
    cfg.params = to_plain(params)
    cfg.data.store = _store_mode(cfg.data.store, "data.store")
    return PretrainJob(cfg, params, preset, _pretrain_hash(cfg))


def _pretrain_hash(cfg: PretrainConfig) -> str:
    plain = without_keys(to_plain(cfg), PRETRAIN_NON_RESULT_KEYS)
    for section, key, default in PRETRAIN_KEYS_ADDED:
        where = plain[section] if section else plain
        if where[key] == default:
            del where[key]  # at its default: the hashes of earlier encoders hold
    # trainer.channels_last was removed (read by nothing); hashed at its old default, so the
    # runs made before keep their identity (the paper preset, which set it, changes hash)
    plain["trainer"]["channels_last"] = False
    if plain["data"]["store"] in LOSSLESS_STORE:  # the files' own pixels: nothing changes
        del plain["data"]["store"]
    if not METHODS.get(cfg.method).trains:  # nothing is trained: schedules change nothing
        crop = plain["data"]["crop"]
        plain = without_keys(plain, ["optim", "trainer", "text", "loss_weights", "data"])
        plain["data"] = {"crop": crop}
    return config_hash(plain)


def _fraction_layers(task_layer: Layer, fraction: float | None) -> list[Layer]:
    """The task YAML's ``fractions:`` entry for ``fraction`` (e.g. MGCA's 1% detection lr and
    batch), removed from ``task_layer``; none when absent or when no fraction is given."""
    by_fraction = task_layer.values.pop("fractions", None)
    if by_fraction is None:
        return []
    found = []
    for key, values in by_fraction.items():
        try:
            value = float(key)
        except ValueError:
            msg = f"keys are label fractions such as 0.01, got {key!r}"
            raise ConfigError(task_layer.source, f"fractions.{key}", msg) from None
        if fraction is not None and math.isclose(value, fraction):
            found.append(Layer(f"{task_layer.source} (fractions.{key}:)", values))
    return found


def load_task(
    name: str,
    preset: str = "small",
    overrides: list[str] | None = None,
    fraction: float | None = None,
) -> TransferJob:
    """Validate ``configs/task/<name>.yaml`` (with its ``fractions:`` entry for ``fraction``) +
    the preset's ``transfer:``, ``transfer_<kind>:`` and ``transfer_<task>:`` + ``--set``
    overrides."""
    cls = TASKS.get(name)
    task_layer = load_yaml(packaged_config("task", name))
    layers = [
        task_layer,
        *_fraction_layers(task_layer, fraction),
        preset_section(preset, "transfer"),
        preset_section(preset, f"transfer_{cls.kind}"),
        preset_section(preset, f"transfer_{name}"),
        parse_overrides(overrides or []),
    ]
    cfg = build(TaskConfig, layers)
    check_ranges(cfg, layers)
    if cfg.optim.schedule not in SCHEDULES:
        raise ConfigError(
            None,
            "optim.schedule",
            f"expected one of {', '.join(SCHEDULES)}, got {cfg.optim.schedule!r}",
        )
    cfg.image.store = _store_mode(cfg.image.store, "image.store")
    if cfg.trainer.loop not in LOOPS:
        raise ConfigError(
            None, "trainer.loop", f"expected one of {', '.join(LOOPS)}, got {cfg.trainer.loop!r}"
        )
    if cfg.dataset != cls.dataset:
        raise ConfigError(
            task_layer.source,
            "dataset",
            f"task {name!r} reads {cls.dataset!r}, not {cfg.dataset!r}",
        )
    ignored = [*TRANSFER_NON_RESULT_KEYS, *([] if cfg.probe.augment else ["probe.policy"])]
    plain = without_keys(to_plain(cfg), ignored)  # the policy only matters when augmenting
    if plain["image"]["store"] in LOSSLESS_STORE:
        del plain["image"]["store"]
    if not plain["params"]:
        del plain["params"]  # kinds without system settings keep the hashes they had
    for key, default in TRAIN_KEYS_ADDED:
        if plain["train"][key] == default:
            del plain["train"][key]  # at its default: the hashes of earlier results hold
    for name_, value in OPTIM_KEYS_ADDED:
        if plain["optim"][name_] == value:
            del plain["optim"][name_]
    plain["task"] = {"name": name, **cls.describe()}
    return TransferJob(cls(name, cfg), cfg, config_hash(plain), fraction)


# --------------------------------------------------------------------------- suite → overrides

#: what a job asks for when the suite does not say (gpus: 1 when the preset runs on a GPU)
DEFAULT_RESOURCES = {"nodes": 1, "cpus_per_task": 4, "mem_gb": 16.0, "timeout_min": 240}


def resources_for(suite: Suite, stage: str, name: str) -> Resources:
    """The resolved request of a ``stage`` ("pretrain" or "transfer") job; ``name`` is the method
    (pre-training) or the task kind (transfer)."""
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


# ------------------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class Job:
    """One resolved run: everything a job function needs, nothing left to merge or look up."""

    stage: str  # "pretrain" or "transfer"
    key: str  # identity inside the suite folder (``convirt/rsna_cls/f0.1/s42``)
    suite: str
    method: str
    task: str | None  # transfer only
    kind: str | None  # the task's kind, transfer only
    fraction: float | None  # transfer only
    seed: int  # the transfer seed (a pre-training's own seed for a pre-training)
    pretrain_seed: int
    run_dir: Path
    config: PretrainJob | TransferJob  # merged and validated
    config_hash: str
    resources: Resources
    depends_on: str | None  # key of the pre-training whose encoder a transfer reads
    encoder: Path | None  # that encoder's artifact folder
    data_root: Path
    cache_root: Path
    command: str = "cxrbench"  # for the error report

    @property
    def finished(self) -> bool:
        return finished(self.stage, self.run_dir)

    @property
    def error_file(self) -> Path:
        return self.run_dir / ERROR_FILE


@dataclass(frozen=True)
class ResolvedPlan:
    suite: Suite
    out: Path
    data_root: Path
    jobs: tuple[Job, ...]  # every pre-training, then every transfer, in plan order
    problems: tuple[str, ...] = ()

    @property
    def pretrain(self) -> list[Job]:
        return [j for j in self.jobs if j.stage == "pretrain"]

    @property
    def transfer(self) -> list[Job]:
        return [j for j in self.jobs if j.stage == "transfer"]

    def check(self, what: str = "nothing was run") -> None:
        """Raise :class:`PlanError` naming every problem, if there is one."""
        if self.problems:
            raise PlanError(self.problems, what)


class PlanError(CxrbenchError):
    """The suite cannot start: every problem, one per line."""

    def __init__(self, problems: tuple[str, ...], what: str) -> None:
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s), {what}:\n{lines}")


@dataclass
class _Resolver:
    suite: Suite
    out: Path
    data_root: Path
    cache_root: Path
    command: str
    force: bool
    problems: list[str] = field(default_factory=list)
    tasks: dict[tuple[str, float], TransferJob | None] = field(default_factory=dict)
    given: dict[str, bool] = field(default_factory=dict)  # given encoder key → artifact found

    def pretrain(self, spec: PretrainSpec) -> Job | None:
        try:
            cfg: PretrainJob = load_config(
                spec.method, self.suite.preset, pretrain_overrides(self.suite, spec)
            )
        except CxrbenchError as err:
            self.problems.append(f"{spec.key}: {err}")
            return None
        run_dir = pretrain_dir(self.suite, spec, self.out)
        self._stored_hash(run_dir, cfg.config_hash, "pretrain")
        res = resources_for(self.suite, "pretrain", spec.method)
        return Job("pretrain", spec.key, self.suite.name, spec.method, None, None, None,
                   spec.seed, spec.seed, run_dir, cfg, cfg.config_hash, res, None, None,
                   self.data_root, self.cache_root, self.command)  # fmt: skip

    def transfer(self, spec: TransferSpec, ready: set[str]) -> Job | None:
        cfg = self._task(spec.task, spec.fraction)
        if spec.pretrain.artifact is not None and spec.pretrain.key not in self.given:
            self.given[spec.pretrain.key] = self._given(spec.pretrain)
        if cfg is None or (
            spec.pretrain.key not in ready and not self.given.get(spec.pretrain.key)
        ):
            return None  # its problem is listed once
        run_dir = transfer_dir(self.suite, spec, self.out)
        if not self.force:  # --force deletes the folder before the run
            self._stored_hash(run_dir, cfg.config_hash, "transfer")
        kind = cfg.task.kind
        res = resources_for(self.suite, "transfer", kind)
        if spec.pretrain.artifact is not None:
            encoder = Path(spec.pretrain.artifact)
        else:
            encoder = pretrain_dir(self.suite, spec.pretrain, self.out) / "encoder"
        return Job("transfer", spec.key, self.suite.name, spec.method, spec.task, kind,
                   spec.fraction, spec.seed, spec.pretrain.seed, run_dir, cfg, cfg.config_hash,
                   res, spec.pretrain.key, encoder, self.data_root, self.cache_root,
                   self.command)  # fmt: skip

    def _given(self, spec: PretrainSpec) -> bool:
        """Whether a given encoder's folder holds an artifact (a problem is listed if not)."""
        from cxrbench.models.artifact import read_meta

        try:
            read_meta(Path(str(spec.artifact)))
        except CxrbenchError as err:
            self.problems.append(f"encoders.{spec.method}: {err}")
            return False
        return True

    def _task(self, task: str, fraction: float) -> TransferJob | None:
        if (task, fraction) not in self.tasks:
            try:
                job = load_task(task, self.suite.preset, self.suite.transfer_overrides, fraction)
            except CxrbenchError as err:
                self.problems.append(f"{task} f{fraction:g}: {err}")
                job = None
            self.tasks[(task, fraction)] = job
        return self.tasks[(task, fraction)]

    def _stored_hash(self, run_dir: Path, planned: str, stage: str) -> None:
        """A run folder holding a run made with another config is a problem."""
        stored = run_dir / "config.yaml"
        found = load_yaml(stored).values.get("config_hash") if stored.is_file() else None
        if found not in (None, planned):
            fix = "delete the folder" + (" or pass --force" if stage == "transfer" else "")
            self.problems.append(
                f"{run_dir}: holds a run with config hash {found}, the plan's is {planned}; "
                f"use another --out or {fix}"
            )


def resolve(
    suite: Suite,
    out: Path,
    *,
    cache_root: Path | None = None,
    force: bool = False,
    progress: bool = True,
    command: str = "cxrbench",
) -> ResolvedPlan:
    """Every job of ``suite`` resolved, and every problem that would stop it; reads configs and
    the run folders under ``out``, never the data. ``progress=False`` turns progress bars off
    (not part of any config hash); ``force``: finished transfers are to be run again."""
    if not progress:
        quiet = ["trainer.progress=false"]
        suite = replace(suite, pretrain_overrides=[*suite.pretrain_overrides, *quiet],
                        transfer_overrides=[*suite.transfer_overrides, *quiet])  # fmt: skip
    out = Path(out)
    problems: list[str] = []
    try:
        data_root = data_root_path(suite)
    except ConfigError as err:
        problems.append(str(err))
        data_root = Path("<no data root>")
    cache = cache_root if cache_root is not None else out.parent / "cache" / "features"
    resolver = _Resolver(suite, out, data_root, cache, command, force, problems)
    plan = make_plan(suite)
    jobs = [job for spec in plan.pretrain if (job := resolver.pretrain(spec)) is not None]
    ready = {job.key for job in jobs}
    jobs += [job for spec in plan.transfer if (job := resolver.transfer(spec, ready)) is not None]
    return ResolvedPlan(suite, out, data_root, tuple(jobs), tuple(resolver.problems))


def _store_mode(value: str, key: str) -> str:
    """An image-store mode; YAML reads a bare ``off`` / ``on`` as a boolean (``False`` / ``True``
    reach a string field as text), taken as ``off`` / ``exact``."""
    from cxrbench.data.store import STORE_MODES

    value = {"False": "off", "false": "off", "True": "exact", "true": "exact"}.get(value, value)
    if value not in STORE_MODES:
        raise ConfigError(None, key, f"expected one of {', '.join(STORE_MODES)}, got {value!r}")
    return value
