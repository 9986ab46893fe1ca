"""Shared fixtures: one thread per xdist worker; synth-tiny is made once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def _one_thread_per_worker() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def pairs_corpus(tmp_path_factory: pytest.TempPathFactory):
    """A 96-pair MIMIC-layout corpus (64 px) whose reports name the pattern in each image."""
    from tests.helpers import write_pairs_corpus

    root = tmp_path_factory.mktemp("pairs")
    write_pairs_corpus(root)
    return root


@pytest.fixture(scope="session")
def text_model(tmp_path_factory: pytest.TempPathFactory):
    """A tiny corpus-trained BERT folder (Hugging Face layout)."""
    from tests.helpers import tiny_text_model

    return tiny_text_model(tmp_path_factory.mktemp("text") / "bert")


@pytest.fixture(scope="session")
def synth_tiny(tmp_path_factory: pytest.TempPathFactory):
    """The SynthCXR tiny preset at half size (made once per test worker)."""
    from cxrbench.synth import generate

    root = tmp_path_factory.mktemp("synth-tiny")
    generate(root, "tiny", seed=0, workers=1, progress=False, scale=0.5)
    return root
