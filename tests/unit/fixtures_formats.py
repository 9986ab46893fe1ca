"""Writers of tiny datasets in the official on-disk formats, for the reader and inspect tests.

Every fixture is small enough to reason about by hand; the expected values the tests assert are
written next to each writer.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

# ------------------------------------------------------------------------------------------ images


def write_image(path: Path, height: int = 16, width: int = 16, value: int = 100) -> Path:
    """A grayscale JPEG or PNG (by suffix) with a gradient, so that it is not constant."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.add.outer(np.arange(height), np.arange(width)) * 3 + value) % 256
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    voi_lut: list[int] | None = None,
    with_pixels: bool = True,
) -> Path:
    """An uncompressed single-frame DICOM.

    ``window`` is (centre, width), ``rescale`` is (slope, intercept) and ``voi_lut`` the data of
    an 8-bit VOI LUT whose first entry maps stored value 0.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path.name)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if voi_lut is not None:
        item = Dataset()
        item.add_new(0x00283002, "US", [len(voi_lut), 0, 8])  # LUT Descriptor
        item.add_new(0x00283006, "US", voi_lut)  # LUT Data
        ds.VOILUTSequence = [item]
    if with_pixels:
        ds.PixelData = pixels.astype("<u2" if ds.BitsAllocated == 16 else np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def relabel_transfer_syntax(path: Path, uid: str | None) -> Path:
    """Rewrite a DICOM's file meta to claim transfer syntax ``uid`` (``None``: no Transfer Syntax
    UID at all), leaving its pixels as they are.

    (pydicom refuses to write such a file, e.g. a JPEG 2000 label over raw pixels; some real
    downloads have them.)
    """
    data = path.read_bytes()
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    body = data[132 + 12 + int(meta.FileMetaInformationGroupLength) :]  # 12: the length element
    if uid is None:
        del meta.TransferSyntaxUID
    else:
        meta.TransferSyntaxUID = uid
    header = DicomBytesIO()
    header.is_little_endian, header.is_implicit_VR = True, False
    write_file_meta_info(header, meta, enforce_standard=uid is not None)
    path.write_bytes(data[:132] + header.getvalue() + body)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_gz(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(text)
    return path


# ------------------------------------------------------------------------------------------- MIMIC

REPORT_FULL = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough

 FINDINGS:

 The lungs are clear.  There is no pleural effusion or pneumothorax.
 Heart size is normal.

 IMPRESSION:

 No acute cardiopulmonary process.
"""
TEXT_FULL = (
    "no acute cardiopulmonary process the lungs are clear there is no pleural effusion or "
    "pneumothorax heart size is normal"
)
REPORT_NO_SECTIONS = """                                 FINAL REPORT
 INDICATION:  Cough.

 Heart size is normal and the lungs are clear.
"""
REPORT_SHORT = " FINAL REPORT\n IMPRESSION:  No change.\n"
REPORT_NUMBERED = """ FINAL REPORT
 FINDINGS:  Left basilar opacity.
 IMPRESSION:
 1. Pneumonia in the left lower lobe.
 2. Small left effusion.
"""
TEXT_NUMBERED = "pneumonia in the left lower lobe small left effusion left basilar opacity"

# (dicom_id, subject, study, split, view, report)
MIMIC_ROWS = (
    ("d1", "10000032", "50000001", "train", "PA", REPORT_FULL),
    ("d2", "10000032", "50000001", "train", "LATERAL", REPORT_FULL),
    ("d3", "10000032", "50000002", "train", "AP", REPORT_NO_SECTIONS),
    ("d4", "11000011", "50000003", "test", "PA", REPORT_NUMBERED),
    ("d5", "11000011", "50000003", "test", "AP", REPORT_NUMBERED),
    ("d6", "11000011", "50000004", "validate", "PA", REPORT_SHORT),
    ("d7", "11000011", "50000005", "validate", "", REPORT_FULL),
    ("d8", "11000011", "50000006", "validate", "AP", REPORT_FULL),
)
MIMIC_SUMMARY = {
    "studies": 6,
    "images": 8,
    "frontal_images": 6,
    "pairs": 4,
    "splits": {"train": 1, "validate": 1, "test": 2},
    "decoded": 8,
}
METADATA_HEADER = (
    "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,"
    "StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
    "PatientOrientationCodeSequence_CodeMeaning"
)


