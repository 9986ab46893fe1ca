"""Tables generated from result records (never typed by hand): the MGCA table shape.

One layout, three renderers. :func:`build_layout` turns aggregated cells (and optionally rows
quoted from papers, :mod:`cxrbench.report.published`) into rows = methods in the given order, then
the reported rows; column groups = tasks; columns = label fractions. :func:`render_markdown`,
:func:`render_latex` and :func:`render_csv` print it.

- Cells are ``mean ± std`` over seeds (the mean alone for one seed: no misleading ± 0), ×100 for
  AUROC, accuracy, Dice and mAP as the papers print them; ``–`` (LaTeX ``--``) where no run
  exists; ``†`` on cells with fewer seeds than planned.
- The best mean of each column among **our** runs is bold, by the metric's direction. Reported
  rows (``‡``) never compete and are never bold: they come from other code, data and hardware.
- A reported value whose metric differs from our column's (detection: the papers print MGCA's
  ``map_mgca``, our column is ``map``) carries ``§`` and a footnote saying so.
- Below the methods, italic rows give each column's trivial reference (:mod:`cxrbench.report.
  references`: ``chance``, ``majority class``, ``no detections``, ``all-empty mask``), scaled like
  the column, never ranked or bold, one caption sentence saying what they are; ``–`` where the
  reference depends on the test set and no run of the column kept its predictions. CSV: rows
  with ``source`` ``reference``.
- Every written file starts with a comment naming the command and the code version
  (:func:`header_line`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cxrbench.report.aggregate import Cell
from cxrbench.report.published import PublishedRow
from cxrbench.report.references import LABELS, MEANING, ORDER, TestValues, reference
from cxrbench.report.suites import (
    METRIC_NAMES,
    PAPER_SCALE,
    planned_runs,
    reported_rows,
    suite_caption,
    suite_record_paths,
)
from cxrbench.utils.io import atomic_write_text

if TYPE_CHECKING:
    from cxrbench.report.compare import Interval
    from cxrbench.report.schema import ResultRecord
    from cxrbench.suite import Suite

FORMATS = {"md": "md", "tex": "tex", "csv": "csv"}  # --format → file extension
REPORTED, PARTIAL, VARIANT = "‡", "†", "§"


@dataclass(frozen=True)
class Column:
    task: str
    fraction: float
    metric: str  # short key, e.g. "auroc"
    scale: float  # display = stored value × scale
    higher_is_better: bool = True

    @property
    def label(self) -> str:
        return fraction_label(self.task, self.fraction)


#: the fraction label of a task that uses no labels (zero-shot, retrieval)
ZERO_SHOT = "zero-shot"


def fraction_label(task: str, fraction: float) -> str:
    """A label fraction as tables and comparisons print it; ``zero-shot`` for a task that uses no
    labels."""
    from cxrbench.tasks import TASKS

    if task in TASKS and TASKS.get(task).evaluation_only:
        return ZERO_SHOT
    return f"{fraction * 100:g}%"


@dataclass(frozen=True)
class Entry:
    mean: float  # display units (already scaled)
    std: float | None  # None: one seed, or a reported value
    n: int | None = None  # seeds (None for a reported value)
    planned: int | None = None
    best: bool = False  # with ``ci``: in the column's top group (report/compare.py)
    metric: str = ""  # a reported value's metric when it differs from the column's
    ci: tuple[float, float] | None = None  # display units; shown instead of the std

    @property
    def complete(self) -> bool:
        return self.n is None or self.planned is None or self.n >= self.planned


@dataclass(frozen=True)
class Row:
    method: str
    entries: tuple[Entry | None, ...]  # one per column
    reported: PublishedRow | None = None  # None: our run


@dataclass(frozen=True)
class ReferenceRow:
    """A trivial reference (:mod:`cxrbench.report.references`): never a method, never ranked."""

    label: str  # e.g. "all-empty mask"
    applies: tuple[bool, ...]  # per column: whether this is the column's reference
    values: tuple[float | None, ...]  # display units; None: unknown (no predictions), or n/a


@dataclass(frozen=True)
class Layout:
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]  # ours first, then reported
    partial: tuple[Cell, ...]  # cells with fewer seeds than planned, in aggregate order
    references: tuple[ReferenceRow, ...] = ()  # shown below every method row

    @property
    def tasks(self) -> list[str]:
        return list(dict.fromkeys(c.task for c in self.columns))

    def metric_of(self, task: str) -> str:
        return next(c.metric for c in self.columns if c.task == task)

    @property
    def reported(self) -> list[Row]:
        return [r for r in self.rows if r.reported is not None]


def build_layout(
    cells: Sequence[Cell],
    *,
    method_order: Sequence[str] | None = None,
    task_order: Sequence[str] | None = None,
    scale: float | None = None,
    published: Sequence[PublishedRow] = (),
    intervals: Mapping[tuple[str, str, float], Interval] | None = None,
    test_values: TestValues | None = None,
) -> Layout:
    """``scale`` None: each metric's paper scale (``PAPER_SCALE``, 1 for others). ``intervals``
    (``compare.suite_intervals``): cells show their interval, bold marks the top groups.
    ``test_values`` (``references.cell_test_values`` of the runs; ``{}`` when none kept
    predictions): add the trivial reference rows; None: no reference rows."""
    tasks = list(dict.fromkeys([*(task_order or []), *(c.task for c in cells)]))
    metrics = {c.task: c.metric.split("/")[-1] for c in cells}
    higher = {c.task: c.higher_is_better for c in cells}
    scales = {t: PAPER_SCALE.get(m, 1.0) if scale is None else scale for t, m in metrics.items()}
    columns = tuple(
        Column(t, f, metrics[t], scales[t], higher[t])
        for t in tasks
        if t in metrics
        for f in sorted({c.fraction for c in cells if c.task == t})
    )
    methods = list(dict.fromkeys([*(method_order or []), *sorted({c.method for c in cells})]))
    index = {(c.method, c.task, c.fraction): c for c in cells}
    best = {col: _best(cells, col) for col in columns}
    rows = []
    for m in [m for m in methods if any(c.method == m for c in cells)]:
        entries = tuple(
            _entry(index.get((m, c.task, c.fraction)), c, best[c], intervals) for c in columns
        )
        rows.append(Row(m, entries))
    for pub in published:
        entries = tuple(_reported(pub, col) for col in columns)
        if any(pub.score(col.task, col.fraction) is not None for col in columns):
            rows.append(Row(pub.method, entries, pub))
    refs = () if test_values is None else reference_rows(columns, test_values)
    return Layout(columns, tuple(rows), tuple(c for c in cells if not c.complete), refs)


def reference_rows(columns: Sequence[Column], test_values: TestValues) -> tuple[ReferenceRow, ...]:
    """One row per kind of trivial reference among ``columns``, in :data:`references.ORDER`."""
    out = []
    for label in ORDER:
        applies = tuple(LABELS.get(c.metric) == label for c in columns)
        if not any(applies):
            continue
        values = []
        for col, here in zip(columns, applies, strict=True):
            value = (
                reference(col.metric, test_values.get((col.task, col.fraction))) if here else None
            )
            values.append(None if value is None else value * col.scale)
        out.append(ReferenceRow(label, applies, tuple(values)))
    return tuple(out)


def reference_caption(layout: Layout) -> str:
    """The caption's sentence on the reference rows ("" when there are none)."""
    if not layout.references:
        return ""
    parts = "; ".join(f"{r.label}: {MEANING[r.label]}" for r in layout.references)
    unknown = any(
        here and v is None
        for r in layout.references
        for here, v in zip(r.applies, r.values, strict=True)
    )
    missing = (
        ", – where it depends on the test set and no run of the column kept its predictions"
        if unknown
        else ""
    )
    return f"italic rows: trivial references, never ranked or bold ({parts}){missing}"


