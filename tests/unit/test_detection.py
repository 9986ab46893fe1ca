"""Detection transfer: boxes scaled into new arrays, both detectors learn, a frozen encoder stays
put, the RSNA / Object-CXR tasks on synth-tiny, and one run_transfer end to end."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from cxrbench.data.codecs import Shape
from cxrbench.data.features import FeatureCache
from cxrbench.data.formats.objectcxr import ObjectImage
from cxrbench.data.formats.rsna import RsnaImage
from cxrbench.errors import ConfigError, DataFormatError
from cxrbench.metrics.classification import MetricError
from cxrbench.metrics.detection import mean_average_precision
from cxrbench.models.backbones import build_backbone
from cxrbench.models.detectors import fpn_anchor_sizes
from cxrbench.predictions import read_predictions
from cxrbench.systems.detection import (
    DetectionImages,
    DetectionSystem,
    detection_params,
    scale_boxes,
    selection_score,
)
from cxrbench.tasks.base import (
    ImageSpec,
    Items,
    OptimSpec,
    ProbeSpec,
    TaskConfig,
    TaskData,
    TrainSpec,
)
from cxrbench.tasks.objectcxr_det import objectcxr_boxes
from cxrbench.tasks.rsna_det import rsna_boxes


class ArrayTask:
    """A detection task whose records are stored (N, 4) arrays, returned as they are: a system
    that scaled them in place (MGCA's bug) would change them."""

    name = "synthetic_det"

    def boxes(self, record: np.ndarray, height: int, width: int) -> np.ndarray:
        return record


def _write(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels).save(path)
    return path


def rectangles(root: Path, n: int = 8, size: int = 64, seed: int = 0) -> Items:
    """``n`` noisy images with one or two bright non-overlapping rectangles (12–26 px)."""
    rng = np.random.default_rng(seed)
    paths, records = [], []
    for i in range(n):
        img = rng.normal(80, 10, (size, size))
        boxes: list[list[float]] = []
        while len(boxes) < 1 + i % 2:
            w, h = rng.integers(12, 27, size=2)
            x, y = rng.integers(2, size - 2 - w), rng.integers(2, size - 2 - h)
            box = [float(x), float(y), float(x + w), float(y + h)]
            if all(box[0] > b[2] + 2 or box[2] < b[0] - 2 or box[1] > b[3] + 2
                   or box[3] < b[1] - 2 for b in boxes):  # fmt: skip
                img[y : y + h, x : x + w] += 110
                boxes.append(box)
        paths.append(_write(root / f"{i}.png", np.clip(img, 0, 255).astype(np.uint8)))
        records.append(np.array(boxes, dtype=np.float32))
    labels = np.ones((n, 1), dtype=np.float32)
    return Items([str(i) for i in range(n)], paths, labels, tuple(records))


def _cfg(size: int, finetune: bool, detector: str, **params: Any) -> TaskConfig:
    return TaskConfig(
        dataset="synthetic",
        image=ImageSpec(resize=size, crop=size),
        probe=ProbeSpec(finetune=finetune),
        optim=OptimSpec(lr=2e-3, weight_decay=0.0, encoder_lr_scale=1.0),
        train=TrainSpec(batch_size=8, workers=0),
        params={"detector": detector, **params},
    )


def _prepare(items: Items, cfg: TaskConfig, tmp_path: Path, encoder: Any = None):
    encoder = encoder or build_backbone("tiny", image_size=cfg.image.crop)
    data = TaskData(items, items, items, items, ("object",), "multilabel", "h", "f")
    meta = {"feature_dims": encoder.feature_dims, "sha256": "test"}
    cache = FeatureCache(tmp_path / "cache")
    task: Any = ArrayTask()  # duck-typed: a detection task needs boxes(record, height, width)
    return DetectionSystem.prepare(task, cfg, data, encoder, meta, cache), encoder


def _trainer(**kwargs: Any) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, **kwargs)  # fmt: skip


# --- data ------------------------------------------------------------------------------------


