"""The ``cxrbench`` command line (also ``python -m cxrbench``).

Sub-commands register themselves in :func:`build_parser`; every user error is a
:class:`CxrbenchError` printed as one line on stderr (exit status 2), never a traceback.
Results go to stdout; logs, errors and failure summaries to stderr. Exit statuses (README,
"Errors and exit statuses"): 0 success, 1 a check or run that failed (bench jobs,
``leaderboard check``, ``data inspect``), 2 a user error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cxrbench import __version__
from cxrbench.cli_report import add_compare, add_leaderboard, add_report
from cxrbench.errors import CxrbenchError, describe
from cxrbench.log import setup_logging
from cxrbench.utils.io import check_writable

LISTABLE = ("methods", "tasks", "datasets", "presets", "synth-presets", "import-formats")


def _dataset_keys() -> tuple[str, ...]:
    from cxrbench.data.formats import DATASETS

    return DATASETS


def _trainer_presets() -> list[str]:
    from cxrbench.config import packaged_names

    return packaged_names("trainer")


class _Deprecated(argparse.Action):
    """An old spelling of a flag: works, and says which one to use."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str = "", **kw: Any):
        super().__init__(option_strings, dest, **kw)
        self.new = new

    def __call__(self, parser: Any, namespace: Any, values: Any, option: str | None = None):
        sys.stderr.write(f"cxrbench: warning: {option} is deprecated, use {self.new}\n")
        if self.nargs in ("+", "*"):  # an extending flag (--set): add to what is there
            values = [*(getattr(namespace, self.dest, None) or []), *values]
        setattr(namespace, self.dest, values)


def _data_root_flag(p: Any, help: str, required: bool = True, default: str | None = None) -> None:
    """``--data-root`` (and the old ``--root``, deprecated)."""
    group = p.add_mutually_exclusive_group(required=required)
    group.add_argument("--data-root", default=default, help=help)
    group.add_argument("--root", dest="data_root", action=_Deprecated, new="--data-root",
                       help=argparse.SUPPRESS)  # fmt: skip


def _emit(text: str) -> None:
    sys.stdout.write(text + "\n")


def _fail(text: str) -> None:
    """A failure summary, on stderr."""
    sys.stderr.write(f"cxrbench: error: {text}\n")


def cmd_ls(args: argparse.Namespace) -> int:
    kinds = [args.what] if args.what else list(LISTABLE)
    for kind in kinds:
        names = _list(kind)
        if args.what:
            for name in names:
                _emit(name)
        else:
            _emit(f"{kind}: {', '.join(names) if names else '(none registered yet)'}")
    return 0


def _list(kind: str) -> list[str]:
    if kind == "methods":
        from cxrbench.methods import METHODS

        return METHODS.names()
    if kind == "tasks":
        from cxrbench.tasks import TASKS

        return TASKS.names()
    if kind == "datasets":
        from cxrbench.data.formats import FOLDERS

        return [f"{key} ({folder})" for key, folder in FOLDERS.items()]
    if kind == "presets":  # what --preset takes (configs/trainer/)
        return _trainer_presets()
    if kind == "import-formats":  # what `import --from` takes
        from cxrbench.importers import FORMATS

        return FORMATS.names()
    from cxrbench.synth import PRESETS  # what `data synth --preset` takes

    return list(PRESETS)


def cmd_data_synth(args: argparse.Namespace) -> int:
    from cxrbench.synth import generate

    check_writable(args.out, "output data root")
    summary = generate(
        Path(args.out),
        preset=args.preset,
        seed=args.seed,
        workers=args.workers,
        progress=not args.no_progress,
    )
    _emit(json.dumps(summary, indent=2))
    return 0


def cmd_data_splits(args: argparse.Namespace) -> int:
    from cxrbench.data.splits import STANDARD_FRACTIONS, make_splits

    splits = make_splits(args.dataset, _dataset_dir(args), force=args.force)
    summary: dict[str, object] = {
        "dataset": args.dataset,
        "directory": str(splits.directory),
        "split_hash": splits.split_hash,
        "counts": {p: len(splits.part(p)) for p in ("train", "val", "test")},
    }
    if splits.class_names:  # a fraction that loses a class says why instead of a count
        fractions: dict[str, object] = {}
        for f in STANDARD_FRACTIONS:
            try:
                fractions[f"{f:g}"] = len(splits.fraction(f))
            except CxrbenchError as err:
                fractions[f"{f:g}"] = f"unusable: {err}"
        summary["fractions"] = fractions
    _emit(json.dumps(summary, indent=2))
    return 0


