"""``cxrbench import``: released checkpoint layouts → encoder artifacts, strictly.

The checkpoints are built here from the official module structures (torchvision's ResNet-50 with
``fc`` replaced by an identity, as MGCA's and GLoRIA's ``cnn_backbones.resnet_50`` do; a timm-style
ViT written from MGCA's ``vits.py``), with random weights, and the imported encoder is checked
against a reference forward of that structure.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from cxrbench.cli import main
from cxrbench.importers import FORMATS, CheckpointImportError, import_checkpoint
from cxrbench.importers._keymaps import timm_vit
from cxrbench.importers.base import Layout, map_state
from cxrbench.models.artifact import load_encoder, read_meta
from cxrbench.models.backbones import build_backbone

MGCA = "img_encoder_q.model."


def _resnet50() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    model.fc = nn.Identity()  # as MGCA's / GLoRIA's cnn_backbones.resnet_50
    for m in model.modules():  # non-trivial BN statistics, so a mix-up of buffers shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _mgca_state(model: nn.Module) -> dict[str, torch.Tensor]:
    state = {MGCA + k: v for k, v in model.state_dict().items()}
    state.update({  # the other parts of MGCA's LightningModule (shapes as in the paper's config)
        "img_encoder_q.global_embed.head.0.weight": torch.randn(2048, 2048),
        "img_encoder_q.local_embed.head.0.weight": torch.randn(2048, 1024, 1),
        "text_encoder_q.model.embeddings.word_embeddings.weight": torch.randn(30, 8),
        "text_encoder_q.global_embed.head.0.weight": torch.randn(4, 8),
        "patch_local_atten_layer.in_proj_weight": torch.randn(384, 128),
        "word_local_atten_layer.in_proj_weight": torch.randn(384, 128),
        "prototype_layer.weight": torch.randn(500, 128),
    })  # fmt: skip
    return state


@pytest.fixture(scope="module")
def mgca_ckpt(tmp_path_factory):
    model = _resnet50()
    path = tmp_path_factory.mktemp("mgca") / "mgca_resnet_50.ckpt"
    torch.save({"epoch": 49, "global_step": 1, "state_dict": _mgca_state(model)}, path)
    return model, path


def _mgca_reference(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MGCA's ImageEncoder.resnet_forward: upsample to 299, trunk, c4 as local features."""
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=True)
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    local = model.layer3(model.layer2(model.layer1(x)))
    pooled = torch.flatten(F.adaptive_avg_pool2d(model.layer4(local), 1), 1)
    return pooled, local


def test_mgca_resnet50_imports_and_gives_the_official_features(mgca_ckpt, tmp_path) -> None:
    model, path = mgca_ckpt
    report = import_checkpoint("mgca", path, tmp_path / "enc")
    n = len(model.state_dict())
    assert (report.backbone, report.keys_expected, report.keys_loaded) == ("resnet50", n, n)
    assert report.container == "state_dict" and report.keys_in_checkpoint == n + 7
    assert report.ignored == {"image projection heads": 2, "text tower": 2,
                              "cross-attention layers": 2, "prototypes": 1}  # fmt: skip
    backbone, meta = load_encoder(tmp_path / "enc")
    assert meta["method"] == "import:mgca" and meta["backbone_config"]["upsample_to"] == 299
    assert meta["extra"]["imported"]["source_sha256"] == report.source_sha256
    assert meta["config_hash"] == report.source_sha256[:16]
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        feats = backbone.eval()(x)
        pooled, local = _mgca_reference(model, x)
    torch.testing.assert_close(feats.pooled, pooled, rtol=0, atol=1e-5)
    torch.testing.assert_close(feats.c4, local, rtol=0, atol=1e-5)
    assert tuple(feats.c4.shape[-2:]) == (19, 19)  # MGCA's 19 × 19 patch grid