def test_boxes_scale_to_the_square_input_as_new_arrays_for_a_non_square_image(tmp_path) -> None:
    pixels = np.full((80, 120), 40, dtype=np.uint8)  # height 80, width 120
    pixels[20:60, 30:90] = 200
    stored = np.array([[30.0, 20.0, 90.0, 60.0], [0.0, 0.0, 120.0, 80.0]], dtype=np.float32)
    before = stored.copy()
    items = Items(["a"], [_write(tmp_path / "a.png", pixels)], np.ones((1, 1)), (stored,))
    rows = DetectionImages(items, ArrayTask().boxes, size=64, augment=False)
    first, second = rows[0], rows[0]
    expected = [[16.0, 16.0, 48.0, 48.0], [0.0, 0.0, 64.0, 64.0]]
    np.testing.assert_allclose(first["boxes"].numpy(), expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(second["boxes"].numpy(), first["boxes"].numpy())
    np.testing.assert_array_equal(stored, before)  # the record is never written to
    assert not np.shares_memory(scale_boxes(stored, 80, 120, 64), stored)
    image = first["image"]
    assert image.shape == (3, 64, 64) and first["labels"].tolist() == [0, 0]
    # the bright block lands where its scaled box says (normalised: 200/255 → 0.57, 40 → -0.69)
    assert image[0, 20:44, 20:44].min() > 0.5 and image[0, :12, :12].max() < -0.6


def test_augmentation_mirrors_boxes_with_the_image_and_leaves_the_record(tmp_path) -> None:
    pixels = np.zeros((64, 64), dtype=np.uint8)
    pixels[8:24, 4:20] = 255
    stored = np.array([[4.0, 8.0, 20.0, 24.0]], dtype=np.float32)
    items = Items(["a"], [_write(tmp_path / "a.png", pixels)], np.ones((1, 1)), (stored,))
    rows = DetectionImages(items, ArrayTask().boxes, size=64, augment=True)
    torch.manual_seed(0)
    seen = {tuple(rows[0]["boxes"][0].tolist()) for _ in range(12)}
    assert seen == {(4.0, 8.0, 20.0, 24.0), (44.0, 8.0, 60.0, 24.0)}
    np.testing.assert_array_equal(stored, [[4.0, 8.0, 20.0, 24.0]])


def test_task_records_become_corner_boxes_and_a_box_outside_is_an_error(tmp_path) -> None:
    source = tmp_path / "stage_2_train_labels.csv"
    rsna = RsnaImage("p", tmp_path / "p.dcm", 1, ((10.0, 20.0, 30.0, 40.0),), (2,), 2, None, source)
    np.testing.assert_array_equal(rsna_boxes(rsna, 100, 100), [[10, 20, 40, 60]])
    assert rsna_boxes(rsna, 100, 100).dtype == np.float32
    with pytest.raises(DataFormatError, match=r"line 2"):
        rsna_boxes(rsna, 50, 100)
    polygon = Shape("polygon", ((5.0, 9.0), (30.0, 2.0), (12.0, 40.0)))
    rect = Shape("rectangle", ((1.0, 2.0), (3.0, 4.0)))
    obj = ObjectImage("x.jpg", tmp_path / "x.jpg", "train", (rect, polygon), 3, tmp_path / "t.csv")
    np.testing.assert_array_equal(objectcxr_boxes(obj, 50, 50), [[1, 2, 3, 4], [5, 2, 30, 40]])
    empty = ObjectImage("y.jpg", tmp_path / "y.jpg", "train", (), 4, tmp_path / "t.csv")
    assert objectcxr_boxes(empty, 50, 50).shape == (0, 4)


def test_params_are_validated_with_the_key_named() -> None:
    assert detection_params({}).detector == "yolov3"
    with pytest.raises(ConfigError, match=r"params\.thresold"):
        detection_params({"thresold": 0.5})
    with pytest.raises(ConfigError, match=r"params\.detector.*yolov3, faster_rcnn"):
        detection_params({"detector": "retinanet"})
    with pytest.raises(ConfigError, match=r"params\.conf_threshold"):
        detection_params({"conf_threshold": 1.5})
    with pytest.raises(ConfigError, match=r"params\.fpn_channels.*faster_rcnn only"):
        detection_params({"fpn_channels": 64})
    assert fpn_anchor_sizes(224) == ((14, 20), (28, 40), (56, 79), (112, 158))


def test_faster_rcnn_transform_neither_resizes_nor_renormalises() -> None:
    from cxrbench.models.detectors import FasterRcnnDetector

    params = detection_params({"detector": "faster_rcnn", "fpn_channels": 16})
    encoder = build_backbone("tiny", image_size=64, width=8)
    detector = FasterRcnnDetector(encoder, encoder.feature_dims, 64, False, params)
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    for training in (True, False):
        detector.train(training)
        batch, _ = detector.model.transform(list(images))
        assert batch.image_sizes == [(64, 64), (64, 64)]
        torch.testing.assert_close(batch.tensors, images, rtol=0, atol=1e-6)
    assert (
        detector.model.roi_heads.score_thresh == 0.5 and detector.model.roi_heads.nms_thresh == 0.5
    )


# --- learning --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("detector", "params", "epochs"),
    [
        ("yolov3", {"yolo_hidden": 64}, 80),
        ("faster_rcnn", {"fpn_channels": 32, "representation_size": 128, "box_batch_size": 64},
         90),
    ],
)  # fmt: skip
def test_each_detector_overfits_eight_images_with_a_trainable_encoder(
    tmp_path, detector: str, params: dict[str, Any], epochs: int
) -> None:
    L.seed_everything(0, verbose=False)
    items = rectangles(tmp_path)
    records = [r.copy() for r in items.targets]
    prepared, encoder = _prepare(items, _cfg(64, True, detector, **params), tmp_path)
    before = copy.deepcopy(encoder.state_dict())
    _trainer(max_epochs=epochs).fit(prepared.system, prepared.train)
    system = prepared.system.eval()
    batch = next(iter(prepared.val))
    with torch.no_grad():
        found = system.detect(torch.stack([row["image"] for row in batch]))
    preds = [{"boxes": b, "scores": s, "labels": lb} for b, s, lb in found]
    gts = [{"boxes": row["boxes"], "labels": row["labels"]} for row in batch]
    ap50 = mean_average_precision(preds, gts, iou_thresholds=[0.5])
    assert ap50 > 0.8, f"{detector}: AP@0.5 {ap50:.3f}"
    changed = [k for k, v in encoder.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.endswith("weight") for k in changed)  # finetune: the encoder trained too
    for record, kept in zip(items.targets, records, strict=True):
        np.testing.assert_array_equal(record, kept)  # no in-place scaling of the records


