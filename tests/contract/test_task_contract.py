"""Contract 3 for every registered task: on synth-tiny, at every protocol fraction, the task's
items feed its kind's system (``SYSTEMS``): ``prepare`` builds loaders, and a training and a
validation step run on their first batches with a finite loss. A fraction the data cannot serve
(a class without positives) must be refused with a clear error that names it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from cxrbench.errors import CxrbenchError
from cxrbench.tasks import TASKS

FRACTIONS = (0.01, 0.1, 1.0)


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cxrbench.models.artifact import export_encoder
    from cxrbench.models.backbones import build_backbone

    torch.manual_seed(0)
    backbone = build_backbone("tiny", image_size=64, width=8)
    out = tmp_path_factory.mktemp("encoder")
    return export_encoder(backbone, out, method="random_init", config_hash="contract")


def _first(loader: torch.utils.data.DataLoader) -> object:
    return next(iter(loader))


TRAINED = sorted(n for n in TASKS.names() if not TASKS.get(n).evaluation_only)
EVALUATED = sorted(n for n in TASKS.names() if TASKS.get(n).evaluation_only)


@pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`")
@pytest.mark.parametrize("name", TRAINED)
def test_task_feeds_its_system_at_every_fraction(
    name: str, synth_tiny: Path, tiny_encoder: Path, tmp_path: Path
) -> None:
    from cxrbench.data.features import FeatureCache
    from cxrbench.models.artifact import load_encoder
    from cxrbench.models.backbones import freeze
    from cxrbench.runner.resolve import load_task
    from cxrbench.systems import SYSTEMS

    job = load_task(name, "tiny", ["train.workers=0", "trainer.progress=false"])
    system_cls = SYSTEMS.get(job.task.kind)  # every task kind has a system
    served = 0
    for fraction in FRACTIONS:
        try:
            data = job.task.data(synth_tiny, fraction)
        except CxrbenchError as err:  # refused: must say which fraction and why
            assert f"{fraction:g}" in str(err) or f"{fraction * 100:g}%" in str(err), str(err)
            continue
        served += 1
        assert len(data.train.ids) > 0 and len(data.val.ids) > 0 and len(data.test.ids) > 0
        assert data.train.labels.shape == (len(data.train.ids), len(data.classes))
        if job.task.kind != "classification":
            assert len(data.train.targets) == len(data.train.ids)
        encoder, meta = load_encoder(tiny_encoder)
        freeze(encoder)
        torch.manual_seed(0)
        prepared = system_cls.prepare(
            job.task, job.cfg, data, encoder, meta, FeatureCache(tmp_path / "cache")
        )
        system = prepared.system
        system.train()
        loss = system.training_step(_first(prepared.train), 0)
        value = loss["loss"] if isinstance(loss, dict) else loss
        assert isinstance(value, torch.Tensor) and math.isfinite(float(value.detach())), name
        system.eval()
        with torch.no_grad():
            system.validation_step(_first(prepared.val), 0)
    assert served >= 1, f"{name}: no fraction of synth-tiny could be served"


@pytest.mark.parametrize("name", EVALUATED)
def test_evaluation_task_scores_a_method_with_a_text_side(
    name: str, synth_tiny: Path, text_model: Path
) -> None:
    """A task that trains nothing (zero-shot, retrieval): its test items and its kind's
    ``evaluate`` give every metric of the task, finite, and predictions the file format takes."""
    from cxrbench.predictions import Predictions, check
    from cxrbench.runner.pretrain import build_method
    from cxrbench.runner.resolve import load_config, load_task
    from cxrbench.systems import SYSTEMS

    job = load_task(name, "tiny", ["train.workers=0", "trainer.progress=false"])
    system_cls = SYSTEMS.get(job.task.kind)
    assert system_cls.trains is False
    data = job.task.data(synth_tiny, 1.0)
    assert len(data.test.ids) > 0 and len(data.train.ids) == 0
    torch.manual_seed(0)
    config = load_config("random_init", "tiny", [f"text.model={text_model}", "text.max_length=32"])
    method = build_method(config, text_model).eval()
    evaluated = system_cls.evaluate(job.task, job.cfg, data, method)
    assert f"test/{job.task.metric}" in evaluated.test_results
    assert all(math.isfinite(v) for v in evaluated.test_results.values())
    arrays = {**evaluated.test_predictions, "kind": job.task.kind, "task": name,
              "ids": list(data.test.ids)}  # fmt: skip
    check(arrays)
    recomputed = Predictions(Path("predictions.npz"), arrays).metrics()
    assert recomputed == pytest.approx(evaluated.test_results)
