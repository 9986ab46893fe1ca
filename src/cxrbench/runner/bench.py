"""``cxrbench bench``: suite (file or flags) → data → plan → execute → table."""

from __future__ import annotations

import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from cxrbench.errors import ConfigError
from cxrbench.runner.execute import Outcome, execute
from cxrbench.runner.plan import Suite, check, load_suite, make_plan

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
    ):
        values = getattr(args, flag)
        if values:
            changes[key] = [resolve_task(v) for v in values] if flag == "task" else list(values)
    if args.preset:
        changes["preset"] = args.preset
    if args.data_root:
        changes["data_root"] = args.data_root
    quiet = ["trainer.progress=false"] if args.no_progress else []
    changes["transfer_overrides"] = [*suite.transfer_overrides, *(args.set or []), *quiet]
    changes["pretrain_overrides"] = [*suite.pretrain_overrides, *quiet]
    suite = replace(suite, **changes)
    if not args.suite and (args.method or args.task):
        suite = replace(suite, name=f"{suite.preset}")
    check(suite, "command line")
    return suite


def data_root_for(suite: Suite, progress: bool) -> Path:
    """The suite's data root; the SynthCXR corpus of the preset is generated when missing."""
    if suite.data_root:
        return Path(suite.data_root)
    if suite.preset not in SYNTH_PRESETS:
        raise ConfigError(
            "command line",
            "data_root",
            f"preset {suite.preset!r} runs on real data: pass --data-root",
        )
    root = Path("datasets") / f"synth-{suite.preset}"
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
    for key, reason in outcome.failures:
        log.error("FAILED %s: %s", key, reason)
    return outcome


def table_for(suite: Suite, outcome: Outcome, tables_dir: Path) -> str:
    from cxrbench.report.aggregate import aggregate
    from cxrbench.report.tables import markdown_table, write_table

    cells = aggregate(outcome.records, planned_seeds=len(suite.seeds))
    title = (
        f"{suite.name}: {', '.join(suite.tasks)} · preset {suite.preset} · "
        f"mean ± std over {len(suite.seeds)} seeds"
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