@pytest.mark.parametrize("detector", ["yolov3", "faster_rcnn"])
def test_frozen_encoder_is_unchanged_while_the_head_trains(tmp_path, detector: str) -> None:
    L.seed_everything(0, verbose=False)
    items = rectangles(tmp_path, n=4)
    params = {"fpn_channels": 32, "representation_size": 64} if detector == "faster_rcnn" else {}
    prepared, encoder = _prepare(items, _cfg(64, False, detector, **params), tmp_path)
    before = copy.deepcopy(encoder.state_dict())  # weights and BatchNorm statistics
    head_before = [p.detach().clone() for p in prepared.system.parameters()]
    _trainer(max_steps=3).fit(prepared.system, prepared.train)
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, before[key]), key
    moved = [
        not torch.equal(p, q)
        for p, q in zip(prepared.system.parameters(), head_before, strict=True)
    ]
    assert any(moved)
    optimiser = prepared.system.configure_optimizers()
    in_optimiser = {id(p) for g in optimiser.param_groups for p in g["params"]}
    assert not in_optimiser & {id(p) for p in encoder.parameters()}


def test_a_val_split_without_boxes_names_the_split(tmp_path) -> None:
    items = rectangles(tmp_path, n=2)
    empty = Items(items.ids, items.paths, items.labels, tuple(np.zeros((0, 4)) for _ in items.ids))
    prepared, _ = _prepare(empty, _cfg(64, False, "yolov3"), tmp_path)
    with pytest.raises(MetricError, match=r"val split .*ground-truth box"):
        _trainer(max_epochs=1).fit(prepared.system, prepared.train, prepared.val)


# --- tasks on synth-tiny ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rsna_det", "objectcxr_det"])
def test_task_batches_on_synth_tiny(synth_tiny, tmp_path, name: str) -> None:
    from cxrbench.runner.resolve import load_task
    from cxrbench.systems.detection import DetectionSystem as System

    job = load_task(name, "tiny")
    assert job.task.kind == "detection" and job.task.metric == "map"
    data = job.task.data(synth_tiny, 1.0)
    encoder = build_backbone("tiny", image_size=job.cfg.image.crop)
    meta = {"feature_dims": encoder.feature_dims, "sha256": "x"}
    job.cfg.train.map_cache_gib = 0  # images (the cached maps: the next test)
    prepared = System.prepare(job.task, job.cfg, data, encoder, meta, FeatureCache(tmp_path))
    assert prepared.probe_mode == "frozen"
    size = job.cfg.image.crop
    boxes = []
    for k, batch in enumerate(prepared.train):
        assert isinstance(batch, list) and len(batch) == min(16, len(data.train.ids))
        for row in batch:
            assert row["image"].shape == (3, size, size)
            assert row["boxes"].shape == (len(row["labels"]), 4)
            boxes.append(row["boxes"])
        if k == 2:
            break
    every = torch.cat(boxes)
    assert len(every) > 0
    assert (every >= 0).all() and (every <= size).all()
    assert (every[:, 2] > every[:, 0]).all() and (every[:, 3] > every[:, 1]).all()


