"""Label-efficiency plots, drawn from the same layout as the tables (:mod:`.tables`).

One figure per suite with a panel per task: x = label fraction on a log axis (ticks at the
fractions run: 1%, 10%, 100%), y = the task's metric × 100, one line per method in the suite's
order with error bars of ± one std over seeds (none for one seed). Points of a method are nudged
sideways a little so overlapping error bars stay apart; an open marker is a cell with fewer seeds
than planned. Published rows (optional) are drawn dashed in the colour of the method they report
on, only where a registered method's row (``key``) matches one of ours and the paper's metric is
our column's (detection papers print MGCA's ``map_mgca``, so they are left out of ``map`` panels).
The legend sits below the panels, never over data. Written as PNG (200 dpi) and PDF (TrueType
fonts) with the command and code version in the file metadata; matplotlib is used through
``Figure`` and the Agg canvas only (no pyplot, no global backend).
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cxrbench.report.suites import METRIC_NAMES, spread_words
from cxrbench.report.tables import ZERO_SHOT, Layout, Row, header_line, suite_layout
from cxrbench.utils.io import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from cxrbench.suite import Suite

DPI = 200
PANEL = (4.2, 3.3)  # inches per task panel
NUDGE = 0.022  # decades between neighbouring methods' points


def _grid(n: int) -> tuple[int, int]:
    cols = n if n <= 3 else 2 if n == 4 else 3
    return math.ceil(n / cols), cols


def label_efficiency_figure(
    layout: Layout, *, title: str = "", method_order: Sequence[str] = ()
) -> Figure:
    """``method_order`` fixes the colours: a method keeps its colour as more runs arrive."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    ours = [r for r in layout.rows if r.reported is None]
    order = list(dict.fromkeys([*method_order, *(r.method for r in ours)]))
    colours = {m: f"C{i % 10}" for i, m in enumerate(order) if any(r.method == m for r in ours)}
    nrows, ncols = _grid(len(layout.tasks))
    fig = Figure(figsize=(PANEL[0] * ncols, PANEL[1] * nrows + 0.9), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, task in zip(axes, layout.tasks, strict=False):
        _panel(ax, layout, task, ours, colours)
    for ax in axes[len(layout.tasks) :]:
        ax.set_visible(False)
    methods = [Line2D([], [], color=colours[r.method], marker="o", label=r.method) for r in ours]
    spread = any(e is not None and e.std is not None for r in ours for e in r.entries)
    keys = [Line2D([], [], color="0.2", label="ours" + (": mean ± std over seeds" * spread))]
    cited = {r.reported.citation: None for t in layout.tasks
             for r, _, _ in _drawn_reported(layout, t, colours) if r.reported}  # fmt: skip
    if cited:
        label = "reported: " + "; ".join(cited)
        keys.append(Line2D([], [], color="0.2", ls="--", marker="x", label=label))
    if layout.partial:
        keys.append(
            Line2D([], [], color="0.2", marker="o", mfc="white", ls="", label="fewer seeds")
        )
    width = max(len(methods), len(keys))
    blank = Line2D([], [], alpha=0.0, label=" ")
    grid = [methods + [blank] * (width - len(methods)), keys + [blank] * (width - len(keys))]
    handles = [line[c] for c in range(width) for line in grid]  # column-major: methods on top
    fig.legend(handles=handles, loc="outside lower center", ncols=width)
    if title:
        fig.suptitle(title)
    return fig


def _panel(ax, layout: Layout, task: str, ours: Sequence[Row], colours: dict[str, str]) -> None:
    idx = [i for i, c in enumerate(layout.columns) if c.task == task]
    fractions = [layout.columns[i].fraction for i in idx]
    for k, row in enumerate(ours):
        shift = 10 ** ((k - (len(ours) - 1) / 2) * NUDGE)
        points = [(layout.columns[i].fraction, e) for i in idx if (e := row.entries[i]) is not None]
        if not points:
            continue
        xs = [f * shift for f, _ in points]
        ys = [e.mean for _, e in points]
        err = [e.std or 0.0 for _, e in points]
        colour = colours[row.method]
        ax.errorbar(xs, ys, yerr=err, color=colour, marker="o", ms=5, capsize=3, lw=1.6)
        partial = [(x, e.mean) for x, (_, e) in zip(xs, points, strict=True) if not e.complete]
        if partial:
            px, py = zip(*partial, strict=True)
            ax.plot(px, py, ls="", marker="o", ms=5, mfc="white", color=colour, zorder=3)
    for row, xs, ys in _drawn_reported(layout, task, colours):
        assert row.reported is not None
        ax.plot(xs, ys, ls="--", marker="x", ms=5, lw=1.2, alpha=0.8,
                color=colours[row.reported.key])  # fmt: skip
    metric, column = layout.metric_of(task), layout.columns[idx[0]]
    ax.set_xscale("log")
    labels = [layout.columns[i].label for i in idx]  # ZERO_SHOT for a task using no labels
    ax.set_xticks(fractions, labels)
    ax.minorticks_off()
    ax.set_xlim(min(fractions) / 1.8, max(fractions) * 1.8)
    ax.set_xlabel("label fraction" if labels != [ZERO_SHOT] else "no labels (nothing trained)")
    scaled = " (× 100)" if column.scale == 100 else ""
    lower = "" if column.higher_is_better else ", lower is better"
    ax.set_ylabel(f"{METRIC_NAMES.get(metric, metric)}{scaled}{lower}")
    ax.set_title(task)
    ax.grid(True, alpha=0.3)


def _drawn_reported(
    layout: Layout, task: str, colours: dict[str, str]
) -> list[tuple[Row, list[float], list[float]]]:
    """Reported rows on a method we ran, with their points of ``task`` in our metric."""
    drawn = []
    for row in layout.reported:
        if row.reported is None or row.reported.key not in colours:
            continue
        points = [
            (c.fraction, e.mean)
            for c, e in zip(layout.columns, row.entries, strict=True)
            if c.task == task and e is not None and not e.metric
        ]
        if points:
            drawn.append((row, [f for f, _ in points], [v for _, v in points]))
    return drawn


def write_figure(fig: Figure, stem: Path, command: str, version: str | None = None) -> list[Path]:
    """``stem``.png and ``stem``.pdf, written atomically, the command in their metadata."""
    note = header_line("csv", command, version)[2:].strip()  # "generated by: ..."
    fonts = logging.getLogger("fontTools")  # subsetting TrueType fonts logs every glyph at INFO
    level = fonts.level
    fonts.setLevel(max(level, logging.WARNING))
    try:
        return [_save(fig, Path(f"{stem}.{ext}"), meta) for ext, meta in (
            ("png", {"Description": note}),
            ("pdf", {"Subject": note, "CreationDate": None}),
        )]  # fmt: skip
    finally:
        fonts.setLevel(level)


def _save(fig: Figure, path: Path, metadata: dict) -> Path:
    import matplotlib

    buffer = io.BytesIO()
    with matplotlib.rc_context({"pdf.fonttype": 42}):
        fig.savefig(buffer, format=path.suffix[1:], dpi=DPI, metadata=metadata,
                    bbox_inches="tight", pad_inches=0.1)  # fmt: skip
    atomic_write_bytes(path, buffer.getvalue())
    return path


def write_suite_plot(
    suite: Suite,
    runs: Path,
    out: Path,
    *,
    command: str,
    published: str | None = None,
    published_dir: Path = Path("results/published"),
) -> list[Path]:
    """``cxrbench plot``: ``out/<suite>_label_efficiency.png`` and ``.pdf``."""
    layout, _ = suite_layout(suite, runs, published, published_dir)
    spread = spread_words(suite)
    data = "real data" if suite.data_root else f"SynthCXR {suite.preset}"
    trained = any(c.label != ZERO_SHOT for c in layout.columns)
    kind = "label efficiency" if trained else "zero-shot and retrieval"
    title = f"{suite.name}: {kind} · {data} · {spread}"
    fig = label_efficiency_figure(layout, title=title, method_order=suite.rows)
    return write_figure(fig, Path(out) / f"{suite.name}_label_efficiency", command)
