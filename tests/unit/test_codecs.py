"""Codecs: SIIM RLE, image decoding (JPEG/PNG/DICOM, MONOCHROME1, VOI), Object-CXR shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fixtures_formats import truncate, write_dicom, write_image
from PIL import Image

from cxrbench.data.codecs import (
    Shape,
    image_size,
    parse_annotation,
    parse_shape,
    read_image,
    rle_decode,
    rle_encode,
)
from cxrbench.errors import DataFormatError

# ------------------------------------------------------------------------------------------- RLE


def test_rle_hand_made_siim_example() -> None:
    # 3x3, column-major pixels 0..8: runs {1, 2} and, 3 after the end of that run, {6}
    expected = np.array([[0, 0, 1], [1, 0, 0], [1, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(rle_decode("1 2 3 1", 3, 3), expected)
    assert rle_encode(expected) == "1 2 3 1"


def test_rle_round_trip_multi_region_and_empty() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = rng.random((7, 5)) < 0.3
        assert np.array_equal(rle_decode(rle_encode(mask), 7, 5), mask)
    empty = np.zeros((4, 6), dtype=bool)
    assert rle_encode(empty) == "-1"
    assert not rle_decode("-1", 4, 6).any()
    assert not rle_decode(" -1", 4, 6).any()
    full = np.ones((2, 3), dtype=bool)
    assert rle_encode(full) == "0 6"


@pytest.mark.parametrize(
    ("rle", "expected"),
    [("1 2 3", "even number"), ("1 2 3 10", "inside the 3x3 image"), ("a 1", "integer")],
)
def test_rle_malformed_names_file_and_line(rle: str, expected: str) -> None:
    with pytest.raises(DataFormatError, match=expected) as info:
        rle_decode(rle, 3, 3, path="train-rle.csv", line=7)
    assert info.value.path == Path("train-rle.csv") and info.value.line == 7
    assert "train-rle.csv, line 7" in str(info.value)


# ---------------------------------------------------------------------------------------- images


def test_png_and_jpeg_read_as_grayscale(tmp_path: Path) -> None:
    pixels = np.arange(12 * 20, dtype=np.uint8).reshape(12, 20)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), pixels)
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[..., 1] = 200  # pure green: ITU-R 601 luma 0.587 * 200 = 117
    Image.fromarray(rgb).save(tmp_path / "c.png")
    assert read_image(tmp_path / "c.png").tolist() == [[117] * 5] * 4
    write_image(tmp_path / "b.jpg", height=12, width=20)
    decoded = read_image(tmp_path / "b.jpg")
    assert decoded.dtype == np.uint8 and decoded.shape == (12, 20)
    assert image_size(tmp_path / "b.jpg") == (12, 20)
    assert image_size(tmp_path / "a.png") == (12, 20)


def test_sixteen_bit_png_is_scaled(tmp_path: Path) -> None:
    pixels = np.array([[0, 257 * 100], [65535, 257 * 3]], dtype=np.uint16)
    Image.fromarray(pixels).save(tmp_path / "w.png")
    assert read_image(tmp_path / "w.png").tolist() == [[0, 100], [255, 3]]


def test_dicom_monochrome2_and_monochrome1(tmp_path: Path) -> None:
    pixels = np.array([[0, 255], [100, 200]], dtype=np.uint8)
    write_dicom(tmp_path / "m2.dcm", pixels)
    write_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1")
    assert read_image(tmp_path / "m2.dcm").tolist() == [[0, 255], [100, 200]]
    assert read_image(tmp_path / "m1.dcm").tolist() == [[255, 0], [155, 55]]
    assert image_size(tmp_path / "m1.dcm") == (2, 2)


def test_dicom_min_max_scaling_of_12_bit_data(tmp_path: Path) -> None:
    pixels = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    write_dicom(tmp_path / "raw.dcm", pixels, bits_stored=12)
    # 255 * [0, 1000, 2000, 4000] / 4000, rounded
    assert read_image(tmp_path / "raw.dcm").tolist() == [[0, 64], [128, 255]]


def test_dicom_window_applied_after_rescale(tmp_path: Path) -> None:
    stored = np.array([[0, 500], [750, 2000], [300, 10]], dtype=np.uint16)
    # rescale x2 -> [[0, 1000], [1500, 4000], [600, 20]]; window centre 1000, width 1000:
    # <= 500 -> black, > 1499 -> white, 1000 -> ((1000 - 999.5) / 999 + 0.5) * 255 = 127.6
    # 600 -> ((600 - 999.5) / 999 + 0.5) * 255 = 25.5
    write_dicom(tmp_path / "w.dcm", stored, bits_stored=12, window=(1000, 1000), rescale=(2.0, 0.0))
    image = read_image(tmp_path / "w.dcm").astype(int)
    assert image[0, 0] == 0 and image[2, 1] == 0
    assert image[1, 0] == 255 and image[1, 1] == 255
    assert abs(image[0, 1] - 128) <= 1
    assert abs(image[2, 0] - 26) <= 1


def test_dicom_voi_lut_sequence(tmp_path: Path) -> None:
    stored = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    write_dicom(tmp_path / "lut.dcm", stored, voi_lut=[0, 10, 200, 255])
    # through the LUT: [[0, 10], [200, 255]] (plain min-max scaling would give 0, 85, 170, 255)
    assert read_image(tmp_path / "lut.dcm").tolist() == [[0, 10], [200, 255]]


def test_dicom_non_square_size(tmp_path: Path) -> None:
    write_dicom(tmp_path / "r.dcm", np.zeros((3, 7), dtype=np.uint8))
    assert image_size(tmp_path / "r.dcm") == (3, 7)
    assert read_image(tmp_path / "r.dcm").shape == (3, 7)


@pytest.mark.parametrize("name", ["t.jpg", "t.png"])
def test_truncated_raster_is_an_error(tmp_path: Path, name: str) -> None:
    path = truncate(write_image(tmp_path / name, height=64, width=64))
    for reader in (read_image, image_size):
        with pytest.raises(DataFormatError, match=r"truncated|complete") as info:
            reader(path)
        assert info.value.path == path


def test_truncated_dicom_is_an_error(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "t.dcm", np.zeros((32, 32), dtype=np.uint16), bits_stored=12)
    truncate(path, keep=0.7)
    for reader in (read_image, image_size):
        with pytest.raises(DataFormatError) as info:
            reader(path)
        assert info.value.path == path


def test_dicom_without_pixel_data_is_an_error(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "n.dcm", np.zeros((4, 4), dtype=np.uint8), with_pixels=False)
    for reader in (read_image, image_size):
        with pytest.raises(DataFormatError, match="Pixel Data") as info:
            reader(path)
        assert info.value.path == path


def test_missing_and_garbage_files(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="no such file") as info:
        read_image(tmp_path / "absent.jpg")
    assert info.value.path == tmp_path / "absent.jpg"
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    with pytest.raises(DataFormatError) as info:
        image_size(tmp_path / "junk.jpg")
    assert info.value.path == tmp_path / "junk.jpg"


# ---------------------------------------------------------------------------------------- shapes


def test_shapes_bbox_and_masks() -> None:
    rect, ellipse, polygon = parse_annotation("0 2 3 10 12;1 5 5 15 11; 2 1 1 8 2 4 9")
    assert rect == Shape("rectangle", ((2.0, 3.0), (10.0, 12.0)))
    assert rect.bbox == (2.0, 3.0, 10.0, 12.0)
    assert ellipse.bbox == (5.0, 5.0, 15.0, 11.0)
    assert polygon.kind == "polygon" and polygon.bbox == (1.0, 1.0, 8.0, 9.0)
    mask = rect.mask(24, 32)
    assert mask.sum() == 9 * 10 and mask[3, 2] and mask[12, 10] and not mask[13, 10]
    emask = ellipse.mask(24, 32)
    assert emask[8, 10] and not emask[5, 5] and not emask[11, 15]
    assert emask.sum() < 11 * 7 and emask[:, :5].sum() == 0
    pmask = polygon.mask(24, 32)
    assert pmask[1, 1] and pmask[2, 8] and pmask[9, 4] and pmask[4, 4]
    assert not pmask[9, 8] and not pmask[0, 0]
    assert parse_annotation("") == () and parse_annotation(" ") == ()


def test_reversed_corners_give_the_same_box() -> None:
    assert parse_shape("0 10 12 2 3").bbox == (2.0, 3.0, 10.0, 12.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3 1 2 3 4", "type 0"),
        ("0 1 2 3", "4 coordinates"),
        ("1 1 2 3 4 5", "4 coordinates"),
        ("2 1 1 8 2 4", "even number"),
        ("2 1 1 8 2", "at least 6"),
        ("0 1 2 x 4", "numeric"),
    ],
)
def test_bad_shapes_name_file_and_line(text: str, expected: str) -> None:
    with pytest.raises(DataFormatError, match=expected) as info:
        parse_annotation(f"0 1 1 2 2;{text}", path="train.csv", line=4)
    assert info.value.path == Path("train.csv") and info.value.line == 4
