"""Decoding DICOMs as a run would: transfer syntaxes the installed pydicom handlers cannot decode,
Pixel Data not stored as the syntax says, any decoder failure, errors that cross processes; RSNA
rows that contradict each other.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from fixtures_formats import (
    RSNA_LABELS,
    relabel_transfer_syntax,
    write_dicom,
    write_rsna,
    write_text,
)

from cxrbench.data import codecs
from cxrbench.data.codecs import check_transfer_syntax, image_size, read_image
from cxrbench.data.formats import rsna
from cxrbench.data.inspect import inspect_dataset
from cxrbench.errors import DataFormatError

JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG2000_PART2 = "1.2.840.10008.1.2.4.92"  # pydicom has no decoder for it at all


def _dicom(tmp_path: Path, name: str = "x.dcm") -> Path:
    return write_dicom(tmp_path / name, np.arange(64, dtype=np.uint8).reshape(8, 8))


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
