"""``data inspect`` finds what a run would hit later: undecodable images and DICOM transfer
syntaxes, empty listings, no training images, contradictory RSNA rows; the command's exit status
and stderr.
"""

from __future__ import annotations

import gzip
import json
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fixtures_formats import (
    CHEXPERT_HEADER,
    RSNA_LABELS,
    SIIM_IDS,
    relabel_transfer_syntax,
    write_chexpert,
    write_covidx,
    write_dicom,
    write_mimic,
    write_objectcxr,
    write_rsna,
    write_siim,
    write_text,
)

from cxrbench.cli import main
from cxrbench.data import codecs, inspect
from cxrbench.data.codecs import check_transfer_syntax, image_size, read_image
from cxrbench.data.formats import rsna
from cxrbench.data.inspect import inspect_dataset, sample_indices
from cxrbench.errors import DataFormatError

JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG2000_PART2 = "1.2.840.10008.1.2.4.92"  # pydicom has no decoder for it at all


def _dicom(tmp_path: Path, name: str = "x.dcm") -> Path:
    return write_dicom(tmp_path / name, np.arange(64, dtype=np.uint8).reshape(8, 8))


def _corrupt_png(path: Path) -> Path:
    """Damage the compressed pixels of a PNG; its header and end marker stay intact."""
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 8
    data[start : start + 4] = b"\xde\xad\xbe\xef"
    path.write_bytes(bytes(data))
    return path


# ------------------------------------------------------------------------------- DICOM syntaxes


def test_unsupported_transfer_syntax_names_file_uid_and_what_is_supported(tmp_path: Path) -> None:
    path = relabel_transfer_syntax(_dicom(tmp_path), JPEG2000_PART2)
    for reader in (image_size, read_image):  # inspect's header check and the loaders' decoder
        with pytest.raises(DataFormatError) as info:
            reader(path)
        assert info.value.path == path
        assert f"{JPEG2000_PART2} (JPEG 2000 Part 2 Multi-component" in str(info.value.got)
        assert "installed pydicom handlers" in info.value.expected
        assert "Explicit VR Little Endian" in info.value.expected  # what is supported