def _best(cells: Sequence[Cell], column: Column) -> float | None:
    values = [c for c in cells if (c.task, c.fraction) == (column.task, column.fraction)]
    if not values:
        return None
    pick = max if values[0].higher_is_better else min
    return pick(c.mean for c in values)


def _entry(
    cell: Cell | None,
    col: Column,
    best: float | None,
    intervals: Mapping[tuple[str, str, float], Interval] | None = None,
) -> Entry | None:
    if cell is None:
        return None
    if intervals is not None:
        iv = intervals[(cell.method, cell.task, cell.fraction)]
        ci = (iv.low * col.scale, iv.high * col.scale)
        return Entry(cell.mean * col.scale, None, cell.n, cell.planned, iv.top, ci=ci)
    std = cell.std * col.scale if cell.n > 1 else None
    return Entry(cell.mean * col.scale, std, cell.n, cell.planned, cell.mean == best)


def _reported(pub: PublishedRow, col: Column) -> Entry | None:
    score = pub.score(col.task, col.fraction)
    if score is None or score.value is None:
        return None
    metric = score.metric if score.metric != col.metric else ""
    return Entry(score.value * (col.scale / 100.0), None, metric=metric)


# ----------------------------------------------------------------------------------- Markdown


def _md_cell(entry: Entry | None, decimals: int) -> str:
    if entry is None:
        return "–"
    text = f"{entry.mean:.{decimals}f}"
    if entry.std is not None:
        text += f" ± {entry.std:.{decimals}f}"
    if entry.ci is not None:
        text += f" [{entry.ci[0]:.{decimals}f}, {entry.ci[1]:.{decimals}f}]"
    if entry.best:
        text = f"**{text}**"
    if entry.metric:
        text += f" {VARIANT}"
    return text if entry.complete else f"{text} {PARTIAL}"


