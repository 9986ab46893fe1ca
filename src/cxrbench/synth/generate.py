"""``generate``: write a whole SynthCXR corpus, in parallel, deterministically.

Work is a list of ``(layout, part, index)`` items cut into chunks and run on a process pool; each
item writes its own image files and returns its CSV rows, which the parent joins in index order
and writes once (gzip with mtime 0). Same preset and seed → the same bytes, for any number of
workers.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from cxrbench.data.formats import mimic as mimic_format
from cxrbench.errors import CxrbenchError
from cxrbench.utils.io import atomic_write_text

from . import layouts
from .files import write_gz_csv, write_text
from .presets import PRESETS, Preset
from .reports import OBSERVATIONS

log = logging.getLogger(__name__)
CHUNK = 64
# Bumped whenever what a preset writes changes (drawing, sizes, annotations), so that a corpus
# written by older code is regenerated instead of silently read: 2 = issue 17 (Object-CXR objects
# twice as large, synth-small's RSNA pool 4,000); 3 = issue 20 (CheXpert single-finding studies,
# ``cases.SINGLE_FINDING``; every other layout byte-identical). Recorded in the corpus's MANIFEST.
CORPUS_VERSION = 3
MANIFEST = "synthcxr.json"
MIMIC_META = (
    "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,"
    "StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
    "PatientOrientationCodeSequence_CodeMeaning"
)
CHEXPERT_HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(OBSERVATIONS)


def _jobs(p: Preset) -> list[tuple[str, str, int]]:
    s = p.sizes
    parts = [("mimic", "", s.mimic_studies), ("chexpert", "train", s.chexpert_train),
             ("chexpert", "valid", s.chexpert_valid), ("rsna", "", s.rsna), ("siim", "", s.siim),
             ("objectcxr", "train", s.objectcxr_train), ("objectcxr", "dev", s.objectcxr_dev),
             ("covidx", "train", s.covidx_train), ("covidx", "test", s.covidx_test)]  # fmt: skip
    return [(name, part, i) for name, part, n in parts for i in range(n)]


def _make(ctx: layouts.Context, job: tuple[str, str, int]) -> Any:
    name, part, i = job
    item: Callable[..., Any] = getattr(layouts, f"{name}_item")
    return item(ctx, i, part) if part else item(ctx, i)


def _run_chunk(ctx: layouts.Context, chunk: list[tuple[str, str, int]]) -> list[Any]:
    return [_make(ctx, job) for job in chunk]


def _chunks(jobs: list[tuple[str, str, int]]) -> Iterator[list[tuple[str, str, int]]]:
    for start in range(0, len(jobs), CHUNK):
        yield jobs[start : start + CHUNK]


def _execute(ctx: layouts.Context, jobs: list, workers: int, progress: bool) -> list[Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    chunks = list(_chunks(jobs))
    results: list[list[Any]] = [[] for _ in chunks]
    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("SynthCXR images", total=len(jobs))
        if workers <= 1:
            for k, chunk in enumerate(chunks):
                results[k] = _run_chunk(ctx, chunk)
                bar.advance(task, len(chunk))
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(_run_chunk, ctx, chunk) for chunk in chunks]
                for k, future in enumerate(futures):
                    results[k] = future.result()
                    bar.advance(task, len(chunks[k]))
    return [row for chunk in results for row in chunk]


def _write_tables(out: Path, jobs: list, rows: list[Any]) -> dict[str, int]:
    by: dict[tuple[str, str], list[Any]] = {}
    for (name, part, _), row in zip(jobs, rows, strict=True):
        by.setdefault((name, part), []).append(row)
    mimic = out / "mimic-cxr-jpg"
    m = by[("mimic", "")]
    write_gz_csv(
        mimic / mimic_format.SPLIT_FILE,
        ["dicom_id,study_id,subject_id,split"] + [r for x in m for r in x["split"]],
    )
    write_gz_csv(
        mimic / mimic_format.METADATA_FILE, [MIMIC_META] + [r for x in m for r in x["meta"]]
    )
    write_gz_csv(
        mimic / mimic_format.CHEXPERT_FILE,
        ["subject_id,study_id," + ",".join(OBSERVATIONS)] + [r for x in m for r in x["chexpert"]],
    )
    inner = out / "chexpert" / "CheXpert-v1.0-small"
    for part in ("train", "valid"):
        write_text(
            inner / f"{part}.csv",
            [CHEXPERT_HEADER] + [r for x in by[("chexpert", part)] for r in x],
        )
    rsna = out / "rsna-pneumonia"
    write_text(
        rsna / "stage_2_train_labels.csv",
        ["patientId,x,y,width,height,Target"] + [r for x in by[("rsna", "")] for r in x["labels"]],
    )
    write_text(
        rsna / "stage_2_detailed_class_info.csv",
        ["patientId,class"] + [r for x in by[("rsna", "")] for r in x["classes"]],
    )
    write_text(
        out / "siim-acr" / "train-rle.csv",
        ["ImageId, EncodedPixels"] + [r for x in by[("siim", "")] for r in x],
    )
    for part, file in (("train", "train.csv"), ("dev", "dev.csv")):
        write_text(out / "object-cxr" / file, ["image_name,annotation"] + by[("objectcxr", part)])
    for part in ("train", "test"):
        write_text(out / "covidx" / f"{part}.txt", by[("covidx", part)])
    return {f"{name}/{part}" if part else name: len(v) for (name, part), v in by.items()}


def generate(
    out: Path,
    preset: str = "small",
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    scale: float = 1.0,
) -> dict[str, Any]:
    """Write the SynthCXR corpus of ``preset`` into ``out`` (six official layouts).

    ``scale`` multiplies every dataset size (e.g. 0.25 for a quicker corpus in tests).
    Returns a summary: preset, seed, counts per layout part, images written and seconds.
    """
    if preset not in PRESETS:
        raise CxrbenchError(
            f"unknown SynthCXR preset {preset!r}; choose one of {', '.join(PRESETS)}"
        )
    chosen = PRESETS[preset] if scale == 1.0 else PRESETS[preset].scaled(scale)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = layouts.Context(out, seed, chosen)
    jobs = _jobs(chosen)
    start = time.perf_counter()
    rows = _execute(ctx, jobs, workers or os.cpu_count() or 1, progress)
    counts = _write_tables(out, jobs, rows)
    seconds = time.perf_counter() - start
    images = sum(1 for _ in out.rglob("*") if _.suffix in (".jpg", ".png", ".dcm"))
    log.info("SynthCXR %s (seed %d): %d images in %.1f s", preset, seed, images, seconds)
    summary = {"preset": preset, "seed": seed, "scale": scale, "side": chosen.side,
               "items": counts, "images": images, "seconds": round(seconds, 2)}  # fmt: skip
    # written last: a corpus without it is incomplete (an interrupted run) or older than it
    atomic_write_text(out / MANIFEST, json.dumps(_identity(chosen, preset, seed), indent=2) + "\n")
    return summary


def _identity(chosen: Preset, preset: str, seed: int) -> dict[str, Any]:
    return {"corpus_version": CORPUS_VERSION, "preset": preset, "seed": seed,
            "side": chosen.side, "sizes": dict(chosen.sizes.__dict__)}  # fmt: skip


def stale_reason(out: Path, preset: str, seed: int = 0) -> str | None:
    """Why the corpus in ``out`` is not what ``generate(out, preset, seed)`` writes today, or
    ``None`` when it is (judged from its manifest: corpus version, preset sizes, side, seed)."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        return (
            f"it has no {MANIFEST} (written before corpus version {CORPUS_VERSION}, or interrupted)"
        )
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        return f"its {MANIFEST} cannot be read ({error})"
    expected = _identity(PRESETS[preset], preset, seed)
    changed = [k for k in expected if found.get(k) != expected[k]]
    if not changed:
        return None
    return "; ".join(f"{k} {found.get(k)!r}, expected {expected[k]!r}" for k in changed)