def test_missing_handler_gives_the_syntax_and_what_would_decode_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JPEG 2000 where no installed handler decodes it: a clear error, not a pydicom traceback."""
    real = codecs._decoder_state

    def without_jpeg2000(uid):
        if uid == JPEG2000_LOSSLESS:
            return False, ["pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-openjpeg>=2.0"]
        return real(uid)

    monkeypatch.setattr(codecs, "_decoder_state", without_jpeg2000)
    codecs.decodable_transfer_syntaxes.cache_clear()
    try:
        path = relabel_transfer_syntax(_dicom(tmp_path), JPEG2000_LOSSLESS)
        with pytest.raises(DataFormatError, match="pylibjpeg-openjpeg") as info:
            read_image(path)
        assert "JPEG 2000 Image Compression (Lossless Only)" in str(info.value.got)
        assert "JPEG 2000 Image Compression (Lossless Only)" not in info.value.expected
    finally:
        codecs.decodable_transfer_syntaxes.cache_clear()


def test_compressed_syntax_over_raw_pixels_is_found_from_the_header(tmp_path: Path) -> None:
    path = relabel_transfer_syntax(_dicom(tmp_path), JPEG2000_LOSSLESS)
    for reader in (image_size, read_image):
        with pytest.raises(DataFormatError, match="encapsulated") as info:
            reader(path)
        assert info.value.path == path and JPEG2000_LOSSLESS in info.value.expected
        assert "native (uncompressed)" in str(info.value.got)
    ok = _dicom(tmp_path, "ok.dcm")
    assert str(check_transfer_syntax(ok, codecs.pydicom.dcmread(ok))) == "1.2.840.10008.1.2.1"


def test_dicom_without_a_transfer_syntax_is_found_from_the_header(tmp_path: Path) -> None:
    path = relabel_transfer_syntax(_dicom(tmp_path), None)
    for reader in (image_size, read_image):
        with pytest.raises(DataFormatError, match=r"Transfer Syntax UID \(0002,0010\)") as info:
            reader(path)
        assert info.value.path == path


def test_any_decoder_failure_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args, **kwargs):
        raise TypeError("unsupported LUT\nsecond line")

    monkeypatch.setattr(codecs, "apply_modality_lut", broken)
    path = _dicom(tmp_path)
    with pytest.raises(DataFormatError, match="undecodable") as info:
        read_image(path)
    assert info.value.path == path and "unsupported LUT second line" in str(info.value)


def test_data_format_error_survives_pickling() -> None:
    """Data loader workers and process pools send errors back pickled."""
    error = pickle.loads(pickle.dumps(DataFormatError("a.csv", "x", "y", 3, "hint")))
    assert isinstance(error, DataFormatError)
    assert (error.path, error.expected, error.got, error.line, error.hint) == (
        Path("a.csv"), "x", "y", 3, "hint"
    )  # fmt: skip


# ------------------------------------------------------------------------------- decoding


def test_sample_indices_are_spread_and_deterministic() -> None:
    assert inspect.QUICK_SAMPLE == 64  # the number --quick's help and the docs give
    assert sample_indices(5, 64) == [0, 1, 2, 3, 4]
    picked = sample_indices(1000, 64)
    assert len(set(picked)) == 64 and picked[0] == 0 and picked[-1] == 999
    assert picked == sorted(picked) == sample_indices(1000, 64)
    assert sample_indices(0, 64) == [] and sample_indices(10, 1) == [0]


def test_inspect_decodes_every_image_and_quick_a_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_covidx(tmp_path / "covidx")
    bad = _corrupt_png(root / "test/d.png")  # 4th of 5: header and end marker intact
    (root / "train/b.png").unlink()
    summary, problems = inspect_dataset("covidx", root)
    assert summary["decoded"] == 3  # of 5: one missing, one undecodable
    assert problems == [f"{root / 'train/b.png'}: missing image file", problems[1]]
    assert problems[1].startswith(f"{bad}: expected a complete image file; got undecodable")
    monkeypatch.setattr(inspect, "QUICK_SAMPLE", 2)  # decodes the first and the last
    summary, problems = inspect_dataset("covidx", root, quick=True)
    assert summary["decoded"] == 2
    assert problems == [f"{root / 'train/b.png'}: missing image file"]  # headers: all of them


def test_inspect_lists_dicoms_a_run_could_not_decode(tmp_path: Path) -> None:
    root = write_siim(tmp_path / "siim-acr")
    relabeled = relabel_transfer_syntax(next(root.rglob(f"{SIIM_IDS[1]}.dcm")), JPEG2000_LOSSLESS)
    unknown = relabel_transfer_syntax(next(root.rglob(f"{SIIM_IDS[2]}.dcm")), JPEG2000_PART2)
    for quick in (False, True):
        summary, problems = inspect_dataset("siim", root, quick=quick)
        assert len(problems) == 2 and summary["mask_pixels"] == 5  # image 2's regions unknown
        assert problems[0].startswith(f"{relabeled}: expected encapsulated")
        assert problems[1].startswith(f"{unknown}: expected a transfer syntax")
        assert JPEG2000_PART2 in problems[1]


# ------------------------------------------------------------------------- listings, training


def _header_only(path: Path) -> None:
    path.write_text(path.read_text().splitlines()[0] + "\n")


def _mimic_header_only(root: Path) -> None:
    path = root / "mimic-cxr-2.0.0-split.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("dicom_id,study_id,subject_id,split\n")


def _mimic_no_train(root: Path) -> None:
    path = root / "mimic-cxr-2.0.0-split.csv.gz"
    with gzip.open(path, "rt") as handle:
        text = handle.read()
    with gzip.open(path, "wt") as handle:
        handle.write(text.replace(",train\n", ",validate\n"))


def _chexpert_lateral_only(root: Path) -> None:
    path = root / "CheXpert-v1.0-small/train.csv"
    path.write_text(path.read_text().replace(",Frontal,", ",Lateral,"))


EMPTY_CASES: list[tuple[str, Callable, Callable, str, str]] = [
    ("covidx", write_covidx, lambda r: (r / "train.txt").write_text("\n"), "train.txt",
     "at least one image line; got no image lines"),
    ("covidx", write_covidx, lambda r: (r / "test.txt").write_text(""), "test.txt",
     "at least one image line"),
    ("chexpert", write_chexpert, lambda r: _header_only(r / "CheXpert-v1.0-small/train.csv"),
     "CheXpert-v1.0-small/train.csv", "at least one image row; got only the header line"),
    ("chexpert", write_chexpert,
     lambda r: write_text(r / "CheXpert-v1.0-small/valid.csv", CHEXPERT_HEADER + "\n"),
     "CheXpert-v1.0-small/valid.csv", "at least one image row"),
    ("chexpert", write_chexpert, _chexpert_lateral_only, "CheXpert-v1.0-small/train.csv",
     "at least one Frontal row (the training images"),
    ("rsna", write_rsna, lambda r: _header_only(r / "stage_2_train_labels.csv"),
     "stage_2_train_labels.csv", "at least one patientId row; got only the header line"),
    ("siim", write_siim, lambda r: _header_only(r / "train-rle.csv"), "train-rle.csv",
     "at least one ImageId row"),
    ("objectcxr", write_objectcxr, lambda r: _header_only(r / "dev.csv"), "dev.csv",
     "at least one image row"),
    ("objectcxr", write_objectcxr, lambda r: _header_only(r / "train.csv"), "train.csv",
     "at least one image row"),
    ("mimic", write_mimic, _mimic_header_only, "mimic-cxr-2.0.0-split.csv.gz",
     "at least one image row"),
    ("mimic", write_mimic, _mimic_no_train, "mimic-cxr-2.0.0-split.csv.gz",
     "at least one training pair"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("dataset", "writer", "mutate", "file", "expected"),
    EMPTY_CASES,
    ids=[f"{c[0]}-{c[3].rsplit('/', 1)[-1]}-{i}" for i, c in enumerate(EMPTY_CASES)],
)
def test_empty_listings_and_no_training_images_are_problems(
    tmp_path: Path, dataset: str, writer: Callable, mutate: Callable, file: str, expected: str
) -> None:
    root = writer(tmp_path / dataset)
    mutate(root)
    _, problems = inspect_dataset(dataset, root)
    assert problems and problems[0].startswith(f"{root / file}: expected {expected}")


# -------------------------------------------------------------------------------------------- RSNA


@pytest.mark.parametrize(
    ("row", "got"),
    [
        ("p-bbb,,,,,0", "Target 1 on lines 3, 4 and Target 0 on line 7"),
        ("p-aaa,1,2,3,4,1", "Target 1 on line 7 and Target 0 on line 2"),
    ],
)
def test_rsna_contradictory_rows_are_an_error_of_the_reader(
    tmp_path: Path, row: str, got: str
) -> None:
    root = write_rsna(tmp_path / "rsna-pneumonia")
    labels = write_text(root / "stage_2_train_labels.csv", RSNA_LABELS + row + "\n")
    for read in (rsna.read, lambda r: inspect_dataset("rsna", r)):
        with pytest.raises(DataFormatError, match="agree") as info:
            read(root)
        assert info.value.path == labels and info.value.line == 7
        assert got in str(info.value.got)


# --------------------------------------------------------------------------------------------- CLI


def test_cli_exit_status_stderr_and_progress(tmp_path: Path, capsys) -> None:
    root = write_siim(tmp_path / "siim-acr")
    args = ["data", "inspect", "--dataset", "siim", "--data-root", str(root)]
    assert main([*args, "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["decoded"] == 4 and captured.err == ""
    bad = relabel_transfer_syntax(next(root.rglob(f"{SIIM_IDS[0]}.dcm")), JPEG2000_PART2)
    assert main([*args, "--quick"]) == 1
    captured = capsys.readouterr()
    problems = json.loads(captured.out)["problems"]  # the bar goes to stderr, not into the JSON
    assert len(problems) == 1 and problems[0].startswith(str(bad))
    assert f"cxrbench: error: {problems[0]}\n" in captured.err
    assert f"cxrbench: error: 1 problem(s) in {root}\n" in captured.err
    assert "siim images" in captured.err  # the progress bar
    write_text(root / "train-rle.csv", "ImageId, EncodedPixels\n")
    assert main([*args, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"{root / 'train-rle.csv'}: expected at least one ImageId row" in err


def test_data_splits_refuses_to_store_an_empty_training_part(tmp_path: Path) -> None:
    from cxrbench.data.splits import make_splits, splits_dir
    from cxrbench.errors import DataFormatError

    root = write_covidx(tmp_path / "covidx")
    (root / "train.txt").write_text("\n")
    with pytest.raises(DataFormatError, match=r"every split part.*got train 0"):
        make_splits("covidx", root)
    assert not splits_dir(root).exists()