def _ref_cell(applies: bool, value: float | None, decimals: int, italic: str) -> str:
    """A reference row's cell: empty where not the column's reference, – where unknown."""
    if not applies:
        return ""
    return "–" if value is None else italic.format(f"{value:.{decimals}f}")


def render_markdown(layout: Layout, *, decimals: int = 1, title: str | None = None) -> str:
    lines = [f"**{title}**", ""] if title else []
    lines.append("metrics: " + ", ".join(f"{t} {layout.metric_of(t)}" for t in layout.tasks))
    header = ["method", *[f"{c.task} {c.label}" for c in layout.columns]]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in layout.rows:
        name = row.method if row.reported is None else f"{row.method} {REPORTED}"
        cells = [_md_cell(e, decimals) for e in row.entries]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    for ref in layout.references:
        cells = [
            _ref_cell(a, v, decimals, "*{}*") for a, v in zip(ref.applies, ref.values, strict=True)
        ]
        lines.append("| " + " | ".join([f"*{ref.label}*", *cells]) + " |")
    notes = _notes(layout)
    if notes:
        lines.append("")
        lines += notes
    return "\n".join(lines) + "\n"


def _notes(layout: Layout) -> list[str]:
    """Plain-text footnotes: incomplete cells, reported rows and their sources, metric variants."""
    notes = []
    if layout.partial:
        what = ", ".join(
            f"{c.method} {c.task} {c.fraction * 100:g}%: {c.n}/{c.planned}" for c in layout.partial
        )
        notes.append(f"{PARTIAL} fewer seeds than planned ({what})")
    if layout.reported:
        sources: dict[str, list[str]] = {}
        for row in layout.reported:
            assert row.reported is not None
            sources.setdefault(row.reported.citation, []).append(row.method)
        cited = "; ".join(f"{src}: {', '.join(names)}" for src, names in sources.items())
        notes.append(
            f"{REPORTED} reported: quoted from the paper, not run here (other code, data and "
            f"hardware), never ranked or bold; {cited}"
        )
    variants = sorted({(c.task, c.metric, e.metric) for r in layout.reported
                       for c, e in zip(layout.columns, r.entries, strict=True)
                       if e is not None and e.metric})  # fmt: skip
    for task, ours, theirs in variants:
        notes.append(f"{VARIANT} {task}: the reported value is {theirs}, our column {ours}")
    return notes


def markdown_table(
    cells: Sequence[Cell],
    *,
    scale: float = 100.0,
    decimals: int = 1,
    title: str | None = None,
    method_order: Sequence[str] | None = None,
) -> str:
    """The Markdown table of ``cells`` (every metric × ``scale``), without reference rows (they
    need the runs: ``cxrbench bench`` and ``table`` print :func:`suite_layout`'s)."""
    layout = build_layout(cells, method_order=method_order, scale=scale)
    return render_markdown(layout, decimals=decimals, title=title)


# -------------------------------------------------------------------------------------- LaTeX

_TEX = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "≥": r"$\geq$", "×": r"$\times$", "–": "--", "—": "---", "·": r"$\cdot$",
    REPORTED: r"$^\ddagger$", PARTIAL: r"$^\dagger$", VARIANT: r"\S{}",
}  # fmt: skip


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in text)


def _tex_cell(entry: Entry | None, decimals: int) -> str:
    if entry is None:
        return "--"
    text = f"{entry.mean:.{decimals}f}"
    if entry.best:
        text = rf"\textbf{{{text}}}"
    marks = (r"\S" if entry.metric else "") + ("" if entry.complete else r"\dagger")
    math = "" if entry.std is None else rf"_{{\pm {entry.std:.{decimals}f}}}"
    if entry.ci is not None:
        math = rf"_{{[{entry.ci[0]:.{decimals}f}, {entry.ci[1]:.{decimals}f}]}}"
    math += rf"^{{{marks}}}" if marks else ""
    return f"{text}${math}$" if math else text


