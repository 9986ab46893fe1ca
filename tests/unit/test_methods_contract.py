"""Contract 1 over every registered method: config validates, losses are finite, gradients reach
the image encoder, and the exported artifact reloads bit-identically."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torchvision

from cxrbench.data.pretrain import PairDataset, collate, load_pairs
from cxrbench.methods import METHODS
from cxrbench.models.artifact import load_encoder
from cxrbench.runner.pretrain import build_method, run_pretrain
from cxrbench.runner.resolve import load_config

METHOD_NAMES = METHODS.names()


def _overrides(name: str, text_model: Path, tmp_path: Path) -> list[str]:
    sets = [f"text.model={text_model}", "text.max_length=32", "trainer.progress=false"]
    if name == "imagenet":  # no download here: a local torchvision-format weights file
        weights = tmp_path / "resnet18.pth"
        torch.save(torchvision.models.resnet18().state_dict(), weights)
        sets += ["backbone.name=resnet18", f"backbone.weights={weights}"]
    if name == "mpma":  # a ViT method; the tiny preset sets the ResNet `tiny`
        sets.append("backbone.name=vit_tiny")
    return sets


def _batch(method, corpus: Path, n: int = 8) -> dict:
    data = method.train_dataset(corpus, "train")  # methods with their own data (supervised)
    if data is None:
        data = PairDataset(load_pairs(corpus / "mimic-cxr-jpg", "train")[:n], 72, 64, train=True)
    return collate([data[i] for i in range(n)])


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_method_contract(name, synth_tiny, text_model, tmp_path) -> None:
    job = load_config(name, "tiny", _overrides(name, text_model, tmp_path))
    cls = METHODS.get(name)
    doc = sys.modules[cls.__module__].__doc__ or ""
    assert len(doc) > 100, f"{cls.__module__} needs a docstring: paper, what, deviations"
    torch.manual_seed(0)
    method = build_method(job, text_model if cls.needs_text else None)
    method.train()
    if cls.trains:
        terms = method.losses(_batch(method, synth_tiny))
        assert terms and all(v.ndim == 0 and torch.isfinite(v) for v in terms.values())
        sum(terms.values()).backward()
        grads = [p.grad for p in method.image_encoder().parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads)
    artifact = run_pretrain(job, synth_tiny, tmp_path / "run")
    backbone, meta = load_encoder(artifact)
    assert meta["method"] == name and meta["config_hash"] == job.config_hash
    stored = safetensors.torch.load_file(artifact / "encoder.safetensors")
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, stored[key]), key


def test_unknown_method_suggests_the_nearest() -> None:
    from cxrbench.errors import RegistryError

    with pytest.raises(RegistryError, match="Did you mean 'convirt'"):
        load_config("convirt_v2", "tiny")


def test_config_hash_tracks_what_changes_the_encoder() -> None:
    """Schedules change a trained encoder, not an untrained one; paths and workers change none."""

    def h(method: str, *sets: str) -> str:
        return load_config(method, "tiny", list(sets)).config_hash

    assert h("convirt") != h("convirt", "trainer.max_epochs=3")
    assert h("random_init") == h("random_init", "trainer.max_epochs=3", "optim.lr=0.1")
    assert h("random_init") != h("random_init", "data.crop=96")  # the input size matters
    assert h("convirt") == h("convirt", "data.workers=3", "data.mimic=/elsewhere")
