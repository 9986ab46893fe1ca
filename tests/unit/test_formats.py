"""Readers of the official formats and ``inspect`` on tiny fixtures written in those formats."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from fixtures_formats import (
    CHEXPERT_COMPETITION,
    CHEXPERT_SUMMARY,
    COVIDX_BINARY_TEST,
    COVIDX_BINARY_TRAIN,
    COVIDX_SUMMARY,
    MIMIC_SUMMARY,
    OBJECT_SUMMARY,
    RSNA_SUMMARY,
    SIIM_CSV,
    SIIM_IDS,
    SIIM_MASK_2,
    SIIM_SUMMARY,
    TEXT_FULL,
    TEXT_NUMBERED,
    write_chexpert,
    write_covidx,
    write_mimic,
    write_objectcxr,
    write_rsna,
    write_siim,
    write_text,
)

from cxrbench.data.formats import (
    FOLDERS,
    READERS,
    chexpert,
    covidx,
    get_reader,
    mimic,
    objectcxr,
    rsna,
    siim,
)
from cxrbench.data.inspect import inspect_dataset
from cxrbench.errors import DataFormatError, RegistryError


def test_registry_keys_and_folders() -> None:
    assert FOLDERS == {
        "mimic": "mimic-cxr-jpg",
        "chexpert": "chexpert",
        "rsna": "rsna-pneumonia",
        "siim": "siim-acr",
        "objectcxr": "object-cxr",
        "covidx": "covidx",
    }
    assert READERS["siim"] is siim
    with pytest.raises(RegistryError, match="Did you mean 'siim'"):
        get_reader("sim")


# ------------------------------------------------------------------------------------------ MIMIC


def test_mimic_reader_and_pairs(tmp_path: Path) -> None:
    root = write_mimic(tmp_path / "mimic-cxr-jpg")
    index = mimic.read(root)
    assert index.ids() == [f"d{i}" for i in range(1, 9)]
    first = index.images[0]
    assert (first.subject_id, first.study_id, first.split, first.view_position) == (
        "10000032",
        "50000001",
        "train",
        "PA",
    )
    assert first.image_path == root / "files/p10/p10000032/s50000001/d1.jpg"
    assert first.report_path == root / "files/p10/p10000032/s50000001.txt"
    assert [i.dicom_id for i in index.frontal()] == ["d1", "d3", "d4", "d5", "d6", "d8"]
    assert index.labels["50000001"] == {"Atelectasis": 1.0, "Cardiomegaly": None}
    assert index.labels["50000003"] == {"Atelectasis": -1.0, "Cardiomegaly": 0.0}
    pairs = mimic.pairs(index)
    assert [(image.dicom_id, text) for image, text in pairs] == [
        ("d1", TEXT_FULL),
        ("d4", TEXT_NUMBERED),
        ("d5", TEXT_NUMBERED),
        ("d8", TEXT_FULL),
    ]
    sentence_pairs = mimic.sentence_pairs(index)
    assert [" ".join(s) for _, s in sentence_pairs] == [text for _, text in pairs]
    assert all(len(s) > 1 for _, s in sentence_pairs)  # the fixtures' reports have several


def test_mimic_inspect_and_problems(tmp_path: Path) -> None:
    root = write_mimic(tmp_path / "mimic-cxr-jpg")
    assert inspect_dataset("mimic", root) == (MIMIC_SUMMARY, [])
    (root / "files/p11/p11000011/s50000003/d5.jpg").unlink()
    (root / "files/p11/p11000011/s50000006.txt").write_bytes(b"IMPRESSION: \xff\n")
    summary, problems = inspect_dataset("mimic", root)
    assert summary["pairs"] == 3 and summary["splits"]["validate"] == 0
    assert len(problems) == 2
    assert problems[0].startswith(str(root / "files/p11/p11000011/s50000003/d5.jpg"))
    assert "missing" in problems[0]
    assert problems[1].startswith(str(root / "files/p11/p11000011/s50000006.txt") + ", line 1")


def test_mimic_view_of_every_image_is_required(tmp_path: Path) -> None:
    root = write_mimic(tmp_path / "m")
    meta = root / "mimic-cxr-2.0.0-metadata.csv.gz"
    with gzip.open(meta, "rt") as handle:
        lines = handle.read().splitlines()
    with gzip.open(meta, "wt") as handle:
        handle.write("\n".join(lines[:3] + lines[4:]) + "\n")  # drop d3 (split line 4)
    with pytest.raises(DataFormatError, match="line 4") as info:
        mimic.read(root)
    assert info.value.path == meta


# ---------------------------------------------------------------------------------------- CheXpert


@pytest.mark.parametrize("inner", ["CheXpert-v1.0-small", "CheXpert-v1.0"])
def test_chexpert_reader_u_mapping(tmp_path: Path, inner: str) -> None:
    root = write_chexpert(tmp_path / "chexpert", inner)
    for given in (root, root / inner):
        index = chexpert.read(given)
        assert index.inner == root / inner
        assert [i.split for i in index.images] == ["train", "train", "train", "valid"]
        assert [i.frontal for i in index.images] == [True, False, True, True]
        first = index.images[0]
        assert first.path == f"{inner}/train/patient00001/study1/view1_frontal.jpg"
        assert first.image_path == root / inner / "train/patient00001/study1/view1_frontal.jpg"
        assert first.image_path.is_file()
        assert first.labels["Atelectasis"] == -1.0 and first.labels["Consolidation"] is None
        assert first.ap_pa == "AP"
        got = [i.competition_labels().tolist() for i in index.images]
        assert got == [list(map(float, row)) for row in CHEXPERT_COMPETITION]
    assert inspect_dataset("chexpert", root) == (CHEXPERT_SUMMARY, [])


def test_chexpert_bad_label_and_missing_layout(tmp_path: Path) -> None:
    root = write_chexpert(tmp_path / "chexpert")
    train = root / "CheXpert-v1.0-small/train.csv"
    train.write_text(train.read_text().replace(",-1.0,", ",2.0,", 1))
    with pytest.raises(DataFormatError, match=r"1\.0, 0\.0, -1\.0 or blank") as info:
        chexpert.read(root)
    assert info.value.path == train and info.value.line == 2
    with pytest.raises(DataFormatError, match=r"CheXpert-v1\.0-small/train\.csv") as info:
        chexpert.read(tmp_path)
    assert "datasets/README.md" in str(info.value)


# -------------------------------------------------------------------------------------------- RSNA


def test_rsna_reader_boxes_and_masks(tmp_path: Path) -> None:
    root = write_rsna(tmp_path / "rsna-pneumonia")
    index = rsna.read(root)
    assert index.ids() == ["p-aaa", "p-bbb", "p-ccc", "p-ddd"]
    assert [i.target for i in index.images] == [0, 1, 0, 1]
    bbb = index.images[1]
    assert bbb.boxes == ((2.0, 3.0, 10.0, 5.0), (8.0, 4.0, 4.0, 6.0))
    assert bbb.box_lines == (3, 4) and bbb.detail == "Lung Opacity"
    assert bbb.image_path == root / "stage_2_train_images/p-bbb.dcm"
    mask = bbb.mask(32, 32)
    expected = np.zeros((32, 32), dtype=bool)
    expected[3:8, 2:12] = True
    expected[4:10, 8:12] = True
    np.testing.assert_array_equal(mask, expected)
    assert index.images[2].detail == "No Lung Opacity / Not Normal"
    assert inspect_dataset("rsna", root) == (RSNA_SUMMARY, [])


def test_rsna_box_outside_image(tmp_path: Path) -> None:
    root = write_rsna(tmp_path / "rsna-pneumonia")
    labels = root / "stage_2_train_labels.csv"
    labels.write_text(labels.read_text().replace("p-ddd,20.0", "p-ddd,25.0"))
    ddd = rsna.read(root).images[3]
    with pytest.raises(DataFormatError, match="inside the 32x32 image") as info:
        rsna.check_boxes_inside(ddd, 32, 32)
    assert info.value.path == labels and info.value.line == 6
    summary, problems = inspect_dataset("rsna", root)
    assert summary["boxes"] == 3 and len(problems) == 1
    assert problems[0].startswith(f"{labels}, line 6")


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ("p-eee,1,2,3,4,2", "Target 0 or 1"),
        ("p-eee,1,2,3,,1", "numeric x,y,width,height"),
        ("p-eee,1,2,0,4,1", "positive width and height"),
        ("p-eee,1,2,3,4,0", "empty x,y,width,height for Target 0"),
    ],
)
def test_rsna_bad_rows(tmp_path: Path, row: str, expected: str) -> None:
    root = write_rsna(tmp_path / "r")
    labels = root / "stage_2_train_labels.csv"
    labels.write_text(labels.read_text() + row + "\n")
    with pytest.raises(DataFormatError, match=expected) as info:
        rsna.read(root)
    assert info.value.path == labels and info.value.line == 7


def test_missing_column_names_file_line_and_columns(tmp_path: Path) -> None:
    root = tmp_path / "rsna-pneumonia"
    labels = write_text(root / "stage_2_train_labels.csv", "patientId,x,y,width,height\na,,,,\n")
    with pytest.raises(DataFormatError) as info:
        rsna.read(root)
    assert info.value.path == labels and info.value.line == 1
    assert "Target" in info.value.expected and "'height'" in str(info.value.got)


def test_missing_root_and_file_point_to_the_readme(tmp_path: Path) -> None:
    for module in (mimic, chexpert, rsna, siim, objectcxr, covidx):
        with pytest.raises(DataFormatError, match=r"datasets/README\.md") as info:
            module.read(tmp_path / "nowhere")
        assert info.value.path == tmp_path / "nowhere"
    (tmp_path / "siim-acr/dicom-images-train").mkdir(parents=True)
    with pytest.raises(DataFormatError, match=r"train-rle\.csv") as info:
        siim.read(tmp_path / "siim-acr")
    assert info.value.path == tmp_path / "siim-acr/train-rle.csv"
    assert "datasets/README.md" in str(info.value)


# -------------------------------------------------------------------------------------------- SIIM


@pytest.mark.parametrize("header", ["ImageId, EncodedPixels", "ImageId,EncodedPixels"])
def test_siim_reader_and_masks(tmp_path: Path, header: str) -> None:
    root = write_siim(tmp_path / "siim-acr", header)
    index = siim.read(root)
    assert index.ids() == list(SIIM_IDS)
    two = index.images[1]
    assert two.rles == ("1 2 3 1", "2 3") and two.rle_lines == (3, 4)
    assert two.image_path.parts[-3:] == (
        f"{SIIM_IDS[1]}.study",
        f"{SIIM_IDS[1]}.series",
        f"{SIIM_IDS[1]}.dcm",
    )
    np.testing.assert_array_equal(two.mask(4, 3), SIIM_MASK_2)
    assert not index.images[0].positive and not index.images[0].mask(8, 8).any()
    assert inspect_dataset("siim", root) == (SIIM_SUMMARY, [])


def test_siim_missing_dicom_and_run_past_the_end(tmp_path: Path) -> None:
    root = write_siim(tmp_path / "siim-acr")
    csv = root / "train-rle.csv"
    dicom = next(root.rglob(f"{SIIM_IDS[0]}.dcm"))
    dicom.unlink()
    csv.write_text(SIIM_CSV.replace("0 5", "20 6"))
    index = siim.read(root)
    assert index.images[0].image_path == root / "dicom-images-train" / f"{SIIM_IDS[0]}.dcm"
    assert [i.image_id for i in index.missing_images()] == [SIIM_IDS[0]]
    with pytest.raises(DataFormatError, match="inside the 5x5 image") as info:
        index.images[3].mask(5, 5)
    assert info.value.path == csv and info.value.line == 6
    summary, problems = inspect_dataset("siim", root)
    assert summary["mask_pixels"] == 5 and len(problems) == 2
    assert problems[0].startswith(str(dicom.parents[2] / f"{SIIM_IDS[0]}.dcm"))
    assert "line 2" in problems[0]
    assert problems[1].startswith(f"{csv}, line 6")


def test_siim_odd_rle_is_found_when_reading(tmp_path: Path) -> None:
    root = write_siim(tmp_path / "siim-acr")
    csv = root / "train-rle.csv"
    csv.write_text(SIIM_CSV.replace(", 2 3\n", ", 2 3 4\n"))
    with pytest.raises(DataFormatError, match="even number") as info:
        siim.read(root)
    assert info.value.path == csv and info.value.line == 4


# -------------------------------------------------------------------------------------- Object-CXR


def test_objectcxr_reader(tmp_path: Path) -> None:
    root = write_objectcxr(tmp_path / "object-cxr")
    index = objectcxr.read(root)
    assert index.ids() == ["00001.jpg", "00002.jpg", "00003.jpg", "08001.jpg"]
    assert [i.split for i in index.images] == ["train", "train", "train", "dev"]
    assert index.images[1].objects == ()
    third = index.images[2]
    assert [s.kind for s in third.objects] == ["ellipse", "polygon"]
    assert [s.bbox for s in third.objects] == [(5.0, 5.0, 15.0, 11.0), (1.0, 1.0, 8.0, 9.0)]
    assert index.images[3].image_path == root / "dev/08001.jpg"
    assert inspect_dataset("objectcxr", root) == (OBJECT_SUMMARY, [])


def test_objectcxr_box_outside_and_deleted_image(tmp_path: Path) -> None:
    root = write_objectcxr(tmp_path / "object-cxr", "image_name,annotation\n08001.jpg,0 0 0 40 4\n")
    (root / "train/00002.jpg").unlink()
    dev = root / "dev.csv"
    with pytest.raises(DataFormatError, match="inside the 32x24 image") as info:
        objectcxr.check_boxes_inside(objectcxr.read(root).images[3], 24, 32)
    assert info.value.path == dev and info.value.line == 2
    _, problems = inspect_dataset("objectcxr", root)
    assert problems == [f"{root / 'train/00002.jpg'}: missing image file", str(info.value)]


def test_objectcxr_unknown_shape_type(tmp_path: Path) -> None:
    root = write_objectcxr(tmp_path / "object-cxr", "image_name,annotation\n08001.jpg,5 0 0 4 4\n")
    with pytest.raises(DataFormatError, match="rectangle") as info:
        objectcxr.read(root)
    assert info.value.path == root / "dev.csv" and info.value.line == 2


# ------------------------------------------------------------------------------------------ COVIDx


def test_covidx_three_class_generation(tmp_path: Path) -> None:
    root = write_covidx(tmp_path / "covidx")
    index = covidx.read(root)
    assert index.classes == ("normal", "pneumonia", "COVID-19")
    assert index.ids() == ["a.png", "b.png", "c.jpeg", "d.png", "e.png"]
    last = index.images[-1]
    assert (last.patient_id, last.label, last.source, last.split) == ("5", "normal", "", "test")
    assert last.image_path == root / "test/e.png" and last.line == 2
    assert index.label_index(index.images[2]) == 2
    assert inspect_dataset("covidx", root) == (COVIDX_SUMMARY, [])


@pytest.mark.parametrize(
    "names",
    [
        ("train.txt", "test.txt"),
        ("train_COVIDx9A.txt", "test_COVIDx9A.txt"),
        ("train_split.txt", "test_split.txt"),
        ("train_COVIDx8B.txt", "test_COVIDx8B.txt"),
    ],
)
def test_covidx_two_class_generation_and_file_names(tmp_path: Path, names: tuple) -> None:
    root = write_covidx(tmp_path / "covidx", COVIDX_BINARY_TRAIN, COVIDX_BINARY_TEST, names)
    index = covidx.read(root)
    assert index.classes == ("negative", "positive")
    assert [i.label for i in index.images] == ["positive", "negative", "negative", "positive"]
    assert index.listings == (root / names[0], root / names[1])
    summary, problems = inspect_dataset("covidx", root)
    assert summary == {"images": 4, "classes": {"negative": 2, "positive": 2}, "decoded": 4}
    assert not problems


@pytest.mark.parametrize(
    ("test", "expected"),
    [
        ("4 d.png tuberculosis sirm\n", "class normal, pneumonia"),
        ("4 d.png positive sirm\n", "generation"),
        ("4 d.png\n", "patient_id filename class"),
    ],
)
def test_covidx_bad_lines(tmp_path: Path, test: str, expected: str) -> None:
    root = tmp_path / "covidx"
    write_text(root / "train.txt", "1 a.png normal rsna\n")
    write_text(root / "test.txt", "\n" + test)
    with pytest.raises(DataFormatError, match=expected) as info:
        covidx.read(root)
    assert info.value.path == root / "test.txt" and info.value.line == 2
