"""Encoder artifact: bit-identical round trip, tamper detection, clear errors for broken dirs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

from cxrbench import __version__
from cxrbench.errors import CxrbenchError
from cxrbench.models import (
    NORMALIZATION,
    Backbone,
    build_backbone,
    encoder_sha256,
    export_encoder,
    load_encoder,
    read_meta,
)
from cxrbench.utils.io import sha256_file

META_KEYS = {
    "format_version",
    "backbone",
    "backbone_config",
    "feature_dims",
    "strides",
    "token_grid",
    "normalization",
    "input_size",
    "method",
    "config_hash",
    "sha256",
    "parameters",
    "cxrbench_version",
    "extra",
}


def _trained_tiny(**options: object) -> Backbone:
    """A tiny backbone whose BatchNorm statistics moved away from their initial values."""
    torch.manual_seed(0)
    model = build_backbone("tiny", image_size=64, **options)
    with torch.no_grad():
        model(torch.randn(8, 3, 64, 64) * 2 + 0.5)
    return model.eval()


@pytest.fixture
def exported(tmp_path: Path) -> tuple[Backbone, Path]:
    model = _trained_tiny()
    out = export_encoder(
        model, tmp_path / "enc", method="mgca", config_hash="abc123", extra={"pretrain_seed": 3}
    )
    return model, out


def test_round_trip_is_bit_identical(exported: tuple[Backbone, Path]) -> None:
    model, out = exported
    assert sorted(p.name for p in out.iterdir()) == ["encoder.json", "encoder.safetensors"]
    loaded, meta = load_encoder(out)
    original = model.state_dict()
    assert loaded.state_dict().keys() == original.keys()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, original[key]), key
    on_disk = safetensors.torch.load_file(str(out / "encoder.safetensors"))
    assert on_disk.keys() == original.keys()
    assert all(torch.equal(on_disk[k], v) for k, v in original.items())
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), loaded.eval()(x)
    for key in ("pooled", "c3", "c4", "c5", "tokens"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key
    assert meta["backbone_config"] == loaded.config == model.config


def test_meta_records_what_downstream_needs(exported: tuple[Backbone, Path]) -> None:
    model, out = exported
    meta = json.loads((out / "encoder.json").read_text())
    assert set(meta) == META_KEYS
    assert meta == read_meta(out)
    assert meta["sha256"] == sha256_file(out / "encoder.safetensors") == encoder_sha256(out)
    assert meta["backbone"] == "tiny" and meta["method"] == "mgca"
    assert meta["config_hash"] == "abc123" and meta["extra"] == {"pretrain_seed": 3}
    assert meta["feature_dims"] == {"pooled": 128, "c3": 32, "c4": 64, "c5": 128, "tokens": 64}
    assert meta["strides"] == {"c3": 8, "c4": 16, "c5": 32, "tokens": 16}
    assert meta["normalization"] == NORMALIZATION
    assert meta["input_size"] == 64 and meta["token_grid"] == [4, 4]
    assert meta["parameters"] == sum(p.numel() for p in model.parameters())
    assert meta["cxrbench_version"] == __version__ and meta["format_version"] == 1


def test_channels_last_vit_and_options_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    vit = build_backbone("vit_tiny", image_size=32, depth=2).to(memory_format=torch.channels_last)
    loaded, _ = load_encoder(export_encoder(vit, tmp_path / "vit", method="m", config_hash="h"))
    assert all(torch.equal(v, vit.state_dict()[k]) for k, v in loaded.state_dict().items())
    resnet = _trained_tiny(width=8, tokens_from="c5", upsample_to=96)
    resnet.to(memory_format=torch.channels_last)
    loaded, _ = load_encoder(export_encoder(resnet, tmp_path / "r", method="m", config_hash="h"))
    assert loaded.config == {
        "name": "tiny", "image_size": 64, "width": 8, "tokens_from": "c5", "upsample_to": 96
    }  # fmt: skip
    loaded.eval().to(memory_format=torch.channels_last)  # same kernels → bit-identical outputs
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(loaded(x).tokens, resnet(x).tokens)


def test_tampered_weights_are_detected(exported: tuple[Backbone, Path]) -> None:
    _, out = exported
    weights = out / "encoder.safetensors"
    recorded = read_meta(out)["sha256"]
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the tensor data, not the header
    weights.write_bytes(bytes(data))
    with pytest.raises(CxrbenchError) as info:
        load_encoder(out)
    message = str(info.value)
    assert str(weights) in message and recorded in message
    assert sha256_file(weights) in message
    loaded, _ = load_encoder(out, verify=False)  # the caller can opt out; weights differ then
    assert any(
        not torch.equal(v, exported[0].state_dict()[k]) for k, v in loaded.state_dict().items()
    )


def test_missing_or_broken_files_give_clear_errors(exported: tuple[Backbone, Path]) -> None:
    _, out = exported
    meta_path = out / "encoder.json"
    text = meta_path.read_text()
    meta_path.write_text(text.replace('"format_version": 1', '"format_version": 99'))
    with pytest.raises(CxrbenchError, match="format_version 99 is not supported"):
        load_encoder(out)
    meta_path.write_text("{not json")
    with pytest.raises(CxrbenchError, match=r"encoder\.json is not valid JSON"):
        read_meta(out)
    meta_path.unlink()
    with pytest.raises(CxrbenchError, match=r"no encoder artifact in .*encoder\.json is missing"):
        load_encoder(out)
    with pytest.raises(CxrbenchError, match=r"encoder\.json is missing"):
        encoder_sha256(out)
    meta_path.write_text(text)
    (out / "encoder.safetensors").unlink()
    with pytest.raises(CxrbenchError, match=r"encoder\.safetensors is missing"):
        load_encoder(out)


def test_meta_that_does_not_fit_the_weights_is_refused(exported: tuple[Backbone, Path]) -> None:
    _, out = exported
    meta = read_meta(out)
    meta["backbone_config"]["width"] = 8
    (out / "encoder.json").write_text(json.dumps(meta))
    with pytest.raises(CxrbenchError, match="feature_dims"):
        load_encoder(out)
    meta["feature_dims"] = {"pooled": 64, "c3": 16, "c4": 32, "c5": 64, "tokens": 32}
    (out / "encoder.json").write_text(json.dumps(meta))
    with pytest.raises(CxrbenchError, match=r"shape mismatches \(\d+\): conv1.weight"):
        load_encoder(out)
    del meta["sha256"]
    (out / "encoder.json").write_text(json.dumps(meta))
    with pytest.raises(CxrbenchError, match="lacks the keys sha256"):
        load_encoder(out)


def test_extra_must_be_json(tmp_path: Path) -> None:
    model = build_backbone("tiny", image_size=64, width=4)
    with pytest.raises(CxrbenchError, match="not JSON"):
        export_encoder(model, tmp_path, method="m", config_hash="h", extra={"t": object()})
    assert not (tmp_path / "encoder.json").exists()  # no half-described artifact