def test_one_renamed_or_reshaped_key_is_refused_by_name(mgca_ckpt, tmp_path) -> None:
    model, _ = mgca_ckpt
    state = _mgca_state(model)
    state[MGCA + "layer2.0.conv1.weightt"] = state.pop(MGCA + "layer2.0.conv1.weight")
    torch.save({"state_dict": state}, tmp_path / "renamed.ckpt")
    with pytest.raises(CheckpointImportError) as err:
        import_checkpoint("mgca", tmp_path / "renamed.ckpt", tmp_path / "a")
    text = str(err.value)
    assert "missing encoder keys (1): layer2.0.conv1.weight" in text
    assert f"{MGCA}layer2.0.conv1.weightt (→ layer2.0.conv1.weightt" in text
    assert not (tmp_path / "a" / "encoder.json").exists()

    state = _mgca_state(model)
    state[MGCA + "layer3.1.bn2.weight"] = torch.ones(7)
    torch.save(state, tmp_path / "reshaped.pt")
    with pytest.raises(CheckpointImportError, match=r"layer3\.1\.bn2\.weight: checkpoint \(7,\)"):
        import_checkpoint("mgca", tmp_path / "reshaped.pt", tmp_path / "b")


def test_unknown_keys_need_a_named_ignore(mgca_ckpt, tmp_path) -> None:
    model, _ = mgca_ckpt
    state = _mgca_state(model) | {"queue.img": torch.zeros(3), "queue.txt": torch.zeros(3)}
    torch.save({"state_dict": state}, tmp_path / "extra.ckpt")
    with pytest.raises(CheckpointImportError, match=r"neither mapped nor ignored.*queue\.img"):
        import_checkpoint("mgca", tmp_path / "extra.ckpt", tmp_path / "a")
    report = import_checkpoint("mgca", tmp_path / "extra.ckpt", tmp_path / "b", ignore=("queue.",))
    assert report.ignored["--ignore queue."] == 2


def test_a_pickle_that_needs_classes_is_refused_with_the_conversion(mgca_ckpt, tmp_path) -> None:
    model, _ = mgca_ckpt
    ckpt = {"state_dict": _mgca_state(model), "hyper_parameters": argparse.Namespace(lr=1e-4)}
    torch.save(ckpt, tmp_path / "lightning.ckpt")
    with pytest.raises(CheckpointImportError) as err:
        import_checkpoint("mgca", tmp_path / "lightning.ckpt", tmp_path / "a")
    assert "never unpickles code" in str(err.value)
    assert "weights_only=False" in str(err.value) and "state_dict.pt" in str(err.value)


def test_gloria_and_torchvision_layouts(tmp_path) -> None:
    model = _resnet50()
    state = {f"gloria.img_encoder.model.{k}": v for k, v in model.state_dict().items()}
    state["gloria.img_encoder.global_embedder.weight"] = torch.randn(768, 2048)
    state["gloria.img_encoder.local_embedder.weight"] = torch.randn(768, 1024, 1, 1)
    state["gloria.text_encoder.model.embeddings.word_embeddings.weight"] = torch.randn(30, 8)
    torch.save({"state_dict": state}, tmp_path / "gloria.ckpt")
    report = import_checkpoint("gloria", tmp_path / "gloria.ckpt", tmp_path / "g")
    assert report.keys_loaded == len(model.state_dict())
    assert report.ignored == {"image projection heads": 2, "text tower": 1}
    with pytest.raises(CheckpointImportError, match="no mgca layout"):
        import_checkpoint("mgca", tmp_path / "gloria.ckpt", tmp_path / "x")

    torch.manual_seed(1)
    r18 = torchvision.models.resnet18(weights=None).eval()
    torch.save(r18.state_dict(), tmp_path / "r18.pth")
    report = import_checkpoint("torchvision", tmp_path / "r18.pth", tmp_path / "t")
    assert (report.backbone, report.ignored) == ("resnet18", {"classifier head": 2})
    backbone, _ = load_encoder(tmp_path / "t")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        trunk = nn.Sequential(*list(r18.children())[:-1])
        torch.testing.assert_close(backbone.eval()(x).pooled, trunk(x).flatten(1))


