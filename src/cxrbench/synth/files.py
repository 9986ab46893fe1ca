"""Deterministic identifiers and byte-stable file writers (JPEG, PNG, DICOM, gzip CSV)."""

from __future__ import annotations

import gzip
import hashlib
import io
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def digest(*keys: object) -> str:
    return hashlib.sha256("/".join(str(k) for k in keys).encode()).hexdigest()


def uuid_like(*keys: object) -> str:
    h = digest(*keys)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def dicom_uid(*keys: object) -> str:
    """A valid, deterministic DICOM UID: ``2.25.`` + a 128-bit integer hashed from ``keys``
    (the UUID-derived root of DICOM PS3.5 B.2; pydicom's ``generate_uid`` is random here)."""
    return f"2.25.{int(digest(*keys)[:32], 16)}"


def write_jpeg(path: Path, pixels: np.ndarray, quality: int = 95) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="JPEG", quality=quality, optimize=False)
    path.write_bytes(buf.getvalue())


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG", compress_level=6)
    path.write_bytes(buf.getvalue())


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    view: str = "PA",
    monochrome1: bool = False,
    sex: str = "M",
    age: int = 50,
) -> None:
    """An 8-bit single-frame CR DICOM like the Kaggle RSNA / SIIM files (no dates, fixed UIDs)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(SECONDARY_CAPTURE)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.8.498.1")
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = UID(SECONDARY_CAPTURE), UID(sop_uid)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = UID(study_uid), UID(series_uid)
    ds.PatientID, ds.PatientName = patient_id, patient_id
    ds.PatientSex, ds.PatientAge = sex, f"{age:03d}Y"
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", view
    ds.ConversionType = "WSD"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = (255 - pixels if monochrome1 else pixels).astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def write_gz_csv(path: Path, lines: list[str]) -> None:
    """gzip with mtime 0 and no file name in the header, so the bytes depend only on the text."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
        gz.write(("\n".join(lines) + "\n").encode())
    path.write_bytes(buf.getvalue())


def write_text(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
