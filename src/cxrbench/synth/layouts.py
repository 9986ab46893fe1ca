"""One item of each official layout: render, write its image file(s), return its CSV rows.

Items are independent and keyed by (seed, dataset, index), so any worker can make any item and
the bytes do not depend on how the work was split. The parent joins the rows in index order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cxrbench.data.codecs import rle_encode

from .cases import COVIDX_CLASSES, COVIDX_TRAIN_MIX, covidx_case, sample_findings, site
from .files import dicom_uid, digest, uuid_like, write_dicom, write_jpeg, write_png
from .findings import Finding
from .presets import Preset
from .render import ImageSpec, Rendered, render
from .reports import OBSERVATIONS, label_report, write_report

CODES = {"mimic": 1, "chexpert": 2, "rsna": 3, "siim": 4, "objectcxr": 5, "covidx": 6}
TRUTH = {
    "cardiomegaly": ("Cardiomegaly", "Enlarged Cardiomediastinum"),
    "effusion": ("Pleural Effusion",),
    "consolidation": ("Consolidation", "Lung Opacity", "Pneumonia"),
    "edema": ("Edema", "Lung Opacity"),
    "atelectasis": ("Atelectasis", "Lung Opacity"),
    "nodule": ("Lung Lesion",),
    "mass": ("Lung Lesion",),
    "pneumothorax": ("Pneumothorax",),
    "support": ("Support Devices",),
}


@dataclass(frozen=True)
class Context:
    out: Path
    seed: int
    preset: Preset


def rng_for(ctx: Context, dataset: str, index: int, part: str = "") -> np.random.Generator:
    salt = {"": 0, "train": 0, "valid": 1, "dev": 1, "test": 1}[part]
    return np.random.default_rng(np.random.SeedSequence([ctx.seed, CODES[dataset], salt, index]))


def _render(ctx: Context, findings: tuple[Finding, ...], rng: np.random.Generator, dataset: str,
            objects: int = 0, shape: tuple[int, int] | None = None) -> Rendered:  # fmt: skip
    h, w = shape or (ctx.preset.side, ctx.preset.side)
    spec = ImageSpec(h, w, findings, site(dataset, rng), objects)
    return render(spec, rng, ctx.preset.difficulty)


def _labels(values: dict[str, float | None]) -> str:
    return ",".join("" if values[o] is None else f"{values[o]:.1f}" for o in OBSERVATIONS)


def _lateral(pixels: np.ndarray) -> np.ndarray:
    """A lateral-looking view: the frontal squeezed to 55 % width, centred."""
    h, w = pixels.shape
    narrow = cv2.resize(pixels, (max(8, int(w * 0.55)), h), interpolation=cv2.INTER_AREA)
    out = np.full_like(pixels, int(pixels[:4].mean()))
    left = (w - narrow.shape[1]) // 2
    out[:, left : left + narrow.shape[1]] = narrow
    return np.ascontiguousarray(out[:, ::-1])


def mimic_item(ctx: Context, i: int) -> dict[str, list[str]]:
    rng = rng_for(ctx, "mimic", i)
    h = int(digest(ctx.seed, "mimic", i)[:8], 16)
    subject, study = 10_000_000 + (i // 2) * 97 + h % 97, 50_000_000 + i * 13 + h % 13
    split = "validate" if i % 67 == 1 else "test" if i % 67 == 2 else "train"
    findings = sample_findings("mimic", rng, ctx.preset.difficulty)
    image = _render(ctx, findings, rng, "mimic")
    report = write_report(findings, rng)
    folder = ctx.out / "mimic-cxr-jpg" / "files" / f"p{str(subject)[:2]}" / f"p{subject}"
    (folder / f"s{study}").mkdir(parents=True, exist_ok=True)
    (folder / f"s{study}.txt").write_text(report)
    views = [("PA" if rng.random() < 0.7 else "AP", image.pixels)]
    if rng.random() < 0.25:
        views.append(("LATERAL" if rng.random() < 0.8 else "LL", _lateral(image.pixels)))
    rows: dict[str, list[str]] = {"split": [], "meta": []}
    for k, (view, pixels) in enumerate(views):
        dicom_id = "-".join(
            digest(ctx.seed, "mimic-dicom", i, k)[j * 8 : j * 8 + 8] for j in range(5)
        )
        write_jpeg(folder / f"s{study}" / f"{dicom_id}.jpg", pixels)
        rows["split"].append(f"{dicom_id},{study},{subject},{split}")
        orient = "lateral" if view in ("LATERAL", "LL") else ("antero-posterior" if view == "AP"
                                                               else "postero-anterior")  # fmt: skip
        rows["meta"].append(f"{dicom_id},{subject},{study},CHEST (PA AND LAT),{view},"
                            f"{pixels.shape[0]},{pixels.shape[1]},21{i % 90 + 10:02d}0101,"
                            f"{120000 + i % 9999}.000,CHEST (PA AND LAT),{orient},"
                            "Erect")  # fmt: skip
    rows["chexpert"] = [f"{subject},{study}," + _labels(label_report(report))]
    return rows


def _truth(findings: tuple[Finding, ...]) -> dict[str, float | None]:
    values: dict[str, float | None] = dict.fromkeys(OBSERVATIONS, 0.0)
    for f in findings:
        for name in TRUTH.get(f.kind, ()):
            values[name] = 1.0
    pathologies = [o for o in OBSERVATIONS if o not in ("No Finding", "Support Devices")]
    values["No Finding"] = 0.0 if any(values[p] == 1.0 for p in pathologies) else 1.0
    return values


def chexpert_item(ctx: Context, i: int, part: str) -> list[str]:
    """train.csv rows are labelled from the report text; valid.csv rows (like the real
    radiologist-labelled validation set) from the truth, 0/1 only."""
    rng = rng_for(ctx, "chexpert", i, part)
    findings = sample_findings("chexpert", rng, ctx.preset.difficulty)
    image = _render(ctx, findings, rng, "chexpert")
    labels = _truth(findings) if part == "valid" else label_report(write_report(findings, rng))
    patient = (64541 + i) if part == "valid" else (i + 1)
    base = f"CheXpert-v1.0-small/{part}/patient{patient:05d}/study1"
    sex, age = ("Male" if rng.random() < 0.55 else "Female"), int(rng.integers(18, 90))
    ap_pa = "AP" if rng.random() < 0.6 else "PA"
    write_jpeg(ctx.out / "chexpert" / base / "view1_frontal.jpg", image.pixels)
    rows = [f"{base}/view1_frontal.jpg,{sex},{age},Frontal,{ap_pa}," + _labels(labels)]
    if rng.random() < 0.12:
        write_jpeg(ctx.out / "chexpert" / base / "view2_lateral.jpg", _lateral(image.pixels))
        rows.append(f"{base}/view2_lateral.jpg,{sex},{age},Lateral,," + _labels(labels))
    return rows


def _components(mask: np.ndarray, min_area: int = 4) -> list[np.ndarray]:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return [labels == k for k in range(1, n) if stats[k, cv2.CC_STAT_AREA] >= min_area]


def rsna_item(ctx: Context, i: int) -> dict[str, list[str]]:
    rng = rng_for(ctx, "rsna", i)
    pid = uuid_like(ctx.seed, "rsna", i)
    findings = sample_findings("rsna", rng, ctx.preset.difficulty)
    image = _render(ctx, findings, rng, "rsna")
    boxes = []
    for part in _components(image.masks.get("consolidation", np.zeros(1, bool))):
        ys, xs = np.nonzero(part)
        boxes.append((xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1))
    write_dicom(ctx.out / "rsna-pneumonia" / "stage_2_train_images" / f"{pid}.dcm", image.pixels,
                patient_id=pid, study_uid=dicom_uid(ctx.seed, "rsna-study", i),
                series_uid=dicom_uid(ctx.seed, "rsna-series", i),
                sop_uid=dicom_uid(ctx.seed, "rsna-sop", i), view="PA" if i % 2 else "AP",
                monochrome1=rng.random() < 0.05)  # fmt: skip
    labels = [f"{pid},{x:.1f},{y:.1f},{w:.1f},{h:.1f},1" for x, y, w, h in boxes] or [
        f"{pid},,,,,0"
    ]
    other = any(f.kind != "support" for f in findings)
    cls = "Lung Opacity" if boxes else ("No Lung Opacity / Not Normal" if other else "Normal")
    return {"labels": labels, "classes": [f"{pid},{cls}"] * len(labels)}


def siim_item(ctx: Context, i: int) -> list[str]:
    rng = rng_for(ctx, "siim", i)
    tail = int(digest(ctx.seed, "siim", i)[:6], 16)
    image_id = f"1.2.276.0.7230010.3.1.4.8323329.{1000 + i}.{1517875000 + i % 99999}.{tail}"
    findings = sample_findings("siim", rng, ctx.preset.difficulty)
    image = _render(ctx, findings, rng, "siim")
    study, series = dicom_uid(ctx.seed, "siim-study", i), dicom_uid(ctx.seed, "siim-series", i)
    path = ctx.out / "siim-acr" / "dicom-images-train" / study / series / f"{image_id}.dcm"
    write_dicom(path, image.pixels, patient_id=uuid_like(ctx.seed, "siim-patient", i),
                study_uid=study, series_uid=series, sop_uid=image_id,
                monochrome1=rng.random() < 0.03)  # fmt: skip
    regions = _components(image.masks.get("pneumothorax", np.zeros((1, 1), bool)))
    return [f"{image_id}, {rle_encode(r)}" for r in regions] or [f"{image_id}, -1"]


def objectcxr_item(ctx: Context, i: int, part: str) -> str:
    rng = rng_for(ctx, "objectcxr", i, part)
    findings = sample_findings("objectcxr", rng, ctx.preset.difficulty)
    side = ctx.preset.side
    shape = (int(side * rng.uniform(0.8, 1.25)), int(side * rng.uniform(0.8, 1.25)))
    count = int(rng.choice([1, 1, 2, 3])) if rng.random() < 0.5 else 0
    image = _render(ctx, findings, rng, "objectcxr", objects=count, shape=shape)
    number = i + 1 if part == "train" else 8001 + i
    name = f"{number:05d}.jpg"
    write_jpeg(ctx.out / "object-cxr" / part / name, image.pixels)
    from .objects import annotation_text

    return f"{name},{annotation_text(image.objects)}"


def covidx_item(ctx: Context, i: int, part: str) -> str:
    rng = rng_for(ctx, "covidx", i, part)
    if part == "test":
        label = COVIDX_CLASSES[i % 3]
    else:
        label = COVIDX_CLASSES[int(rng.choice(3, p=COVIDX_TRAIN_MIX))]
    image = _render(ctx, covidx_case(label, rng, ctx.preset.difficulty), rng, "covidx")
    name = f"{uuid_like(ctx.seed, 'covidx', part, i)}.png"
    write_png(ctx.out / "covidx" / part / name, image.pixels)
    source = str(rng.choice(["cohen", "actmed", "sirm", "ricord", "rsna", "bimcv"]))
    return f"{10000 + i if part == 'train' else 90000 + i} {name} {label} {source}"