class _TimmBlock(nn.Module):
    """A block of MGCA's vits.py: pre-norm attention (one qkv Linear) and MLP (fc1, GELU, fc2)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv, self.attn.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.attn.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(dim=-1)
        x = x + self.attn.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class _TimmViT(nn.Module):
    def __init__(self, size: int, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, 16, 16)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, (size // 16) ** 2 + 1, dim))
        self.blocks = nn.ModuleList(_TimmBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def test_timm_vit_keys_map_onto_torchvision_vit_with_the_same_outputs() -> None:
    torch.manual_seed(0)
    ref = _TimmViT(32, 192, 2, 3).eval()
    for p in ref.parameters():  # LayerNorms away from the identity, so a swap would show
        p.data.add_(0.05 * torch.randn_like(p))
    state = {MGCA + k: v for k, v in ref.state_dict().items()}
    layout = Layout("vit_tiny", timm_vit(MGCA), lambda s: True)
    backbone = build_backbone("vit_tiny", image_size=32, depth=2)
    weights, ignored = map_state(state, layout, backbone, ())
    assert not ignored and len(weights) == len(state) == len(backbone.state_dict())
    backbone.load_state_dict(weights, strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out, feats = ref(x), backbone.eval()(x)
    torch.testing.assert_close(feats.pooled, out[:, 0], rtol=0, atol=1e-5)
    torch.testing.assert_close(feats.tokens, out[:, 1:], rtol=0, atol=1e-5)


def test_mgca_vit_b16_layout_covers_every_key_with_its_shape() -> None:
    """The full-size map, on meta tensors (no memory): MGCA's ViT-B/16 keys → vit_b16's."""
    with torch.device("meta"):
        ref = _TimmViT(224, 768, 12, 12)
        backbone = build_backbone("vit_b16", image_size=224)
    layout = next(lay for lay in FORMATS.get("mgca").layouts if lay.backbone == "vit_b16")
    state = {MGCA + k: v for k, v in ref.state_dict().items()}
    assert layout.detect(state)
    weights, _ = map_state(state, layout, backbone, ())
    assert set(weights) == set(backbone.state_dict())
    assert math.prod(weights["encoder.pos_embedding"].shape) == 197 * 768


def test_cli_import_prints_the_report(mgca_ckpt, tmp_path, capsys) -> None:
    _, path = mgca_ckpt
    assert main(["import", "--from", "mgca", str(path), "--out", str(tmp_path / "enc")]) == 0
    out = capsys.readouterr().out
    assert (
        "format mgca, backbone resnet50: 318 / 318 encoder keys loaded (strict), from 325 keys"
        in out
    )
    assert "ignored by rule 'text tower': 2 keys" in out
    assert read_meta(tmp_path / "enc")["backbone"] == "resnet50"
    assert main(["import", "--from", "mgcaa", str(path), "--out", str(tmp_path / "x")]) != 0
    assert "Did you mean 'mgca'" in capsys.readouterr().err


def test_an_encoders_own_normalisation_is_applied_inside_the_backbone(tmp_path) -> None:
    """Tasks feed (u − 0.5) / 0.5; an artifact trained on ImageNet statistics sees its own."""
    from cxrbench.models.artifact import feature_identity

    torch.manual_seed(2)
    r18 = torchvision.models.resnet18(weights=None).eval()
    torch.save(r18.state_dict(), tmp_path / "r18.pth")
    report = import_checkpoint(
        "torchvision", tmp_path / "r18.pth", tmp_path / "enc", normalization="imagenet"
    )
    assert report.normalization["std"] == [0.229, 0.224, 0.225]
    backbone, meta = load_encoder(tmp_path / "enc")
    assert not any("_input" in k for k in backbone.state_dict())  # weights as imported
    assert feature_identity(meta) != meta["sha256"]  # caches tell the two inputs apart
    u = torch.rand(2, 3, 64, 64)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        ours = backbone.eval()((u - 0.5) / 0.5).pooled
        reference = nn.Sequential(*list(r18.children())[:-1])((u - mean) / std).flatten(1)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)
    import_checkpoint("torchvision", tmp_path / "r18.pth", tmp_path / "half")
    _, half = load_encoder(tmp_path / "half")
    assert feature_identity(half) == half["sha256"]
    with pytest.raises(CheckpointImportError, match="unknown normalisation 'rgb'"):
        import_checkpoint("torchvision", tmp_path / "r18.pth", tmp_path / "x", normalization="rgb")


def test_mrm_and_timm_layouts_cover_the_vit_and_name_what_they_leave_out() -> None:
    """MRM's checkpoint (model_mrm.py): the timm encoder at the top level beside an MAE image
    decoder and a BERT report decoder; on meta tensors, at full size."""
    with torch.device("meta"):
        encoder = _TimmViT(224, 768, 12, 12)
        backbone = build_backbone("vit_b16", image_size=224)
    state = dict(encoder.state_dict())
    extra = {"decoder_embed.weight": (768, 768), "decoder_blocks.0.attn.qkv.weight": (2304, 768),
             "decoder_norm.weight": (768,), "decoder_pred.weight": (3072, 768),
             "mask_token": (1, 1, 768), "decoder_pos_embed": (1, 197, 768),
             "bert_encoder.model.embeddings.word_embeddings.weight": (30, 384),
             "bert_mlp.weight": (384, 768)}  # fmt: skip
    state |= {k: torch.empty(shape, device="meta") for k, shape in extra.items()}
    mrm = FORMATS.get("mrm").layout(state, None, Path("mrm.pth"))
    weights, ignored = map_state(state, mrm, backbone, ())
    assert set(weights) == set(backbone.state_dict())
    assert ignored == {"image decoder (MAE)": 6, "report decoder (BERT)": 2}
    assert mrm.normalization == {"mean": [0.4978] * 3, "std": [0.2449] * 3}
    timm = FORMATS.get("timm").layout(state, None, Path("mrm.pth"))
    with pytest.raises(CheckpointImportError, match=r"neither mapped nor ignored.*bert_encoder"):
        map_state(state, timm, backbone, ())
    assert timm.normalization["std"] == [0.229, 0.224, 0.225]


def test_prefix_selects_the_encoder_of_a_larger_checkpoint(tmp_path) -> None:
    """BenchX's re-trained checkpoints keep the image encoder under a prefix (``cnn.model.``)."""
    torch.manual_seed(3)
    r18 = torchvision.models.resnet18(weights=None)
    state = {f"cnn.model.{k}": v for k, v in r18.state_dict().items()}
    state |= {"text.embeddings.weight": torch.zeros(3, 2), "proj.weight": torch.zeros(2, 2)}
    torch.save({"state_dict": state}, tmp_path / "benchx.ckpt")
    report = import_checkpoint(
        "torchvision", tmp_path / "benchx.ckpt", tmp_path / "enc", prefix="cnn.model."
    )
    assert report.keys_loaded == report.keys_expected == len(r18.state_dict()) - 2
    assert report.ignored == {"outside --prefix cnn.model.": 2, "classifier head": 2}
    assert report.keys_in_checkpoint == len(state)
    with pytest.raises(CheckpointImportError, match=r"no key starts with 'model\.'"):
        import_checkpoint("torchvision", tmp_path / "benchx.ckpt", tmp_path / "x", prefix="model.")