def test_selection_ranks_any_detection_above_none_and_breaks_zero_ties_on_val_loss() -> None:
    """A run whose val mAP is still 0 (nothing above confidence 0.5) keeps improving while its val
    loss falls, so early stopping does not end it on a plateau of zeros; a positive mAP wins."""
    history = [(0.0, 2.60), (0.0, 2.23), (0.0, 2.17), (0.0, 2.21), (0.004, 2.90), (0.02, 3.4)]
    scores = [selection_score(m, loss) for m, loss in history]
    assert scores[1] > scores[0] and scores[2] > scores[1] and scores[3] < scores[2]
    assert scores[4] > max(scores[:4]) and scores[5] > scores[4]
    assert all(-1.0 < s <= 0.0 for s in scores[:4])
    assert selection_score(0.3, 0.1) == 0.3  # with detections it is val mAP itself
    assert selection_score(0.0, 0.0) == 0.0 and selection_score(0.0, float("nan")) == -1.0
    assert selection_score(1e-6, 50.0) > selection_score(0.0, 0.0)


def test_run_transfer_objectcxr_det_end_to_end(synth_tiny, tmp_path) -> None:
    from cxrbench.models.artifact import export_encoder
    from cxrbench.report.store import read_record
    from cxrbench.runner.resolve import load_task
    from cxrbench.runner.transfer import run_transfer

    torch.manual_seed(0)
    artifact = export_encoder(
        build_backbone("tiny", image_size=64), tmp_path / "enc", method="random_init",
        config_hash="test",
    )  # fmt: skip
    job = load_task("objectcxr_det", "tiny", ["train.max_epochs=1", "trainer.progress=false"])
    cache = FeatureCache(tmp_path / "cache")
    record = run_transfer(
        job, artifact, synth_tiny, fraction=1.0, seed=0, run_dir=tmp_path / "run", cache=cache
    )
    stored = read_record(tmp_path / "run" / "result.json")
    assert stored.metric == "test/map" and stored.task == "objectcxr_det"
    for key in ("test/map", "test/map_mgca", "test/map50"):
        assert 0.0 <= stored.metrics[key] <= 1.0
    assert record.metrics == stored.metrics and "val/select" in stored.metrics
    # what selection followed is the rule applied to the logged val mAP and loss
    import csv

    (log,) = (tmp_path / "run" / "logs").rglob("metrics.csv")
    vals = [r for r in csv.DictReader(log.open()) if r.get("val/select")]
    assert vals, "no validation logged val/select"
    for row in vals:
        assert float(row["val/select"]) == pytest.approx(
            selection_score(float(row["val/map"]), float(row["val/loss"])), abs=1e-6
        )
    preds = read_predictions(tmp_path / "run" / "predictions.npz", stored.predictions_sha256)
    recomputed = preds.metrics()  # every mAP variant, from the kept boxes and scores per image
    assert recomputed == {k: stored.metrics[k] for k in ("test/map", "test/map_mgca", "test/map50")}


def test_cached_maps_give_the_detections_of_the_image_path(synth_tiny, tmp_path) -> None:
    """YOLO on the frozen C3–C5 computed once (systems/frozen_maps.py) scores as on images."""
    from cxrbench.runner.resolve import load_task
    from cxrbench.systems.detection import DetectionSystem as System

    job = load_task("rsna_det", "tiny")
    data = job.task.data(synth_tiny, 0.5)
    encoder = build_backbone("tiny", image_size=job.cfg.image.crop)
    meta = {"feature_dims": encoder.feature_dims, "sha256": "x"}
    job.cfg.train.map_cache_gib = 0
    plain = System.prepare(job.task, job.cfg, data, encoder, meta, FeatureCache(tmp_path))
    job.cfg.train.map_cache_gib = 4.0
    cached = System.prepare(job.task, job.cfg, data, encoder, meta, FeatureCache(tmp_path))
    assert (plain.probe_mode, cached.probe_mode) == ("frozen", "cached")
    cached.system.load_state_dict(plain.system.state_dict())
    batch_a, batch_b = next(iter(plain.test)), next(iter(cached.test))
    assert [r["id"] for r in batch_a] == [r["id"] for r in batch_b]
    with torch.no_grad():
        loss_a, found_a = plain.system.detector.evaluate(*plain.system._unpack(batch_a))
        loss_b, found_b = cached.system.detector.evaluate(*cached.system._unpack(batch_b))
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-4, atol=1e-4)
    assert [len(f[0]) for f in found_a] == [len(f[0]) for f in found_b]
    job.cfg.params = {"detector": "faster_rcnn"}  # takes images: never cached
    frcnn = System.prepare(job.task, job.cfg, data, encoder, meta, FeatureCache(tmp_path))
    assert frcnn.probe_mode == "frozen"
