"""Paper tables: one layout, three renderers (Markdown, LaTeX, CSV), and the published rows.

The renderers are checked against golden files (exact match) in ``tests/golden/``, made from a
fixed set of hand-made result records (three methods, four tasks including a lower-is-better one,
one to three fractions, three planned seeds, a missing cell, incomplete cells) plus published rows
read from a YAML fixture. The code version in the header is injected (``0.0.0-test``), so the
goldens do not change with every commit.

To regenerate the goldens after an intended change, run this module with the environment
variable set, then review the diff::

    CXRBENCH_UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_tables.py
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import pytest

from cxrbench.cli import main
from cxrbench.errors import ConfigError
from cxrbench.report.aggregate import aggregate
from cxrbench.report.published import load_published, load_published_file, select
from cxrbench.report.schema import ResultRecord
from cxrbench.report.store import write_record
from cxrbench.report.suites import suite_caption, suite_records
from cxrbench.report.tables import (
    build_layout,
    header_line,
    render,
    tex_escape,
    with_reference_caption,
)
from cxrbench.suite import Suite

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
UPDATE = os.environ.get("CXRBENCH_UPDATE_GOLDEN") == "1"
REPO = Path(__file__).resolve().parents[2]
SEEDS = (42, 0, 1)
METHODS = ["random_init", "convirt", "mgca"]
TASKS = ["rsna_cls", "covidx_cls", "rsna_det", "toy_reg"]
METRICS = {
    "rsna_cls": ("test/auroc", True),
    "covidx_cls": ("test/accuracy", True),
    "rsna_det": ("test/map", True),
    "toy_reg": ("test/mae", False),  # a made-up lower-is-better metric, not scaled
}
# (method, task, fraction) → values over seeds 42, 0, 1 (fewer values: seeds missing)
VALUES = {
    ("random_init", "rsna_cls", 0.01): (0.60, 0.62, 0.61),
    ("random_init", "rsna_cls", 0.1): (0.65, 0.66, 0.67),
    ("random_init", "rsna_cls", 1.0): (0.70, 0.71, 0.72),
    ("convirt", "rsna_cls", 0.01): (0.70, 0.74, 0.72),
    ("convirt", "rsna_cls", 0.1): (0.78, 0.80),  # incomplete: 2 of 3 seeds
    ("convirt", "rsna_cls", 1.0): (0.83, 0.84, 0.85),
    ("mgca", "rsna_cls", 0.01): (0.75, 0.73, 0.74),
    ("mgca", "rsna_cls", 0.1): (0.81, 0.79, 0.80),
    ("mgca", "rsna_cls", 1.0): (0.86,),  # incomplete and a single seed: no std
    ("random_init", "covidx_cls", 0.01): (0.50, 0.52, 0.51),
    ("random_init", "covidx_cls", 0.1): (0.60, 0.61, 0.62),
    ("convirt", "covidx_cls", 0.01): (0.55, 0.57, 0.56),
    ("convirt", "covidx_cls", 0.1): (0.66, 0.64, 0.65),
    ("mgca", "covidx_cls", 0.01): (0.58, 0.56, 0.57),  # mgca covidx 10%: missing
    ("random_init", "rsna_det", 0.1): (0.020, 0.030, 0.025),
    ("convirt", "rsna_det", 0.1): (0.050, 0.060, 0.055),
    ("mgca", "rsna_det", 0.1): (0.070, 0.060, 0.065),
    ("random_init", "toy_reg", 1.0): (3.0, 3.2, 3.1),
    ("convirt", "toy_reg", 1.0): (2.0, 2.2, 2.1),
    ("mgca", "toy_reg", 1.0): (2.5, 2.4, 2.6),
}
PUBLISHED = """\
defaults: {paper: "Doe et al., Toy", venue: ToyConf 2024, table: Table 2, protocol: mgca,
           source: "[TOY]"}
rows:
  - method: ConVIRT
    key: convirt
    scores:
      - {task: rsna_cls, fraction: 0.01, metric: auroc, value: 77.4}
      - {task: rsna_cls, fraction: 1.0, metric: auroc, value: 99.9}
      - {task: rsna_det, fraction: 0.1, metric: map_mgca, value: 15.6}
      - {task: siim_seg, fraction: 0.1, metric: dice, value: 43.2}
  - method: Big_Model & Co
    backbone: ViT-B/16
    scores:
      - {task: covidx_cls, fraction: 0.01, metric: accuracy, value: null, note: "printed as -"}
      - {task: covidx_cls, fraction: 0.1, metric: accuracy, value: 88.2}
  - method: SegOnly
    scores:
      - {task: siim_seg, fraction: 0.1, metric: dice, value: 50.0}
  - method: FineTuned
    protocol: finetune
    table: Table 3
    scores:
      - {task: rsna_cls, fraction: 0.01, metric: auroc, value: 91.3}
