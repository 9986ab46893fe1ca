"""Small corpora and models written by the tests themselves (no downloads, seconds to make)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

FINDINGS = (
    "left pleural effusion",
    "right pneumothorax",
    "cardiomegaly",
    "pulmonary edema",
    "right lower lobe consolidation",
    "left upper lobe nodule",
    "bibasilar atelectasis",
    "right upper lobe mass",
)
_META = (
    "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,"
    "StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
    "PatientOrientationCodeSequence_CodeMeaning"
)


def pattern_image(k: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A noisy image whose bright block position encodes ``k`` (0..7)."""
    img = rng.normal(90, 12, (size, size))
    row, col = divmod(k, 4)
    h = size // 4
    img[h + row * h : 2 * h + row * h, col * h : col * h + h] += 90
    return np.clip(img, 0, 255).astype(np.uint8)


def write_pairs_corpus(
    root: Path, n: int = 96, size: int = 64, seed: int = 0, n_val: int = 16
) -> Path:
    """A MIMIC-CXR-JPG layout folder whose report names the pattern drawn in the image."""
    folder = root / "mimic-cxr-jpg"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    splits, meta = [], []
    for i in range(n):
        subject, study = f"1{i:07d}", f"5{i:07d}"
        dicom = f"{i:08x}-0000aaaa-0000bbbb-0000cccc-0000dddd"
        part = "validate" if i >= n - n_val else "train"
        splits.append(f"{dicom},{study},{subject},{part}")
        meta.append(f"{dicom},{subject},{study},CHEST (PA AND LAT),PA,{size},{size},"
                    "21800101,120000.000,,postero-anterior,Erect")  # fmt: skip
        k = i % len(FINDINGS)
        study_dir = folder / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        study_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pattern_image(k, size, rng)).save(study_dir / f"{dicom}.jpg", quality=95)
        report = (
            "                                 FINAL REPORT\n"
            " EXAMINATION:  CHEST (PA AND LAT)\n\n"
            f" FINDINGS:  There is {FINDINGS[k]}. No other acute process.\n\n"
            f" IMPRESSION:  {FINDINGS[k].capitalize()}.\n"
        )
        (study_dir.parent / f"s{study}.txt").write_text(report)
    _gz(folder / "mimic-cxr-2.0.0-split.csv.gz", "dicom_id,study_id,subject_id,split", splits)
    _gz(folder / "mimic-cxr-2.0.0-metadata.csv.gz", _META, meta)
    return folder


def _gz(path: Path, header: str, rows: list[str]) -> None:
    with gzip.open(path, "wt") as fh:
        fh.write(header + "\n" + "\n".join(rows) + "\n")


def tiny_text_model(out_dir: Path) -> Path:
    """A 2-layer, 32-wide BERT trained for one epoch on the FINDINGS sentences (seconds)."""
    from cxrbench.models.text_pretrain import train_text_model

    texts = [f"there is {f} no other acute process {f}" for f in FINDINGS] * 8
    train_text_model(texts, out_dir, vocab_size=200, layers=2, hidden=32, heads=2,
                     intermediate=64, max_length=32, epochs=1, batch_size=16,
                     progress=False)  # fmt: skip
    return out_dir


def free_port() -> int:
    """A free local TCP port for a test's gloo process group."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