def cmd_data_cache(args: argparse.Namespace) -> int:
    import time

    from cxrbench.data.store import ImageStore, dataset_images

    start = time.perf_counter()
    paths = dataset_images(args.dataset, _dataset_dir(args))
    store = ImageStore.ensure(paths, args.size, cache_root=Path(args.out), decoder=args.decoder,
                              progress=not args.no_progress, workers=args.workers)  # fmt: skip
    summary = {
        "dataset": args.dataset,
        "store": str(store.folder),
        "size": store.size,
        "decoder": store.decoder,
        "images": len(store),
        "seconds": round(time.perf_counter() - start, 1),
    }
    _emit(json.dumps(summary, indent=2))
    return 0


def _dataset_dir(args: argparse.Namespace) -> Path:
    """``--data-root``: a data root holding the dataset's folder, or that folder itself."""
    from cxrbench.data.formats import FOLDERS

    root = Path(args.data_root)
    inside = root / FOLDERS[args.dataset]
    return inside if inside.is_dir() else root


#: problems written to stderr by ``data inspect`` (all of them are in the JSON on stdout)
INSPECT_STDERR_PROBLEMS = 50


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from cxrbench.data.inspect import inspect_dataset

    folder = _dataset_dir(args)
    summary, problems = inspect_dataset(
        args.dataset, folder, quick=args.quick, progress=not args.no_progress
    )
    _emit(json.dumps({**summary, "problems": problems}, indent=2))
    if problems:
        sys.stdout.flush()
        for problem in problems[:INSPECT_STDERR_PROBLEMS]:
            sys.stderr.write(f"cxrbench: error: {problem}\n")
        more = len(problems) - INSPECT_STDERR_PROBLEMS
        if more > 0:
            sys.stderr.write(f"cxrbench: error: ... and {more} more (all in the JSON's problems)\n")
        sys.stderr.write(f"cxrbench: error: {len(problems)} problem(s) in {folder}\n")
    return 1 if problems else 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from cxrbench.runner.pretrain import default_run_dir, run_pretrain
    from cxrbench.runner.resolve import load_config

    overrides = list(args.set or [])
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.no_progress:
        overrides.append("trainer.progress=false")
    job = load_config(args.method, args.preset, overrides)
    run_dir = default_run_dir(job, Path(args.out) if args.out else None)
    check_writable(run_dir, "run folder")  # before any work: not after the training
    artifact = run_pretrain(job, Path(args.data_root), run_dir)
    _emit(str(artifact))
    return 0