class _BioVilImageModel(nn.Module):
    """hi-ml's ``ImageModel`` structure: ``encoder.encoder`` (ResNetHIML = torchvision's
    ResNet-50, ``fc`` kept) and ``projector.model`` (1×1 conv, BN, ReLU, 1×1 conv to 128)."""

    def __init__(self, temporal: bool = False) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.encoder = nn.Module()
        self.encoder.encoder = torchvision.models.resnet50(weights=None)
        if temporal:  # BioViL-T's MultiImageEncoder: a pooler over current and prior image
            self.encoder.backbone_to_vit = nn.Conv2d(2048, 256, 1, bias=False)
            self.encoder.vit_pooler = nn.Module()
            self.encoder.vit_pooler.norm_post = nn.LayerNorm(256)
            self.encoder.missing_previous_emb = nn.Parameter(torch.zeros(1, 256, 1, 1))
        self.projector = nn.Module()
        self.projector.model = nn.Sequential(
            nn.Conv2d(2048, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 128, 1),
        )  # fmt: skip
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)


@pytest.mark.parametrize("temporal", [False, True], ids=["biovil", "biovil_t"])
def test_biovil_imports_its_trunk_and_feeds_it_unnormalised_pixels(tmp_path, temporal) -> None:
    model = _BioVilImageModel(temporal).eval()
    torch.save(model.state_dict(), tmp_path / "biovil_image_resnet50_proj_size_128.pt")
    report = import_checkpoint("biovil", tmp_path / "biovil_image_resnet50_proj_size_128.pt",
                               tmp_path / "enc")  # fmt: skip
    trunk = model.encoder.encoder
    n = len(trunk.state_dict()) - 2  # fc.weight, fc.bias
    assert (report.backbone, report.keys_loaded, report.keys_expected) == ("resnet50", n, n)
    assert report.ignored["ImageNet classifier (unused)"] == 2
    assert report.ignored["image projector"] == len(model.projector.state_dict())
    assert ("temporal pooler (BioViL-T)" in report.ignored) == temporal
    assert report.normalization == {"mean": [0.0] * 3, "std": [1.0] * 3}
    backbone, meta = load_encoder(tmp_path / "enc")
    assert meta["method"] == "import:biovil"
    # the pipeline's input is (u − 0.5) / 0.5; BioViL saw u itself (ToTensor, no Normalize)
    u = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        feats = backbone.eval()((u - 0.5) / 0.5)
        x = trunk.maxpool(trunk.relu(trunk.bn1(trunk.conv1(u))))
        c5 = trunk.layer4(trunk.layer3(trunk.layer2(trunk.layer1(x))))
    torch.testing.assert_close(feats.c5, c5, rtol=0, atol=1e-4)
    torch.testing.assert_close(feats.pooled, c5.mean((2, 3)), rtol=0, atol=1e-4)