def write_mimic(root: Path) -> Path:
    split = ["dicom_id,study_id,subject_id,split"]
    meta = [METADATA_HEADER]
    for dicom, subject, study, part, view, report in MIMIC_ROWS:
        split.append(f"{dicom},{study},{subject},{part}")
        meta.append(f"{dicom},{subject},{study},CHEST (PA AND LAT),{view},16,16,21800101,1200,,,")
        study_dir = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        write_image(study_dir / f"{dicom}.jpg")
        write_text(study_dir.with_suffix(".txt"), report)
    write_gz(root / "mimic-cxr-2.0.0-split.csv.gz", "\n".join(split) + "\n")
    write_gz(root / "mimic-cxr-2.0.0-metadata.csv.gz", "\n".join(meta) + "\n")
    write_gz(
        root / "mimic-cxr-2.0.0-chexpert.csv.gz",
        "subject_id,study_id,Atelectasis,Cardiomegaly\n10000032,50000001,1.0,\n"
        "11000011,50000003,-1.0,0.0\n",
    )
    return root


# ---------------------------------------------------------------------------------------- CheXpert

OBSERVATIONS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
CHEXPERT_HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(OBSERVATIONS)
# (path below the inner folder, view, AP/PA, {observation: cell}) -> competition labels
CHEXPERT_TRAIN = (
    ("train/patient00001/study1/view1_frontal.jpg", "Frontal", "AP",
     {"Atelectasis": "-1.0", "Cardiomegaly": "-1.0", "Edema": "1.0", "Pleural Effusion": "0.0"}),
    ("train/patient00001/study1/view2_lateral.jpg", "Lateral", "",
     {"Cardiomegaly": "1.0"}),
    ("train/patient00002/study1/view1_frontal.jpg", "Frontal", "PA",
     {"Consolidation": "-1.0", "Pleural Effusion": "-1.0", "Cardiomegaly": "1.0"}),
)  # fmt: skip
CHEXPERT_VALID = (
    ("valid/patient64541/study1/view1_frontal.jpg", "Frontal", "AP",
     {name: "0.0" for name in OBSERVATIONS} | {"Atelectasis": "1.0"}),
)  # fmt: skip
CHEXPERT_COMPETITION = ([1, 0, 0, 1, 0], [0, 1, 0, 0, 0], [0, 1, 0, 0, 1], [1, 0, 0, 0, 0])
CHEXPERT_SUMMARY = {
    "images": 4,
    "frontal": 3,
    "positives": {
        "Atelectasis": 2,
        "Cardiomegaly": 1,
        "Consolidation": 0,
        "Edema": 1,
        "Pleural Effusion": 1,
    },
    "decoded": 4,
}


def _chexpert_csv(inner: Path, rows: tuple) -> str:
    lines = [CHEXPERT_HEADER]
    for rel, view, projection, labels in rows:
        cells = [labels.get(name, "") for name in OBSERVATIONS]
        lines.append(f"{inner.name}/{rel},Female,68,{view},{projection}," + ",".join(cells))
        write_image(inner / rel)
    return "\n".join(lines) + "\n"


def write_chexpert(root: Path, inner_name: str = "CheXpert-v1.0-small") -> Path:
    inner = root / inner_name
    write_text(inner / "train.csv", _chexpert_csv(inner, CHEXPERT_TRAIN))
    write_text(inner / "valid.csv", _chexpert_csv(inner, CHEXPERT_VALID))
    return root


# -------------------------------------------------------------------------------------------- RSNA

RSNA_LABELS = """patientId,x,y,width,height,Target
p-aaa,,,,,0
p-bbb,2.0,3.0,10.0,5.0,1
p-bbb,8.0,4.0,4.0,6.0,1
p-ccc,,,,,0
p-ddd,20.0,20.0,12.0,12.0,1
"""
RSNA_DETAILS = """patientId,class
p-aaa,Normal
p-bbb,Lung Opacity
p-bbb,Lung Opacity
p-ccc,No Lung Opacity / Not Normal
p-ddd,Lung Opacity
"""
# p-bbb: 10x5 + 4x6 - 4x4 overlap = 58 pixels; p-ddd: 12x12 = 144
RSNA_SUMMARY = {"images": 4, "positive_images": 2, "boxes": 3, "mask_pixels": 202, "decoded": 4}


