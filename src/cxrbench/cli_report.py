"""The report commands of ``cxrbench``: ``leaderboard check|update``, ``table``, ``plot`` and
``compare``.

They read result records and suites only (:mod:`cxrbench.report`, :mod:`cxrbench.suite`), never
the runner; :func:`cxrbench.cli.build_parser` registers them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def _emit(text: str) -> None:
    sys.stdout.write(text + "\n")


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from cxrbench.report.leaderboard_text import run_check, run_update

    runs, boards = Path(args.runs), Path(args.leaderboards)
    if args.leaderboard_command == "check":
        report, status = run_check(args.suite, runs, boards)
        _emit(report)
        if status:
            sys.stderr.write(
                f"cxrbench: error: leaderboard check of {args.suite} failed: entries regressed, "
                "incomparable or missing (listed above)\n"
            )
        return status
    from cxrbench.utils.io import check_writable

    check_writable(boards, "leaderboards folder")
    _emit(run_update(args.suite, runs, boards, floor=args.floor, alpha=args.alpha))
    return 0


def add_leaderboard(sub: Any) -> None:
    lb = sub.add_parser("leaderboard", help="check runs against a suite's baseline, or update it")
    lsub = lb.add_subparsers(dest="leaderboard_command", metavar="LEADERBOARD_COMMAND")
    lsub.required = True
    check = lsub.add_parser("check", help="ok/improved/regressed/...; exit 1 on a failure")
    update = lsub.add_parser("update", help="rewrite the baseline from the runs, print the diff")
    for p in (check, update):
        p.add_argument("--suite", required=True, help="suite file (benchmarks/*.yaml) or name")
        p.add_argument("--runs", default="results/runs", help="runs folder (bench --out)")
        p.add_argument("--leaderboards", default="results/leaderboards", help="baselines folder")
        p.set_defaults(func=cmd_leaderboard)
    update.add_argument(
        "--floor", type=float, default=None, help="absolute drift floor added to every margin"
    )
    update.add_argument(
        "--alpha", type=float, default=None, help="one-sided false-alarm rate per entry"
    )


def _report_command(args: argparse.Namespace) -> str:
    """The command, rebuilt from its options, for the header of the files it writes."""
    import shlex

    parts = ["cxrbench", args.command]
    for name in args.suite:
        parts += ["--suite", name]
    for fmt in getattr(args, "format", None) or []:
        parts += ["--format", fmt]
    if args.published:
        parts += ["--published", args.published]
    for flag, value, default in (
        ("--published-dir", args.published_dir, "results/published"),
        ("--runs", args.runs, "results/runs"),
        ("--out", args.out, "results/tables"),
    ):
        if value != default:
            parts += [flag, value]
    flags = [f for f in ("plot", "ci") if getattr(args, f, False)]
    return shlex.join(parts + [f"--{f}" for f in flags])


def cmd_table(args: argparse.Namespace) -> int:
    from cxrbench.report.tables import write_suite_tables
    from cxrbench.suite import load_suite_arg
    from cxrbench.utils.io import check_writable

    check_writable(args.out, "tables folder")
    formats = list(dict.fromkeys(args.format or ["md"]))
    args.format = formats
    for name in args.suite:
        suite = load_suite_arg(name)
        options = dict(published=args.published, published_dir=Path(args.published_dir))
        written = write_suite_tables(suite, Path(args.runs), Path(args.out), formats,
                                     command=_report_command(args), ci=args.ci,
                                     **options)  # fmt: skip
        for _, text in written:
            _emit(text)
        if args.plot:
            from cxrbench.report.plots import write_suite_plot

            paths = write_suite_plot(suite, Path(args.runs), Path(args.out),
                                     command=_report_command(args), **options)  # fmt: skip
            _emit("\n".join(str(p) for p in paths))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from cxrbench.report.plots import write_suite_plot
    from cxrbench.suite import load_suite_arg
    from cxrbench.utils.io import check_writable

    check_writable(args.out, "tables folder")
    for name in args.suite:
        paths = write_suite_plot(load_suite_arg(name), Path(args.runs), Path(args.out),
                                 command=_report_command(args), published=args.published,
                                 published_dir=Path(args.published_dir))  # fmt: skip
        _emit("\n".join(str(p) for p in paths))
    return 0


def add_report(sub: Any) -> None:
    t = sub.add_parser("table", help="paper table of a suite's runs: Markdown, LaTeX, CSV")
    t.add_argument("--format", action="append", choices=("md", "tex", "csv"),
                   help="repeatable (default md); writes OUT/<suite>.<format>")  # fmt: skip
    t.add_argument("--plot", action="store_true", help="also write the label-efficiency plot")
    t.add_argument("--ci", action="store_true",
                   help="95%% bootstrap intervals instead of ± std (from the runs' predictions), "
                   "bold: each column's best and every method not significantly different "
                   "(cxrbench compare)")  # fmt: skip
    t.set_defaults(func=cmd_table)
    p = sub.add_parser("plot", help="label-efficiency plot of a suite's runs: PNG and PDF")
    p.set_defaults(func=cmd_plot)
    for q in (t, p):
        q.add_argument("--suite", action="append", required=True,
                       help="suite file or name in benchmarks/ (repeatable)")  # fmt: skip
        q.add_argument("--published", nargs="?", const="suite", choices=("suite", "all"),
                       help="add rows quoted from papers under the same protocol: of the "
                       "suite's methods (default) or all")  # fmt: skip
        q.add_argument("--published-dir", default="results/published", help="published rows")
        q.add_argument("--runs", default="results/runs", help="runs folder (bench --out)")
        q.add_argument("--out", default="results/tables", help="output folder")


def cmd_compare(args: argparse.Namespace) -> int:
    from cxrbench.report.compare import compare, render

    comparison = compare(
        args.suite,
        Path(args.runs),
        args.method,
        args.metric,
        resamples=args.resamples,
        bootstrap_seed=args.bootstrap_seed,
        level=args.level,
        seeds=args.seeds,
    )
    sys.stdout.write(render(comparison, args.format))
    return 0


def add_compare(sub: Any) -> None:
    from cxrbench.report.compare import DEFAULT_LEVEL, DEFAULT_RESAMPLES, FORMATS, SEED_MODES

    c = sub.add_parser(
        "compare",
        help="differences between methods per (task, fraction): paired bootstrap CI and "
        "Holm-adjusted p-value from the runs' test predictions",
    )
    c.add_argument("--suite", required=True, help="suite file (benchmarks/*.yaml) or name")
    c.add_argument("--runs", default="results/runs", help="runs folder (bench --out)")
    c.add_argument("--method", action="append",
                   help="a method to compare (repeatable; every pair, A − B in the order "
                   "given); default: the suite's methods")  # fmt: skip
    c.add_argument("--metric", default=None,
                   help="e.g. auroc, accuracy, dice, map, map_mgca, map50 (default: each "
                   "task's primary metric)")  # fmt: skip
    c.add_argument("--format", default="md", choices=FORMATS, help="output on stdout")
    c.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES,
                   help=f"bootstrap resamples (default {DEFAULT_RESAMPLES})")  # fmt: skip
    c.add_argument("--bootstrap-seed", type=int, default=0, help="the same seed, the same output")
    c.add_argument("--level", type=float, default=DEFAULT_LEVEL, help="confidence level")
    c.add_argument("--seeds", choices=SEED_MODES, default="resample",
                   help="resample: draw each method's runs with replacement too (default); "
                   "fixed: resample test images only")  # fmt: skip
    c.set_defaults(func=cmd_compare)