class _ClipBlock(nn.Module):
    """CLIP's ``ResidualAttentionBlock`` (model.py): pre-norm attention and QuickGELU MLP."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads)
        self.ln_1 = nn.LayerNorm(d)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(d, 4 * d))
        self.mlp.add_module("gelu", nn.Identity())  # QuickGELU, applied in forward
        self.mlp.add_module("c_proj", nn.Linear(4 * d, d))
        self.ln_2 = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (L, N, D), sequence first as CLIP
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        h = self.mlp.c_fc(self.ln_2(x))
        return x + self.mlp.c_proj(h * torch.sigmoid(1.702 * h))


class _ClipVisual(nn.Module):
    """CLIP's ``VisualTransformer`` at ViT-B/32 size, written from CheXzero's model.py."""

    def __init__(self, width: int = 768, layers: int = 12, heads: int = 12) -> None:
        super().__init__()
        scale = width**-0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=32, stride=32, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(7 * 7 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.Sequential(
            *[_ClipBlock(width, heads) for _ in range(layers)]
        )
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, 512))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The pre-projection image feature (ln_post of [CLS]) and the patch tokens."""
        x = self.conv1(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1])
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding)
        x = self.transformer.resblocks(x.permute(1, 0, 2)).permute(1, 0, 2)
        return self.ln_post(x[:, 0]), x[:, 1:]


def test_chexzero_clip_vit_b32_imports_and_gives_clips_features(tmp_path) -> None:
    torch.manual_seed(0)
    visual = _ClipVisual(layers=2).eval()  # ViT-B/32 width and heads; the depth is read
    for p in visual.parameters():  # LayerNorm affine and biases away from 1 / 0
        if p.dim() == 1:
            p.data.add_(0.1 * torch.randn_like(p))
    state = {f"visual.{k}": v for k, v in visual.state_dict().items()}
    state.update({  # CLIP's text tower and temperature (shapes of ViT-B/32's, shrunk)
        "transformer.resblocks.0.ln_1.weight": torch.ones(8), "token_embedding.weight":
        torch.randn(10, 8), "positional_embedding": torch.randn(77, 8), "ln_final.weight":
        torch.ones(8), "text_projection": torch.randn(8, 512), "logit_scale": torch.tensor(4.6),
    })  # fmt: skip
    torch.save(state, tmp_path / "best_64_0.0001_original_35000_0.864.pt")
    report = import_checkpoint("chexzero", tmp_path / "best_64_0.0001_original_35000_0.864.pt",
                               tmp_path / "enc")  # fmt: skip
    n = len(visual.state_dict()) - 1  # all but proj
    assert (report.backbone, report.keys_loaded, report.keys_expected) == ("clip_vit_b32", n, n)
    assert report.ignored == {"image projection (joint space)": 1, "text tower": 5,
                              "temperature": 1}  # fmt: skip
    backbone, meta = load_encoder(tmp_path / "enc")
    assert meta["backbone_config"]["depth"] == 2
    assert meta["strides"]["c4"] == 32 and tuple(meta["token_grid"]) == (7, 7)
    u = torch.rand(2, 3, 224, 224)  # pixels in [0, 1]; the pipeline feeds (u - 0.5) / 0.5
    with torch.no_grad():
        feats = backbone.eval()((u - 0.5) / 0.5)
        pooled, tokens = visual((u - 101.48761 / 255) / (83.43944 / 255))
    torch.testing.assert_close(feats.pooled, pooled, rtol=0, atol=2e-4)
    torch.testing.assert_close(feats.tokens, backbone.encoder.ln(tokens), rtol=0, atol=2e-4)
    assert tuple(feats.c4.shape[-2:]) == (7, 7)

    state["visual.class_embedding"] = torch.zeros(767)  # one shape off: refused, named
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointImportError, match=r"visual\.class_embedding → class_token"):
        import_checkpoint("chexzero", tmp_path / "bad.pt", tmp_path / "bad")