def write_rsna(root: Path) -> Path:
    write_text(root / "stage_2_train_labels.csv", RSNA_LABELS)
    write_text(root / "stage_2_detailed_class_info.csv", RSNA_DETAILS)
    for i, patient in enumerate(("p-aaa", "p-bbb", "p-ccc", "p-ddd")):
        pixels = (np.arange(32 * 32).reshape(32, 32) % 251).astype(np.uint8)
        photometric = "MONOCHROME1" if i == 2 else "MONOCHROME2"
        write_dicom(
            root / "stage_2_train_images" / f"{patient}.dcm", pixels, photometric=photometric
        )
    return root


# -------------------------------------------------------------------------------------------- SIIM

SIIM_IDS = ("1.2.276.0.1", "1.2.276.0.2", "1.2.276.0.3", "1.2.276.0.4")
SIIM_CSV = f"""ImageId, EncodedPixels
{SIIM_IDS[0]}, -1
{SIIM_IDS[1]}, 1 2 3 1
{SIIM_IDS[1]}, 2 3
{SIIM_IDS[2]}, -1
{SIIM_IDS[3]}, 0 5
"""
# image 2 is 4x3: regions {1, 2, 6} and {2, 3, 4} (column-major) -> union {1, 2, 3, 4, 6}
SIIM_MASK_2 = np.array([[0, 1, 0], [1, 0, 0], [1, 1, 0], [1, 0, 0]], dtype=bool)
SIIM_SIZES = {SIIM_IDS[0]: (8, 8), SIIM_IDS[1]: (4, 3), SIIM_IDS[2]: (8, 8), SIIM_IDS[3]: (5, 5)}
SIIM_SUMMARY = {"images": 4, "positive_images": 2, "regions": 3, "mask_pixels": 10, "decoded": 4}


def write_siim(root: Path, header: str = "ImageId, EncodedPixels") -> Path:
    write_text(root / "train-rle.csv", SIIM_CSV.replace("ImageId, EncodedPixels", header))
    for image_id in (*SIIM_IDS, "1.2.276.0.99"):  # the last one is not in the CSV
        height, width = SIIM_SIZES.get(image_id, (8, 8))
        pixels = np.full((height, width), 40, dtype=np.uint8)
        folder = root / "dicom-images-train" / f"{image_id}.study" / f"{image_id}.series"
        write_dicom(folder / f"{image_id}.dcm", pixels)
    return root


# -------------------------------------------------------------------------------------- Object-CXR

OBJECT_TRAIN = """image_name,annotation
00001.jpg,0 2 3 10 12
00002.jpg,
00003.jpg,1 5 5 15 11;2 1 1 8 2 4 9
"""
OBJECT_DEV = """image_name,annotation
08001.jpg,0 0 0 4 4;0 10 10 20 20
"""
OBJECT_SUMMARY = {
    "images": 4,
    "positive_images": 3,
    "objects": 5,
    "by_type": {"rectangle": 3, "ellipse": 1, "polygon": 1},
    "decoded": 4,
}


def write_objectcxr(root: Path, dev: str = OBJECT_DEV) -> Path:
    write_text(root / "train.csv", OBJECT_TRAIN)
    write_text(root / "dev.csv", dev)
    for split, text in (("train", OBJECT_TRAIN), ("dev", dev)):
        for line in text.splitlines()[1:]:
            write_image(root / split / line.split(",")[0], height=24, width=32)
    return root


# ------------------------------------------------------------------------------------------ COVIDx

COVIDX_TRAIN = "1 a.png normal rsna\n2 b.png pneumonia rsna\n3 c.jpeg COVID-19 cohen\n"
COVIDX_TEST = "4 d.png COVID-19 sirm\n5 e.png normal\n"
COVIDX_SUMMARY = {
    "images": 5,
    "classes": {"normal": 2, "pneumonia": 1, "COVID-19": 2},
    "decoded": 5,
}
COVIDX_BINARY_TRAIN = "p1 x1.png positive bimcv\np2 x2.png negative rsna\np3 x3.png negative rsna\n"
COVIDX_BINARY_TEST = "p4 x4.png positive ricord\n"


def write_covidx(
    root: Path,
    train: str = COVIDX_TRAIN,
    test: str = COVIDX_TEST,
    names: tuple[str, str] = ("train.txt", "test.txt"),
) -> Path:
    write_text(root / names[0], train)
    write_text(root / names[1], test)
    for split, text in (("train", train), ("test", test)):
        for line in text.splitlines():
            write_image(root / split / line.split()[1], height=20, width=18)
    return root