"""


def record(method: str, task: str, fraction: float, seed: int, value: float) -> ResultRecord:
    metric, higher = METRICS[task]
    return ResultRecord(
        suite="fixture", method=method, task=task, task_version=1, fraction=fraction, seed=seed,
        pretrain_seed=0, metric=metric, higher_is_better=higher,
        metrics={metric: value, "val/loss": 0.5}, config_hash=f"h-{task}",
        code_version="0.0.0", encoder_sha256="e" * 64, split_hash="s", data_fingerprint="d",
        probe_mode="cached", wall_seconds=1.0, device="cpu", created="2026-11-22T00:00:00",
    )  # fmt: skip


def fixture_records() -> list[ResultRecord]:
    return [
        record(method, task, fraction, seed, value)
        for (method, task, fraction), values in VALUES.items()
        for seed, value in zip(SEEDS, values, strict=False)
    ]


def fixture_suite() -> Suite:
    return Suite(
        name="fixture", preset="small", methods=list(METHODS), tasks=list(TASKS),
        fractions=[0.01, 0.1, 1.0], seeds=list(SEEDS),
    )  # fmt: skip


def published_rows(tmp_path: Path):
    path = tmp_path / "toy.yaml"
    path.write_text(PUBLISHED)
    return load_published_file(path)


def fixture_layout(tmp_path: Path):
    cells = aggregate(fixture_records(), planned_seeds=len(SEEDS))
    rows = select(published_rows(tmp_path), "mgca")
    # the fixture's records kept no predictions: test-set dependent references are unknown
    return build_layout(cells, method_order=METHODS, task_order=TASKS, published=rows,
                        test_values={})  # fmt: skip


def document(tmp_path: Path, fmt: str) -> str:
    layout = fixture_layout(tmp_path)
    caption = suite_caption(fixture_suite(), fixture_records(), reported=True)
    caption = with_reference_caption(caption, layout)
    head = header_line(fmt, "cxrbench table --suite fixture --published", version="0.0.0-test")
    return head + render(layout, fmt, title=caption, label="tab:fixture")


@pytest.mark.parametrize("fmt", ["md", "tex", "csv"])
def test_renderers_match_goldens(tmp_path, fmt) -> None:
    text = document(tmp_path, fmt)
    golden = GOLDEN / f"table_fixture.{fmt}"
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")


def test_best_is_among_our_runs_by_direction_and_reported_never_bold(tmp_path) -> None:
    layout = fixture_layout(tmp_path)
    col = {(c.task, c.fraction): i for i, c in enumerate(layout.columns)}
    rows = {r.method: r for r in layout.rows}
    best = {
        key: [r.method for r in layout.rows if (e := r.entries[i]) is not None and e.best]
        for key, i in col.items()
    }
    assert best[("rsna_cls", 1.0)] == ["mgca"]  # 86.0 beats convirt; the reported 99.9 is ignored
    assert best[("toy_reg", 1.0)] == ["convirt"]  # lower is better: 2.1
    assert best[("covidx_cls", 0.1)] == ["convirt"]  # mgca's cell is missing
    assert rows["ConVIRT"].reported is not None
    assert [r.method for r in layout.reported] == ["ConVIRT", "Big_Model & Co"]  # SegOnly: no
    # column of ours; FineTuned: another protocol
    toy = layout.columns[col[("toy_reg", 1.0)]]
    assert toy.scale == 1.0 and rows["convirt"].entries[
        col[("toy_reg", 1.0)]
    ].mean == pytest.approx(2.1)


def test_markdown_marks_missing_incomplete_reported_and_variant(tmp_path) -> None:
    text = document(tmp_path, "md")
    assert "| mgca | **74.0 ± 1.0** | **80.0 ± 1.0** | **86.0** † | **57.0 ± 1.0** | – |" in text
    assert "| ConVIRT ‡ | 77.4 | – | 99.9 | – | – | 15.6 § | – |" in text
    assert "§ rsna_det: the reported value is map_mgca, our column map" in text


def test_latex_rows_have_one_cell_per_column_and_balanced_braces(tmp_path) -> None:
    text = document(tmp_path, "tex")
    lines = text.splitlines()
    assert (
        lines[0]
        == "% generated by: cxrbench table --suite fixture --published · cxrbench 0.0.0-test"
    )
    body = lines[lines.index(r"\midrule") + 1 : lines.index(r"\bottomrule")]
    rows = [ln for ln in body if ln.endswith(r"\\") and not ln.startswith(r"\multicolumn")]
    assert len(rows) == 3 + 2 + 3  # ours, reported, references (chance, majority, no dets)
    assert all(len(re.findall(r"(?<!\\)&", ln)) == 7 for ln in rows)  # 7 columns + the method
    assert text.count("{") == text.count("}") and text.count("$") % 2 == 0
    for command in (r"\toprule", r"\midrule", r"\bottomrule", r"\cmidrule(lr){2-4}"):
        assert command in text
    assert r"Big\_Model \& Co$^\ddagger$ & -- & -- & -- & -- & 88.2 &" in text


def test_tex_escape() -> None:
    assert tex_escape("a_b & 5% #1 ± x") == r"a\_b \& 5\% \#1 $\pm$ x"


def test_csv_has_one_row_per_value_with_its_source(tmp_path) -> None:
    text = document(tmp_path, "csv")
    assert text.startswith("# generated by: ")
    rows = list(csv.DictReader(text.splitlines()[1:]))
    ours = [r for r in rows if r["source"] == "ours"]
    assert len(ours) == len(VALUES)
    first = ours[0]
    assert (first["method"], first["task"], first["fraction"]) == (
        "random_init",
        "rsna_cls",
        "0.01",
    )
    assert (first["mean"], first["std"], first["n"], first["planned"]) == (
        "61.000",
        "1.000",
        "3",
        "3",
    )
    reported = [r for r in rows if r["source"] == "reported"]
    assert {(r["method"], r["task"], r["fraction"]) for r in reported} == {
        ("ConVIRT", "rsna_cls", "0.01"),
        ("ConVIRT", "rsna_cls", "1"),
        ("ConVIRT", "rsna_det", "0.1"),
        ("Big_Model & Co", "covidx_cls", "0.1"),
    }
    assert all(r["tag"] == "[TOY]" and r["best"] == "0" for r in reported)


# ------------------------------------------------------------------------------ published


def test_the_published_numbers_load_and_match_protocols_md() -> None:
    rows = load_published(REPO / "results" / "published")
    mgca = {(r.method, r.table): r for r in select(rows, "mgca")}
    convirt = mgca[("ConVIRT", "Table 4")]
    assert convirt.key == "convirt" and convirt.source == "[G2D]" and convirt.venue
    assert convirt.score("chexpert_cls", 0.01).value == 85.9  # PROTOCOLS.md §3
    mflag = mgca[("M-FLAG", "Table 1")]
    assert mflag.score("objectcxr_det", 0.01).value is None  # printed as "–" (mAP < 1%)
    assert mflag.score("rsna_det", 1.0).metric == "map_mgca"
    assert mflag.score("siim_seg", 1.0).value == 64.8
    keys = {r.key for r in select(rows, "mgca", ["random_init", "imagenet", "convirt"])}
    assert keys == {"random_init", "imagenet", "convirt"}


@pytest.mark.parametrize(
    ("change", "key", "message"),
    [
        (("value: 77.4}", "value: 77.4, bogus: 1}"), "rows[0].scores[0].bogus", "unknown key"),
        (("task: rsna_cls, fraction: 0.01", "task: rsna, fraction: 0.01"),
         "rows[0].scores[0].task", "unknown task 'rsna'"),
        (("fraction: 0.01, metric: auroc", "fraction: one, metric: auroc"),
         "rows[0].scores[0].fraction", "could not be converted"),
        (("metric: auroc, value: 77.4", "metric: dice, value: 77.4"),
         "rows[0].scores[0].metric", "rsna_cls reports auroc"),
        (("value: 77.4", "value: 7740"), "rows[0].scores[0].value", "in [0, 100]"),
        (("key: convirt", "key: convirtt"), "rows[0].key", "unknown method 'convirtt'"),
        (("protocol: finetune", "protocol: linear"), "rows[3].protocol", "unknown protocol"),
        (('source: "[TOY]"', "source: TOY"), "rows[0].source", "a tag like [G2D]"),
        (("venue: ToyConf 2024, ", ""), "rows[0].venue", "required"),
        (("    backbone: ViT-B/16\n", "    backbone: ViT-B/16\n    citation: x\n"),
         "rows[1].citation", "unknown key"),
    ],
)  # fmt: skip
def test_published_errors_name_file_and_key(tmp_path, change, key, message) -> None:
    path = tmp_path / "bad.yaml"
    assert change[0] in PUBLISHED
    path.write_text(PUBLISHED.replace(change[0], change[1], 1))
    with pytest.raises(ConfigError) as info:
        load_published_file(path)
    assert info.value.file == str(path) and info.value.key == key
    assert message in str(info.value)


def test_duplicate_score_is_an_error(tmp_path) -> None:
    path = tmp_path / "dup.yaml"
    line = "      - {task: rsna_cls, fraction: 0.01, metric: auroc, value: 77.4}\n"
    path.write_text(PUBLISHED.replace(line, line + line, 1))
    with pytest.raises(ConfigError, match=r"rows\[0\]\.scores\[1\].*appears twice"):
        load_published_file(path)


# ------------------------------------------------------------------------------ suite, CLI


def write_runs(runs: Path, suite: str = "fixture") -> None:
    for r in fixture_records():
        if r.task in ("rsna_cls", "covidx_cls", "rsna_det"):
            folder = runs / suite / r.method / r.task / f"f{r.fraction:g}" / f"s{r.seed}"
            write_record(folder / "result.json", r)


def test_suite_records_take_the_suite_folder_and_its_grid(tmp_path) -> None:
    write_runs(tmp_path)
    extra = record("gloria", "rsna_cls", 0.01, 42, 0.9)  # not in the suite's methods
    write_record(
        tmp_path / "fixture" / "gloria" / "rsna_cls" / "f0.01" / "s42" / "result.json", extra
    )
    records = suite_records(fixture_suite(), tmp_path)
    assert {r.method for r in records} == set(METHODS)
    assert len(records) == sum(len(v) for k, v in VALUES.items() if k[1] != "toy_reg")


def cli_fixture(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """Runs, output folder, suite file and published folder for `cxrbench table` / `plot`."""
    runs, out = tmp_path / "runs", tmp_path / "tables"
    write_runs(runs)
    suite = tmp_path / "fixture.yaml"
    suite.write_text(
        "name: fixture\nmethods: [random_init, convirt, mgca]\n"
        "tasks: [rsna_cls, covidx_cls, rsna_det]\nfractions: [0.01, 0.1, 1.0]\nseeds: [42, 0, 1]\n"
    )
    published = tmp_path / "published"
    published.mkdir()
    (published / "toy.yaml").write_text(PUBLISHED)
    return runs, out, suite, published


def test_cli_table_writes_every_format_with_the_command(tmp_path, capsys) -> None:
    runs, out, suite, published = cli_fixture(tmp_path)
    argv = ["table", "--suite", str(suite), "--format", "md", "--format", "tex", "--format",
            "csv", "--published", "--published-dir", str(published), "--runs", str(runs),
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    for ext, start in (
        ("md", "<!-- generated by: "),
        ("tex", "% generated by: "),
        ("csv", "# generated by: "),
    ):
        text = (out / f"fixture.{ext}").read_text()
        assert text.startswith(start + f"cxrbench table --suite {suite} --format md")
        assert "--published suite" in text.splitlines()[0]
    md = (out / "fixture.md").read_text()
    assert "| ConVIRT ‡ |" in md and "Big_Model" not in md  # no key: only with --published all
    assert (
        "| convirt | 72.0 ± 2.0 |" in md and "| convirt | 72.0 ± 2.0 |" in capsys.readouterr().out
    )
    assert main(["table", "--suite", str(tmp_path / "nope.yaml"), "--runs", str(runs)]) == 2


def test_the_protocol_family_follows_each_tasks_own_versions() -> None:
    """Detection v2 (selection ties broken on val loss) is still the mgca protocol; a version
    no task declares is not, so such records never sit beside published rows."""
    from cxrbench.report.suites import _family

    assert _family("rsna_det", 2) == _family("objectcxr_det", 2) == "mgca"
    assert _family("siim_seg", 1) == "mgca" and _family("siim_seg", 2) is None
    assert _family("toy_reg", 1) == "mgca"  # not registered: the default versions