def cmd_pretrain_text(args: argparse.Namespace) -> int:
    from cxrbench.models.text_corpus import pretrain_text

    if args.out:
        check_writable(args.out, "model folder")
    summary = pretrain_text(Path(args.data_root), Path(args.out) if args.out else None,
                            preset=args.preset, seed=args.seed, force=args.force,
                            progress=not args.no_progress, objective=args.objective)  # fmt: skip
    if args.evaluate:
        from cxrbench.models.text_corpus import mimic_folder, record_evaluation
        from cxrbench.models.text_eval import evaluate_text_model

        folder = mimic_folder(Path(args.data_root))
        summary["evaluation"] = evaluate_text_model(Path(summary["path"]), folder)
        record_evaluation(Path(summary["path"]), summary["evaluation"])
    _emit(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from cxrbench.runner.pretrain import export_checkpoint

    check_writable(Path(args.out) if args.out else Path(args.run) / "encoder", "artifact folder")
    artifact = export_checkpoint(Path(args.run), Path(args.ckpt) if args.ckpt else None,
                                 Path(args.out) if args.out else None)  # fmt: skip
    _emit(str(artifact))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from cxrbench.importers import import_checkpoint

    check_writable(Path(args.out), "artifact folder")
    report = import_checkpoint(
        args.format, Path(args.checkpoint), Path(args.out), backbone=args.backbone,
        ignore=tuple(args.ignore or ()), image_size=args.image_size,
        normalization=args.normalization, prefix=args.prefix,
    )  # fmt: skip
    for line in report.lines():
        _emit(line)
    _emit(f"encoder artifact: {args.out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from cxrbench.runner import bench
    from cxrbench.runner.execute import log_failures

    suite = bench.suite_from_args(args)
    out = Path(args.out)
    if args.dry_run:
        plan = bench.resolve_bench(suite, out, force=args.force)
        _emit(bench.dry_run(suite, out, executor=args.executor, force=args.force, plan=plan))
        if plan.problems:
            _fail(f"{len(plan.problems)} problem(s), listed above")
        return 2 if plan.problems else 0
    check_writable(out, "runs folder")  # before any work, as are the folders beside it
    check_writable(out.parent / "tables", "tables folder")
    check_writable(out.parent / "cache", "cache folder")
    if args.executor == "slurm":
        submission = bench.submit_bench(suite, out, force=args.force)
        _emit(submission.summary())
        if not args.wait:
            return 0
        outcome = submission.wait()
        log_failures(outcome)
    else:
        outcome = bench.run_bench(suite, out, force=args.force, progress=not args.no_progress)
    if outcome.records:
        _emit(bench.table_for(suite, out, out.parent / "tables"))
    if not outcome.ok:
        _fail(f"{len(outcome.failures)} job(s) failed (each logged above; error.txt in its run "
              "folder)")  # fmt: skip
    return 0 if outcome.ok else 1


def _add_bench(sub: Any) -> None:
    b = sub.add_parser("bench", help="pre-train, transfer and tabulate a grid (or a suite file)")
    b.add_argument("--method", action="append", help="a registered method (repeatable)")
    b.add_argument("--task", action="append", help="a registered task (repeatable)")
    b.add_argument("--fraction", action="append", type=float, help="label fraction (repeatable)")
    b.add_argument("--seed", action="append", type=int, help="transfer seed (repeatable)")
    b.add_argument(
        "--pretrain-seed",
        action="append",
        type=int,
        help="pre-training seed (repeatable; replaces the suite's pretrain_seeds)",
    )
    b.add_argument(
        "--encoder",
        action="append",
        metavar="NAME=DIR",
        help="also evaluate the encoder artifact in DIR (e.g. from `cxrbench import`) as row NAME, "
        "without pre-training (repeatable; alone, without --method, only these rows)",
    )
    b.add_argument("--suite", default=None, help="suite file (benchmarks/*.yaml)")
    b.add_argument("--name", default=None,
                   help="the suite's name (its folder under --out); default: the suite file's, "
                   "or one derived from the grid when flags make or change it")  # fmt: skip
    b.add_argument("--preset", default=None, choices=_trainer_presets())
    _data_root_flag(b, "default: the preset's SynthCXR corpus", required=False)
    b.add_argument("--out", default="results/runs", help="runs folder")
    b.add_argument(
        "--set", action="extend", nargs="+", metavar="KEY=VALUE", help="transfer config overrides"
    )
    b.add_argument(
        "--pretrain-set",
        action="extend",
        nargs="+",
        metavar="KEY=VALUE",
        help="pre-training config overrides (e.g. text.model=PATH for the paper preset)",
    )
    b.add_argument("--force", action="store_true", help="re-run transfers that exist")
    b.add_argument("--no-progress", action="store_true")
    b.add_argument(
        "--executor",
        choices=("local", "slurm"),
        default="local",
        help="local: every job here, in order; slurm: submit them (submitit) with dependencies",
    )
    b.add_argument("--wait", action="store_true", help="slurm: wait for the jobs, then tabulate")
    b.add_argument(
        "--dry-run", action="store_true", help="print the plan and its estimated cost; run nothing"
    )
    b.set_defaults(func=cmd_bench)


def _add_pretrain(sub: Any) -> None:
    p = sub.add_parser("pretrain", help="pre-train a method and export its encoder artifact")
    p.add_argument("--method", required=True, help="a registered method (cxrbench ls methods)")
    _data_root_flag(p, "data root holding mimic-cxr-jpg/")
    p.add_argument("--preset", default="small", choices=_trainer_presets())
    p.add_argument("--seed", type=int, default=None, help="pre-training seed (default 0)")
    p.add_argument("--out", default=None, help="runs folder (default results/runs/pretrain)")
    p.add_argument("--pretrain-set", dest="set", action="extend", nargs="+", metavar="KEY=VALUE",
                   help="pre-training config overrides (dotted keys), as in bench")  # fmt: skip
    p.add_argument("--set", dest="set", nargs="+", action=_Deprecated, new="--pretrain-set",
                   help=argparse.SUPPRESS)  # fmt: skip
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_pretrain)

    t = sub.add_parser("pretrain-text", help="train the small corpus BERT (no downloads)")
    _data_root_flag(t, "data root holding mimic-cxr-jpg/ (or it)")
    t.add_argument("--out", default=None, help="model folder (default next to the corpus)")
    t.add_argument("--preset", default="small", choices=_trainer_presets())
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--force", action="store_true", help="retrain over an existing model")
    t.add_argument("--objective", default="mlm", choices=("mlm", "mlm+sections"),
                   help="mlm: masked-language modelling; mlm+sections: plus CXR-BERT-style "
                   "findings-impression matching (models/text_pretrain.py)")  # fmt: skip
    t.add_argument("--evaluate", action="store_true",
                   help="measure the frozen [CLS] (collapse, linear and cosine k-NN label "
                   "probes, findings-to-impression R@1: models/text_eval.py), kept in the "
                   "summary")  # fmt: skip
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_pretrain_text)

    e = sub.add_parser("export", help="export the encoder artifact of a pre-training run")
    e.add_argument("--run", required=True, help="the pre-training run folder")
    e.add_argument("--ckpt", default=None, help="checkpoint (default checkpoints/last.ckpt)")
    e.add_argument("--out", default=None, help="artifact folder (default RUN/encoder)")
    e.set_defaults(func=cmd_export)

    i = sub.add_parser(
        "import",
        help="a released checkpoint → an encoder artifact (strict key map, weights-only load)",
        description="Import the image encoder of a released checkpoint. Every key the backbone "
        "needs must be found with its shape, and every other key must be covered by a named "
        "rule of the format (text tower, projection heads, ...) or by --ignore. "
        "`cxrbench ls import-formats` lists the formats (docs/importing.md describes each).",
    )
    i.add_argument("checkpoint", help=".ckpt / .pth / .pt / .bin (weights-only) or .safetensors")
    i.add_argument(
        "--from", dest="format", required=True, help="checkpoint format (ls import-formats)"
    )
    i.add_argument("--out", required=True, help="artifact folder to write")
    i.add_argument(
        "--backbone", default=None, help="the format's backbone (default: from the keys)"
    )
    ignore_help = "also leave out checkpoint keys starting with PREFIX (repeatable)"
    i.add_argument("--ignore", action="append", metavar="PREFIX", help=ignore_help)
    size_help = "input size recorded in the artifact (default: the format's, 224)"
    i.add_argument("--image-size", type=int, default=None, help=size_help)
    norm_help = (
        "input statistics the weights expect, instead of the format's: half (mean / std 0.5), "
        "imagenet, unit (pixels in [0, 1], not normalised) or clip (OpenAI CLIP's)"
    )
    i.add_argument("--normalization", default=None, help=norm_help)
    prefix_help = (
        "the image encoder's keys are those under PREFIX, in the format's layout (a BenchX "
        "checkpoint: --from torchvision --prefix cnn.model.)"
    )
    i.add_argument("--prefix", default=None, help=prefix_help)
    i.set_defaults(func=cmd_import)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxrbench",
        description="Pre-train chest X-ray vision-language methods and compare their "
        "encoders under one protocol.",
    )
    parser.add_argument("--version", action="version", version=f"cxrbench {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    ls = sub.add_parser(
        "ls", help="list methods, tasks, datasets, presets (--preset) and synth-presets"
    )
    ls.add_argument("what", nargs="?", choices=LISTABLE, help="one kind, one name per line")
    ls.set_defaults(func=cmd_ls)

    data = sub.add_parser("data", help="synthetic corpus, splits, checking downloads")
    dsub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    synth = dsub.add_parser("synth", help="generate the SynthCXR corpus in the official formats")
    synth.add_argument("--out", required=True, help="output data root")
    synth.add_argument("--preset", default="small", choices=("tiny", "small", "ci", "full"))
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    synth.add_argument("--no-progress", action="store_true")
    synth.set_defaults(func=cmd_data_synth)

    splits = dsub.add_parser("splits", help="make (or check) the stored train/val/test splits")
    splits.add_argument("--dataset", required=True, choices=_dataset_keys())
    _data_root_flag(splits, "a data root holding the dataset's folder, or that folder")
    splits.add_argument("--force", action="store_true", help="remake even if stored splits exist")
    splits.set_defaults(func=cmd_data_splits)

    cache = dsub.add_parser(
        "cache",
        help="decode a dataset's images once into the preprocessed image store (data.store / "
        "image.store read it)",
    )
    cache.add_argument("--dataset", required=True, choices=_dataset_keys())
    _data_root_flag(cache, "a data root holding the dataset's folder, or that folder")
    cache.add_argument("--size", type=int, required=True,
                       help="the long side the images are kept at: the runs' resize (data.resize "
                       "for pre-training, image.resize for tasks)")  # fmt: skip
    cache.add_argument("--decoder", default="exact", choices=("exact", "draft"),
                       help="exact: the decoded files' pixels; draft: JPEG DCT-domain "
                       "downscaling, faster, pixels differ (docs/performance.md)")  # fmt: skip
    cache.add_argument("--out", default="results/cache/images",
                       help="the stores' folder (bench: <out>/../cache/images, so "
                       "results/cache/images for the default --out)")  # fmt: skip
    cache.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    cache.add_argument("--no-progress", action="store_true")
    cache.set_defaults(func=cmd_data_cache)

    inspect = dsub.add_parser(
        "inspect",
        help="summarise a dataset folder as JSON, decode its images, list problems (exit 1)",
    )
    inspect.add_argument("--dataset", required=True, choices=_dataset_keys())
    _data_root_flag(inspect, "a data root holding the dataset's folder, or that folder")
    inspect.add_argument(
        "--quick",
        action="store_true",
        help="decode a fixed sample of up to 64 images (evenly spaced over the listing, first and "
        "last included) instead of all; every image's header is still checked",
    )
    inspect.add_argument("--no-progress", action="store_true")
    inspect.set_defaults(func=cmd_data_inspect)
    _add_pretrain(sub)
    _add_bench(sub)
    add_leaderboard(sub)
    add_report(sub)
    add_compare(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status (README, "Errors and exit statuses")."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    func: Callable[[argparse.Namespace], int] = args.func
    interrupted = _Interrupts()
    try:
        return func(args)
    except CxrbenchError as exc:
        _fail(str(exc))
        return 2
    except OSError as exc:  # a file error no helper named: the system's words and the file
        if args.verbose:
            raise
        where = f"{exc.filename}: " if exc.filename is not None else ""
        _fail(f"{where}{describe(exc, exc.filename)} (-v shows the traceback)")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("cxrbench: interrupted\n")
        return 130
    except SystemExit:
        if interrupted.seen:  # Lightning turns Ctrl-C during fit into sys.exit(1)
            sys.stderr.write("cxrbench: interrupted\n")
            return 130
        raise
    finally:
        interrupted.restore()
        sys.stdout.flush()


class _Interrupts:
    """Notes a Ctrl-C (SIGINT) and raises ``KeyboardInterrupt`` as Python does, so ``main`` can
    exit 130 also where a library catches the interrupt and exits itself."""

    def __init__(self) -> None:
        self.seen = False
        self.previous = signal.getsignal(signal.SIGINT)
        self.installed = False
        if self.previous is signal.default_int_handler:  # not when SIGINT is ignored or custom
            try:
                signal.signal(signal.SIGINT, self._handle)
                self.installed = True
            except ValueError:  # not the main thread
                pass

    def _handle(self, signum: int, frame: object) -> None:
        self.seen = True
        raise KeyboardInterrupt

    def restore(self) -> None:
        if self.installed:
            signal.signal(signal.SIGINT, self.previous)


if __name__ == "__main__":
    raise SystemExit(main())
