"""The corpus text model: train (or reuse) a small BERT on a MIMIC-layout corpus's reports.

``pretrain_text`` reads the official ``train`` split of a MIMIC-CXR-JPG folder (the cleaned texts
of frontal-image studies, one per study) and trains with a preset (``tiny``, ``small``,
``paper``) through :func:`cxrbench.models.text_pretrain.train_text_model`; a complete model with
the same settings and texts is reused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from cxrbench.errors import CxrbenchError
from cxrbench.models.text_pretrain import SUMMARY_FILE, model_settings, train_text_model
from cxrbench.utils.lock import exclusive

log = logging.getLogger(__name__)

_SMALL = {"vocab_size": 4000, "layers": 4, "hidden": 256, "heads": 4, "intermediate": 1024}
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"vocab_size": 1000, "layers": 2, "hidden": 64, "heads": 2, "intermediate": 256,
             "epochs": 2, "batch_size": 32, "lr": 2e-3},
    "small": {"vocab_size": 4000, "layers": 2, "hidden": 128, "heads": 4, "intermediate": 512,
              "epochs": 4, "batch_size": 32, "lr": 1e-3},
    "paper": {**_SMALL, "epochs": 20, "batch_size": 32, "lr": 5e-4},
}  # fmt: skip
"""Sizes of :func:`pretrain_text`; ``max_length`` is 112 (MGCA) and ``mask_prob`` 0.15 for all."""


def mimic_folder(corpus_root: Path) -> Path:
    """The MIMIC-CXR-JPG folder: ``corpus_root/mimic-cxr-jpg`` if present, else ``corpus_root``."""
    from cxrbench.data.formats import mimic

    root = Path(corpus_root)
    return root / mimic.FOLDER if (root / mimic.FOLDER).is_dir() else root


def _train_studies(folder: Path) -> list[tuple[Any, str]]:
    """(first frontal image, cleaned text) of each study of the official ``train`` split whose
    text is not empty, in file order."""
    from cxrbench.data.formats import mimic

    index = mimic.read(folder)
    train = dataclasses.replace(
        index, images=tuple(image for image in index.images if image.split == "train")
    )
    studies: dict[str, tuple[Any, str]] = {}
    for image, text in mimic.pairs(train):
        studies.setdefault(image.study_id, (image, text))
    return list(studies.values())


def corpus_texts(folder: Path) -> list[str]:
    """Cleaned texts of the official ``train`` split, one per study (frontal images, file order)."""
    return [text for _, text in _train_studies(folder)]


def corpus_sections(folder: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """:func:`corpus_texts` and, aligned with them, each study's cleaned (findings, impression)
    (``data.reports.clean_sections``)."""
    from cxrbench.data.reports import clean_sections, read_report

    studies = _train_studies(folder)
    return ([text for _, text in studies],
            [clean_sections(read_report(image.report_path)) for image, _ in studies])  # fmt: skip


def read_summary(out_dir: Path) -> dict[str, Any] | None:
    """The ``training_summary.json`` of a trained model folder, or None when there is none."""
    path = Path(out_dir) / SUMMARY_FILE
    if not path.is_file():
        return None
    summary: dict[str, Any] = json.loads(path.read_text("utf-8"))
    return summary


def pretrain_text(
    corpus_root: Path,
    out_dir: Path | None = None,
    *,
    preset: str = "small",
    seed: int = 0,
    progress: bool = True,
    force: bool = False,
    device: str = "cpu",
    objective: str = "mlm",
) -> dict[str, Any]:
    """Train (or reuse) the corpus text model of ``preset`` on a MIMIC-layout corpus.

    ``corpus_root`` is a data root holding ``mimic-cxr-jpg/`` or that folder itself; ``out_dir``
    defaults to ``<mimic folder>/cxrbench-text-bert-<preset>`` (``-sections`` appended for the
    ``mlm+sections`` objective, :func:`train_text_model`). A complete model with the same
    settings (and texts) there is returned without retraining; one with other settings is an
    error unless ``force``. ``device`` (e.g. ``"cuda"``) is where to train; only CPU runs are
    bit-reproducible. The returned summary has ``path`` and ``reused`` added.
    """
    if preset not in PRESETS:
        raise CxrbenchError(f"unknown text preset {preset!r}; choose one of {', '.join(PRESETS)}")
    folder = mimic_folder(corpus_root)
    suffix = "" if objective == "mlm" else "-sections"
    out = Path(out_dir) if out_dir is not None else folder / f"cxrbench-text-bert-{preset}{suffix}"
    sections = None
    if objective == "mlm":
        texts = corpus_texts(folder)
    else:
        texts, sections = corpus_sections(folder)
    if len(texts) < 2:
        raise CxrbenchError(f"{folder}: {len(texts)} train-split report(s) with text; need 2+")
    params: dict[str, Any] = {**PRESETS[preset], "max_length": 112, "mask_prob": 0.15,
                              "seed": seed}  # fmt: skip
    if objective != "mlm":
        params.update(objective=objective, sections=sections)
    lock = out.parent / f".{out.name}.lock"  # runs that start together train it once
    with exclusive(out.parent, what="corpus text model", lock_file=lock):
        return _train_or_reuse(texts, out, params, force=force, progress=progress, device=device)


def _train_or_reuse(
    texts: list[str], out: Path, params: dict[str, Any], *, force: bool, progress: bool, device: str
) -> dict[str, Any]:
    existing = read_summary(out)
    if existing is not None and not force:
        if existing.get("settings") == model_settings(texts, **params):
            log.info("text model %s is up to date; not retraining", out)
            return {**existing, "path": str(out), "reused": True}
        raise CxrbenchError(
            f"{out}: holds a text model trained with other settings or texts; pass another "
            "output folder, remove it, or retrain with force"
        )
    summary = train_text_model(texts, out, progress=progress, device=device, **params)
    return {**summary, "path": str(out), "reused": False}


def record_evaluation(out_dir: Path, evaluation: dict[str, Any]) -> None:
    """Add ``evaluation`` (``models.text_eval``) to the model's summary (written atomically;
    the settings, and so the model's reuse, are unchanged)."""
    from cxrbench.utils.io import atomic_write_text

    summary = read_summary(out_dir)
    if summary is None:
        raise CxrbenchError(f"{out_dir}: no {SUMMARY_FILE} to add the evaluation to")
    summary["evaluation"] = evaluation
    atomic_write_text(Path(out_dir) / SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=True))
