"""Backbones: features are the trunk's intermediates, weights load strictly, nothing downloads."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from cxrbench.errors import ConfigError, CxrbenchError, RegistryError
from cxrbench.models import BACKBONES, build_backbone, freeze, unfreeze
from cxrbench.models.backbones import ResNetBackbone, ViTBackbone


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty TORCH_HOME and a hub download that fails: no test may reach the network."""

    def refuse(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError(f"network disabled in tests ({url})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    torch_home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    return torch_home


def _tv_resnet18_state(marker: float = 0.123) -> dict[str, torch.Tensor]:
    """A freshly initialised torchvision ResNet-18 state dict (fc included) with a known value."""
    state = torchvision.models.resnet18().state_dict()
    state["conv1.weight"][0, 0, 0, 0] = marker
    return state


def test_registry_holds_the_presets_and_rejects_unknown_names_and_options() -> None:
    assert {"resnet50", "resnet18", "tiny", "vit_b16", "vit_tiny"} <= set(BACKBONES.names())
    with pytest.raises(RegistryError, match="Did you mean 'resnet50'"):
        build_backbone("resnet5")
    with pytest.raises(ConfigError, match=r"key 'depth'.*unknown option for backbone 'tiny'"):
        build_backbone("tiny", image_size=64, depth=3)
    with pytest.raises(ConfigError, match="tokens_from"):
        build_backbone("tiny", image_size=64, tokens_from="c3")
    with pytest.raises(ConfigError, match="multiple of 16"):
        build_backbone("vit_tiny", image_size=72)
    with pytest.raises(CxrbenchError, match="no ImageNet weights"):
        build_backbone("tiny", image_size=64, weights="imagenet")
    # every preset takes the shared method-config options; ViTs only with their neutral values
    vit = build_backbone("vit_tiny", image_size=32, tokens_from="c4", upsample_to=None)
    assert vit.config == {
        "name": "vit_tiny", "image_size": 32, "depth": 4, "tokens_from": "c4", "upsample_to": None
    }  # fmt: skip
    with pytest.raises(ConfigError, match="tokens_from/upsample_to"):
        build_backbone("vit_tiny", image_size=32, upsample_to=48)


@pytest.mark.parametrize("name", ["tiny", "resnet18"])
def test_resnet_features_are_views_of_one_pass(name: str) -> None:
    torch.manual_seed(0)
    model = build_backbone(name, image_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    feats = model(x)
    # pooled is the average-pooled C5
    torch.testing.assert_close(feats.pooled, feats.c5.mean(dim=(2, 3)))
    # the maps sit at strides 8/16/32 of the 64 px input, with the advertised channel counts
    for key, stride in (("c3", 8), ("c4", 16), ("c5", 32)):
        fmap = getattr(feats, key)
        assert model.strides[key] == stride
        assert fmap.shape[1:] == (model.feature_dims[key], 64 // stride, 64 // stride)
    # tokens are C4 flattened row-major, on the advertised grid
    assert torch.equal(feats.tokens, feats.c4.flatten(2).transpose(1, 2))
    assert feats.token_grid == model.token_grid == (4, 4)
    # and C4 is really layer3 applied to C3
    torch.testing.assert_close(model.layer3(feats.c3), feats.c4)


def test_gradient_flows_from_pooled_to_conv1() -> None:
    torch.manual_seed(0)
    model = build_backbone("tiny", image_size=64)
    model(torch.randn(2, 3, 64, 64)).pooled.square().sum().backward()
    grad = model.conv1.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert len(model.trainable_parameters()) == len(list(model.parameters()))


def test_resnet18_local_weights_file_reproduces_torchvision(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = _tv_resnet18_state()
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    model = build_backbone("resnet18", image_size=64, weights=path).eval()
    assert model.conv1.weight[0, 0, 0, 0].item() == pytest.approx(0.123)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    reference = torchvision.models.resnet18()
    reference.load_state_dict(state)
    reference.fc = nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model(x).pooled, reference.eval()(x))
    assert "weights" not in model.config  # the artifact carries weights, not a path


def test_safetensors_weights_file_loads(tmp_path: Path) -> None:
    source = build_backbone("tiny", image_size=64, width=8)
    path = tmp_path / "tiny.safetensors"
    safetensors.torch.save_file(source.state_dict(), str(path))
    model = build_backbone("tiny", image_size=64, width=8, weights=str(path))
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())


def test_weights_file_with_missing_unexpected_or_misshapen_keys_is_refused(tmp_path: Path) -> None:
    state = _tv_resnet18_state()
    del state["layer1.0.bn1.running_mean"]
    state["projector.weight"] = torch.zeros(3)
    state["layer4.1.conv2.weight"] = torch.zeros(512, 512, 1, 1)
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(CxrbenchError) as info:
        build_backbone("resnet18", image_size=64, weights=path)
    message = str(info.value)
    assert str(path) in message
    assert "missing keys (1): layer1.0.bn1.running_mean" in message
    assert "unexpected keys (1): projector.weight" in message
    assert "layer4.1.conv2.weight: expected (512, 512, 3, 3), got (512, 512, 1, 1)" in message


def test_pickled_objects_and_missing_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pth"
    torch.save({"model": nn.Linear(2, 2)}, path)  # a whole module needs pickle, not weights_only
    with pytest.raises(CxrbenchError, match="not a weights-only checkpoint"):
        build_backbone("resnet18", image_size=64, weights=path)
    with pytest.raises(CxrbenchError, match="does not exist"):
        build_backbone("tiny", image_size=64, weights=tmp_path / "absent.pth")


def test_imagenet_weights_unavailable_names_the_file_and_where_to_put_it(
    _no_downloads: Path,
) -> None:
    with pytest.raises(CxrbenchError) as info:
        build_backbone("resnet18", image_size=64, weights="imagenet")
    message = str(info.value)
    assert "resnet18-f37072fd.pth" in message
    assert str(_no_downloads / "hub" / "checkpoints") in message
    assert "hub/checkpoints" in message and "weights='/path/to/resnet18-f37072fd.pth'" in message
    assert "network disabled in tests" in message


def test_imagenet_weights_are_read_from_the_torch_home_cache(_no_downloads: Path) -> None:
    state = _tv_resnet18_state(marker=0.5)
    cache = _no_downloads / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(state, cache / "resnet18-f37072fd.pth")
    model = build_backbone("resnet18", image_size=64, weights="imagenet")
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    # a cached file that cannot be read is reported as such
    (cache / "resnet18-f37072fd.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CxrbenchError, match="exists but could not be read"):
        build_backbone("resnet18", image_size=64, weights="imagenet")


def test_tokens_from_c5_and_mgca_upsampling_to_299() -> None:
    torch.manual_seed(0)
    model = build_backbone("tiny", image_size=224, upsample_to=299).eval()
    x = torch.randn(1, 3, 224, 224)
    feats = model(x)
    assert feats.token_grid == model.token_grid == (19, 19)  # MGCA/GLoRIA's 19×19 layer3 grid
    big = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=True)
    plain = build_backbone("tiny", image_size=299).eval()
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(plain(big).tokens, feats.tokens)
    c5_tokens = build_backbone("tiny", image_size=64, tokens_from="c5")
    out = c5_tokens(torch.randn(1, 3, 64, 64))
    assert torch.equal(out.tokens, out.c5.flatten(2).transpose(1, 2))
    assert c5_tokens.strides["tokens"] == 32 and c5_tokens.feature_dims["tokens"] == 128


def test_vit_tiny_pooled_is_the_cls_output_of_torchvision_vit() -> None:
    torch.manual_seed(0)
    model = build_backbone("vit_tiny", image_size=64, depth=2).eval()
    assert isinstance(model, ViTBackbone)
    x = torch.randn(2, 3, 64, 64)
    feats = model(x)
    assert feats.tokens.shape == (2, (64 // 16) ** 2, 192)
    reference = torchvision.models.VisionTransformer(64, 16, 2, 3, 192, 768)
    missing, unexpected = reference.load_state_dict(model.state_dict(), strict=False)
    assert unexpected == [] and all(k.startswith("heads.") for k in missing)
    reference.heads = nn.Identity()
    torch.testing.assert_close(feats.pooled, reference.eval()(x))
    # the pyramid: c4 is the token map, c5 its 2×2 max-pool, c3 at stride 8
    assert torch.equal(feats.c4.flatten(2).transpose(1, 2), feats.tokens)
    assert torch.equal(feats.c5, F.max_pool2d(feats.c4, 2))
    assert feats.c3.shape[-2:] == (8, 8) and feats.token_grid == (4, 4)
    with pytest.raises(ValueError, match="64px"):
        model(torch.randn(1, 3, 96, 96))


def test_vit_b16_has_torchvision_vit_b_16_parameters() -> None:
    model = build_backbone("vit_b16", image_size=32)
    reference = torchvision.models.vit_b_16(image_size=32)
    ref_shapes = {
        k: v.shape for k, v in reference.state_dict().items() if not k.startswith("heads")
    }
    assert {k: v.shape for k, v in model.state_dict().items()} == ref_shapes
    assert model.feature_dims["pooled"] == 768 and model.token_grid == (2, 2)


@pytest.mark.parametrize("name", ["tiny", "vit_tiny"])
def test_channels_last_and_bf16_autocast(name: str) -> None:
    torch.manual_seed(0)
    model = build_backbone(name, image_size=64).eval().to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 64, 64).to(memory_format=torch.channels_last)
    with torch.no_grad():
        full = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(x)
    for key in ("pooled", "c3", "c4", "c5", "tokens"):
        ref, got = getattr(full, key), getattr(half, key).float()
        assert torch.isfinite(got).all()
        assert (got - ref).norm() / ref.norm() < 0.05, key
    if name == "tiny":
        assert half.c4.dtype == torch.bfloat16  # convolutions really ran in bf16


def test_freeze_stops_gradients_and_keeps_batchnorm_statistics() -> None:
    torch.manual_seed(0)
    model = build_backbone("tiny", image_size=64)
    assert isinstance(model, ResNetBackbone)
    parent = nn.ModuleDict({"encoder": model, "head": nn.Linear(128, 1)})
    freeze(model)
    assert model.trainable_parameters() == []
    parent.train()  # what Lightning does at the start of fit
    assert not model.training and parent["head"].training
    before = model.bn1.running_mean.clone()
    model(torch.randn(4, 3, 64, 64) * 3 + 1)
    assert torch.equal(model.bn1.running_mean, before)
    unfreeze(model)
    assert model.training and len(model.trainable_parameters()) == len(list(model.parameters()))
    model(torch.randn(4, 3, 64, 64) * 3 + 1)
    assert not torch.equal(model.bn1.running_mean, before)