def render_latex(
    layout: Layout, *, decimals: int = 1, caption: str = "", label: str = "tab:results"
) -> str:
    """A booktabs table (``\\usepackage{booktabs}``), ``table*`` when wider than six columns."""
    env = "table*" if len(layout.columns) > 6 else "table"
    lines = [
        rf"\begin{{{env}}}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{{tex_escape(caption)}}}",
        rf"\label{{{label}}}",
        *_tex_head(layout),
    ]
    lines += [_tex_row(r.method, r.entries, decimals) for r in layout.rows if r.reported is None]
    if layout.reported:
        span, note = 1 + len(layout.columns), r"\textit{Reported in papers (not ranked)}"
        lines += [r"\midrule", rf"\multicolumn{{{span}}}{{l}}{{{note}}} \\"]
        lines += [_tex_row(r.method + REPORTED, r.entries, decimals) for r in layout.reported]
    if layout.references:
        lines.append(r"\midrule")
    for ref in layout.references:
        cells = [_ref_cell(a, v, decimals, r"\textit{{{}}}").replace("–", "--")
                 for a, v in zip(ref.applies, ref.values, strict=True)]  # fmt: skip
        label = rf"\textit{{{tex_escape(ref.label)}}}"
        lines.append(" & ".join([label, *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    notes = _notes(layout)
    if notes:
        lines.append(r"\par\smallskip")
        lines += [r"{\footnotesize " + tex_escape(n) + r"\par}" for n in notes]
    lines.append(rf"\end{{{env}}}")
    return "\n".join(lines) + "\n"


def _tex_head(layout: Layout) -> list[str]:
    """``\\begin{tabular}`` to the first ``\\midrule``: task groups over their fractions."""
    groups = [(t, [c for c in layout.columns if c.task == t]) for t in layout.tasks]
    top, rules, start = [""], [], 2
    for task, cols in groups:
        name = f"{task} ({METRIC_NAMES.get(cols[0].metric, cols[0].metric)})"
        top.append(rf"\multicolumn{{{len(cols)}}}{{c}}{{{tex_escape(name)}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + len(cols) - 1}}}")
        start += len(cols)
    spec = "l" + "".join(" " + "c" * len(cols) for _, cols in groups)
    fractions = ["Method", *[tex_escape(c.label) for c in layout.columns]]
    return [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(top) + r" \\",
            " ".join(rules), " & ".join(fractions) + r" \\", r"\midrule"]  # fmt: skip


def _tex_row(method: str, entries: Sequence[Entry | None], decimals: int) -> str:
    return " & ".join([tex_escape(method), *[_tex_cell(e, decimals) for e in entries]]) + r" \\"


# ---------------------------------------------------------------------------------------- CSV

CSV_FIELDS = (
    "method", "source", "task", "fraction", "metric", "scale", "mean", "std", "n", "planned",
    "complete", "best", "paper", "venue", "table", "protocol", "tag",
)  # fmt: skip


def render_csv(layout: Layout, *, decimals: int = 3) -> str:
    """One row per (method, task, fraction) that has a value; numbers in display units. The
    trivial references follow with ``source`` ``reference`` (never best; none where unknown)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    intervals = any(e is not None and e.ci is not None for r in layout.rows for e in r.entries)
    writer.writerow(CSV_FIELDS + (("ci_low", "ci_high") if intervals else ()))
    for row in layout.rows:
        pub = row.reported
        for col, e in zip(layout.columns, row.entries, strict=True):
            if e is None:
                continue
            std = "" if e.std is None else f"{e.std:.{decimals}f}"
            cite = [pub.paper, pub.venue, pub.table, pub.protocol, pub.source] if pub else [""] * 5
            writer.writerow([
                row.method, "reported" if pub else "ours", col.task, f"{col.fraction:g}",
                e.metric or col.metric, f"{col.scale:g}", f"{e.mean:.{decimals}f}", std,
                "" if e.n is None else e.n, "" if e.planned is None else e.planned,
                int(e.complete), int(e.best), *cite,
                *([] if not intervals else [f"{v:.{decimals}f}" for v in e.ci or ()] or ["", ""]),
            ])  # fmt: skip
    for ref in layout.references:
        for col, here, value in zip(layout.columns, ref.applies, ref.values, strict=True):
            if here and value is not None:
                writer.writerow([
                    ref.label, "reference", col.task, f"{col.fraction:g}", col.metric,
                    f"{col.scale:g}", f"{value:.{decimals}f}", "", "", "", 1, 0, *[""] * 5,
                    *(["", ""] if intervals else []),
                ])  # fmt: skip
    return out.getvalue()


# ------------------------------------------------------------------------------------- files

_COMMENT = {"md": "<!-- {} -->", "tex": "% {}", "csv": "# {}"}


def header_line(fmt: str, command: str, version: str | None = None) -> str:
    """``generated by: <command> · cxrbench <version>`` in the comment syntax of ``fmt``."""
    if version is None:
        from cxrbench.provenance import code_version

        version = code_version()
    return _COMMENT[fmt].format(f"generated by: {command} · cxrbench {version}") + "\n"


def render(layout: Layout, fmt: str, *, title: str = "", label: str = "tab:results") -> str:
    if fmt == "md":
        return render_markdown(layout, title=title or None)
    if fmt == "tex":
        return render_latex(layout, caption=title, label=label)
    if fmt == "csv":
        return render_csv(layout)
    raise ValueError(f"unknown table format {fmt!r}; one of: {', '.join(FORMATS)}")


def write_generated(text: str, path: Path, fmt: str, command: str) -> None:
    atomic_write_text(path, header_line(fmt, command) + text)


def write_table(text: str, path: Path, command: str) -> None:
    write_generated(text, path, "md", command)


# ------------------------------------------------------------------------------ suite tables


def suite_layout(
    suite: Suite, runs: Path, published: str | None, published_dir: Path, ci: bool = False
) -> tuple[Layout, str]:
    """The suite's layout (records of ``runs/<suite>``, seeds planned by the suite) and caption.
    ``ci``: bootstrap intervals instead of ± std, bold top groups (``compare.suite_intervals``)."""
    from cxrbench.report.aggregate import aggregate
    from cxrbench.report.references import cell_test_values

    paths = suite_record_paths(suite, runs)
    records = [record for _, record in paths]
    cells = aggregate(records, planned_seeds=planned_runs(suite))
    rows = reported_rows(suite, records, published, published_dir)
    intervals, bold = None, None
    if ci:
        from cxrbench.report.compare import intervals_caption, suite_intervals

        intervals, bold = suite_intervals(suite, runs), intervals_caption()
    layout = build_layout(cells, method_order=suite.rows, task_order=suite.tasks,
                          published=rows, intervals=intervals,
                          test_values=cell_test_values(paths))  # fmt: skip
    caption = suite_caption(suite, records, reported=bool(layout.reported), bold=bold)
    given = given_encoders_caption(suite, records)
    return layout, with_reference_caption(f"{caption}; {given}" if given else caption, layout)


def given_encoders_caption(suite: Suite, records: Sequence[ResultRecord]) -> str:
    """What the suite's given encoders are (no pre-training here), from their records: an
    imported checkpoint's format and sha256, or the method that pre-trained the artifact."""
    parts = []
    for name in suite.encoders:
        sources = {
            tuple(sorted(r.extra.get("encoder_source", {}).items()))
            for r in records
            if r.method == name
        }
        if len(sources) != 1:
            continue  # no records yet (or records of several artifacts: the folder says)
        source = dict(next(iter(sources)))
        if "imported" in source:
            digest = source["checkpoint_sha256"][:12]
            what = f"imported {source['imported']} checkpoint, sha256 {digest}"
        else:
            what = f"encoder pre-trained by {source.get('method', '?')} elsewhere"
        parts.append(f"{name}: {what}")
    return f"given encoders (not pre-trained by this suite): {'; '.join(parts)}" if parts else ""


def with_reference_caption(caption: str, layout: Layout) -> str:
    """``caption`` and, when the layout has reference rows, the sentence on them."""
    note = reference_caption(layout)
    return f"{caption}; {note}" if note else caption


def write_suite_tables(
    suite: Suite,
    runs: Path,
    out: Path,
    formats: Sequence[str],
    *,
    command: str,
    published: str | None = None,
    published_dir: Path = Path("results/published"),
    ci: bool = False,
) -> list[tuple[Path, str]]:
    """``cxrbench table``: write ``out/<suite>.<ext>`` per format; returns (path, text) pairs."""
    layout, caption = suite_layout(suite, runs, published, published_dir, ci)
    written = []
    for fmt in formats:
        text = render(layout, fmt, title=caption, label=f"tab:{suite.name}")
        path = Path(out) / f"{suite.name}.{FORMATS[fmt]}"
        write_generated(text, path, fmt, command)
        written.append((path, text))
    return written
