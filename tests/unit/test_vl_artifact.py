"""The vision–language artifact: a method's text side and heads beside its encoder artifact,
rebuilt to the same scores, bound to its image encoder, verified file by file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from cxrbench.data.pretrain import PairDataset, collate, load_pairs
from cxrbench.models.artifact import encoder_bytes, export_encoder
from cxrbench.models.vl_artifact import VLArtifactError, export_vl, load_vl, read_vl_meta
from cxrbench.runner.pretrain import build_method
from cxrbench.runner.resolve import load_config
from cxrbench.utils.io import sha256_file


def _method(name: str, text_model: Path, seed: int = 0):
    vit = ["backbone.name=vit_tiny", "backbone.width=null"] if name == "mpma" else []
    job = load_config(name, "tiny", [f"text.model={text_model}", "text.max_length=32", *vit])
    torch.manual_seed(seed)
    return job, build_method(job, text_model)


def _export(tmp_path: Path, name: str, text_model: Path) -> tuple:
    from cxrbench.config import to_plain

    job, method = _method(name, text_model)
    method.eval()
    encoder = export_encoder(method.image_encoder(), tmp_path / "encoder", method=name,
                             config_hash=job.config_hash)  # fmt: skip
    sha = sha256_file(encoder / "encoder.safetensors")
    vl = export_vl(method, tmp_path / "vl", encoder_sha256=sha, params=to_plain(job.params),
                   pretrain_config=to_plain(job.cfg), config_hash=job.config_hash)  # fmt: skip
    return method, encoder, vl


def _batch(pairs_corpus: Path) -> dict:
    pairs = load_pairs(pairs_corpus / "mimic-cxr-jpg", "train")[:6]
    data = PairDataset(pairs, 64, 64, train=False)
    return collate([data[i] for i in range(len(data))])


@pytest.mark.parametrize(
    "name", ["convirt", "random_init", "gloria", "mgca", "mflag", "place", "mpma"]
)
def test_exported_method_scores_as_the_original(tmp_path, pairs_corpus, text_model, name) -> None:
    method, encoder, vl = _export(tmp_path, name, text_model)
    batch = _batch(pairs_corpus)
    with torch.no_grad():
        want = method.similarity(method.encode_images(batch["image"]),
                                 method.encode_texts(list(batch["text"])))  # fmt: skip
    loaded, meta = load_vl(vl, encoder)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        got = loaded.similarity(loaded.encode_images(batch["image"]),
                                loaded.encode_texts(list(batch["text"])))  # fmt: skip
    assert got.shape == (6, 6)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert meta["method"] == name and meta["encoder_sha256"] == sha256_file(
        encoder / "encoder.safetensors"
    )
    # the image encoder is stored once, in its own artifact; the text tower is a local HF folder
    assert not any(k.startswith(("backbone.", "text.")) for k in _keys(vl / "heads.safetensors"))
    assert (vl / "text" / "model.safetensors").is_file() and "tokenizer_config.json" in meta[
        "text_files"
    ]


def _keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        return list(fh.keys())


def test_heads_refuse_another_encoder_and_tampered_files(tmp_path, text_model) -> None:
    _, encoder, vl = _export(tmp_path, "convirt", text_model)
    _, other = _method("convirt", text_model, seed=1)
    export_encoder(other.image_encoder(), tmp_path / "other", method="convirt", config_hash="x")
    with pytest.raises(VLArtifactError, match="belong to the encoder"):
        load_vl(vl, tmp_path / "other")
    heads = vl / "heads.safetensors"
    data = bytearray(heads.read_bytes())
    data[-1] ^= 1
    heads.write_bytes(bytes(data))
    with pytest.raises(VLArtifactError, match=r"heads\.safetensors does not match its record"):
        load_vl(vl, encoder)
    (vl / "vl.json").unlink()
    with pytest.raises(VLArtifactError, match="no vision–language artifact"):
        read_vl_meta(vl)


def test_random_init_heads_leave_its_image_encoder_unchanged(text_model) -> None:
    """The chance control's text side is added after the backbone is drawn: the same seed gives
    the same image encoder with or without it (the run's artifact stays the one evaluated)."""
    job = load_config("random_init", "tiny")
    torch.manual_seed(3)
    plain = build_method(job, None)
    _, with_text = _method("random_init", text_model, seed=3)
    same = hashlib.sha256(encoder_bytes(plain.image_encoder())).hexdigest()
    assert same == hashlib.sha256(encoder_bytes(with_text.image_encoder())).hexdigest()


def test_export_refuses_a_method_without_a_text_side(tmp_path) -> None:
    job = load_config("random_init", "tiny")
    method = build_method(job, None)
    with pytest.raises(VLArtifactError, match="without its text tower"):
        export_vl(method, tmp_path / "vl", encoder_sha256="0", params={}, pretrain_config={},
                  config_hash="0")  # fmt: skip
    assert not (tmp_path / "vl").exists()
    supervised = build_method(load_config("supervised", "tiny"), None)
    assert not type(supervised).vl_space
    with pytest.raises(NotImplementedError, match="no image–text space"):
        supervised.encode_images(torch.zeros(1, 3, 64, 64))
