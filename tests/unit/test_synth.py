"""SynthCXR: deterministic bytes, official headers, exact annotations, labels read from reports."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest

from cxrbench.data.codecs import read_image
from cxrbench.data.formats import chexpert, rsna, siim
from cxrbench.synth import PRESETS, generate
from cxrbench.synth.cases import PREVALENCE
from cxrbench.synth.findings import Finding
from cxrbench.synth.reports import label_report, write_report


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "a"
    generate(root, "tiny", seed=0, workers=2, progress=False, scale=0.3)
    return root


def test_same_seed_same_bytes_for_any_worker_count(corpus, tmp_path) -> None:
    generate(tmp_path / "b", "tiny", seed=0, workers=1, progress=False, scale=0.3)
    a, b = _hashes(corpus), _hashes(tmp_path / "b")
    assert len(a) > 500 and a == b
    generate(tmp_path / "c", "tiny", seed=1, workers=1, progress=False, scale=0.3)
    c = _hashes(tmp_path / "c")
    assert (
        a["rsna-pneumonia/stage_2_train_labels.csv"] != c["rsna-pneumonia/stage_2_train_labels.csv"]
    )


def test_official_headers_and_quirks(corpus) -> None:
    first = {
        "siim-acr/train-rle.csv": "ImageId, EncodedPixels",
        "rsna-pneumonia/stage_2_train_labels.csv": "patientId,x,y,width,height,Target",
        "rsna-pneumonia/stage_2_detailed_class_info.csv": "patientId,class",
        "object-cxr/train.csv": "image_name,annotation",
        "chexpert/CheXpert-v1.0-small/train.csv": "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,"
        "Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,Lung Lesion,Edema,Consolidation,"
        "Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,"
        "Support Devices",
    }
    for name, header in first.items():
        assert (corpus / name).read_text().splitlines()[0] == header, name
    rle_values = [
        line.split(",", 1)[1]
        for line in (corpus / "siim-acr/train-rle.csv").read_text().splitlines()[1:]
    ]
    assert all(v.startswith(" ") for v in rle_values) and " -1" in rle_values
    with gzip.open(corpus / "mimic-cxr-jpg/mimic-cxr-2.0.0-split.csv.gz", "rt") as fh:
        assert fh.readline().strip() == "dicom_id,study_id,subject_id,split"
        splits = {line.strip().split(",")[3] for line in fh}
    assert splits == {"train", "validate", "test"}
    covidx = (corpus / "covidx/train.txt").read_text().splitlines()[0].split(" ")
    assert len(covidx) == 4 and covidx[2] in ("normal", "pneumonia", "COVID-19")
    assert (corpus / "covidx/train" / covidx[1]).is_file()


def test_rsna_boxes_are_the_drawn_opacity(corpus) -> None:
    """Opacity raises intensity: inside the boxes the image is brighter than the same place in
    images without pneumonia (the boxes come from the drawn geometry)."""
    index = rsna.read(corpus / "rsna-pneumonia")
    positives = [r for r in index.images if r.boxes][:15]
    negatives = [r for r in index.images if not r.boxes][:40]
    neg_mean = np.mean([read_image(r.image_path).astype(float) for r in negatives], axis=0)
    diffs = []
    for r in positives:
        img = read_image(r.image_path).astype(float)
        for x, y, w, h in r.boxes:
            sl = np.s_[int(y) : int(y + h), int(x) : int(x + w)]
            diffs.append(img[sl].mean() - neg_mean[sl].mean())
    assert np.mean(diffs) > 8  # grey levels


def test_monochrome1_dicoms_are_inverted_back_by_the_reader(corpus) -> None:
    paths = sorted((corpus / "rsna-pneumonia/stage_2_train_images").glob("*.dcm"))
    paths += sorted((corpus / "siim-acr").rglob("*.dcm"))
    mono1 = [
        p
        for p in paths
        if pydicom.dcmread(p, stop_before_pixels=True).PhotometricInterpretation == "MONOCHROME1"
    ]
    assert mono1, "the corpus must exercise MONOCHROME1"
    raw = pydicom.dcmread(mono1[0]).pixel_array
    shown = read_image(mono1[0])
    # lungs are dark in a displayed radiograph: the raw MONOCHROME1 centre is bright instead
    assert raw[raw.shape[0] // 3, raw.shape[1] // 4] > shown[raw.shape[0] // 3, raw.shape[1] // 4]


def test_siim_masks_union_matches_pneumothorax_positives(corpus) -> None:
    index = siim.read(corpus / "siim-acr")
    positives = [r for r in index.images if r.rles]
    assert 0.1 < len(positives) / len(index.images) < 0.45  # ~25 % prevalence
    img = read_image(positives[0].image_path)
    mask = positives[0].mask(*img.shape)
    assert mask.any() and mask.sum() < 0.2 * mask.size


def test_report_labels_follow_the_text() -> None:
    rng = np.random.default_rng(3)
    for _ in range(30):
        findings = (
            Finding("effusion", "left", severity=1.1),
            Finding("cardiomegaly", severity=1.0),
        )
        report = write_report(findings, rng, noise=0.0)
        labels = label_report(report)
        assert labels["Pleural Effusion"] == 1.0 and labels["Cardiomegaly"] == 1.0
        assert labels["No Finding"] is None
    hedged = write_report((Finding("pneumothorax", "right", severity=0.6, hedged=True),), rng, 0.0)
    assert label_report(hedged)["Pneumothorax"] == -1.0
    normal = write_report((), rng, noise=0.0)
    labels = label_report(normal)
    assert labels["No Finding"] == 1.0
    assert {v for k, v in labels.items() if k != "No Finding"} <= {0.0, None}
    assert "No " in normal or "normal" in normal  # explicit negations of absent findings


def test_chexpert_layout_labels_come_from_reports_and_valid_is_complete(corpus) -> None:
    index = chexpert.read(corpus / "chexpert")
    train = [r for r in index.images if r.split == "train"]
    valid = [r for r in index.images if r.split == "valid"]
    assert any(v is None for r in train for v in r.labels.values())  # blanks: unmentioned
    assert any(v == -1.0 for r in train for v in r.labels.values())  # uncertain mentions
    assert all(v in (0.0, 1.0) for r in valid for v in r.labels.values())
    assert any(not r.frontal for r in train)


def test_presets_and_bad_preset() -> None:
    assert PRESETS["tiny"].side == 64 and PRESETS["small"].side == 128
    from cxrbench.errors import CxrbenchError

    with pytest.raises(CxrbenchError, match="unknown SynthCXR preset"):
        generate(Path("/nonexistent"), "huge")


def test_manifest_says_which_corpus_is_out_of_date(corpus, tmp_path, monkeypatch) -> None:
    import json
    from types import SimpleNamespace

    import cxrbench.synth as synth
    from cxrbench.runner.bench import data_root_for
    from cxrbench.synth.generate import CORPUS_VERSION, MANIFEST, _identity, stale_reason

    written = json.loads((corpus / MANIFEST).read_text())
    assert written["corpus_version"] == CORPUS_VERSION and written["seed"] == 0
    assert written["sizes"]["rsna"] == PRESETS["tiny"].scaled(0.3).sizes.rsna
    # the test corpus is a scaled one: not what `generate(root, "tiny")` writes
    assert "sizes" in stale_reason(corpus, "tiny")
    current = tmp_path / "current"
    (current / "mimic-cxr-jpg").mkdir(parents=True)
    (current / "mimic-cxr-jpg" / "mimic-cxr-2.0.0-split.csv.gz").write_bytes(b"")
    (current / MANIFEST).write_text(json.dumps(_identity(PRESETS["tiny"], "tiny", 0)))
    assert stale_reason(current, "tiny") is None
    assert "seed 0, expected 1" in stale_reason(current, "tiny", seed=1)
    older = dict(_identity(PRESETS["tiny"], "tiny", 0), corpus_version=CORPUS_VERSION - 1)
    (tmp_path / "older").mkdir()
    (tmp_path / "older" / MANIFEST).write_text(json.dumps(older))
    assert "corpus_version" in stale_reason(tmp_path / "older", "tiny")
    assert f"no {MANIFEST}" in stale_reason(tmp_path, "tiny")

    # bench's default corpus: regenerated when out of date, left alone when current or given
    calls = []
    monkeypatch.setattr(synth, "generate", lambda root, *a, **k: calls.append(Path(root)))
    plan = SimpleNamespace(data_root=current, suite=SimpleNamespace(data_root=None, preset="tiny"))
    assert data_root_for(plan, progress=False) == current and calls == []
    (current / MANIFEST).write_text(json.dumps(older))
    assert data_root_for(plan, progress=False) == current and calls == [current]
    given = SimpleNamespace(data_root=current, suite=SimpleNamespace(data_root="x", preset="tiny"))
    assert data_root_for(given, progress=False) == current and calls == [current]


def test_chexpert_single_finding_studies_feed_gloria_rule(corpus) -> None:
    """A share of CheXpert studies holds one competition finding alone (corpus version 3), so
    GLoRIA's 5×200 rule finds every class; other layouts draw exactly as before."""
    from cxrbench.synth.cases import SINGLE_FINDING, sample_findings
    from cxrbench.tasks.chexpert_zeroshot import eligible

    d = PRESETS["small"].difficulty
    share, weights = SINGLE_FINDING["chexpert"]
    rng = np.random.default_rng(0)
    draws = [sample_findings("chexpert", rng, d) for _ in range(4000)]
    alone = [f[0].kind for f in draws if len(f) == 1 and f[0].kind in weights]
    # single-finding studies plus the independent draws that happen to hold one finding
    assert share <= len(alone) / len(draws) < share + 0.2  # independent draws alone: ~0.23
    assert set(alone) == set(weights)
    assert alone.count("consolidation") > 2 * alone.count("cardiomegaly")  # weighted 3.5 : 1
    # RSNA (and every layout without single-finding studies) consumes the generator as before
    a, b = np.random.default_rng(1), np.random.default_rng(1)
    assert "rsna" not in SINGLE_FINDING
    prevalence = PREVALENCE["rsna"]
    assert [f.kind for f in sample_findings("rsna", a, d)] == [
        k for k, p in prevalence.items() if b.random() < p
    ]
    pools = eligible(chexpert.read(corpus / "chexpert"))
    assert all(len(p) >= 3 for p in pools.values()), {k: len(v) for k, v in pools.items()}
