"""What a text model's sentence embedding carries, measured on a MIMIC-layout corpus (issue 22).

Methods that align images to a *frozen* text model (M-FLAG) or score zero-shot prompts through
one depend on its [CLS] feature (the last layer's first token, as :class:`TextEncoder` gives it)
meaning something about the report. Four measurements, on the frozen model:

- **collapse**: over up to ``sample`` reports of the validation/test studies, the mean pairwise
  cosine of their [CLS] features and ``mean_share`` = ‖mean‖ / mean ‖x‖ (1 when every report
  has the same vector, 0 when the features average out);
- **label probe**: a logistic regression (scikit-learn, standardised features, C = 1) per
  CheXpert observation, from the [CLS] of each study's report text (its cleaned impression and
  findings, what pre-training reads) to the study's label (1.0 positive; negative, uncertain and
  blank are 0), trained on the ``train`` split's studies and scored on ``validate`` + ``test``:
  macro AUROC over the observations with at least ``MIN_POSITIVES`` positives on both sides, i.e.
  how much of the label is in the embedding, text only; and the same from ``FEW_STUDIES``
  train studies (every k-th), where the embedding's arrangement, not only its content, shows;
- **cosine k-NN probe**: each held-out study's score for an observation is the share of
  positives among its ``KNN`` nearest train studies by cosine of the *raw* [CLS] (no
  standardisation, no training): macro AUROC as above. The linear probe standardises every
  feature, so it reads labels out of an embedding whose reports all point one way; methods that
  use the text embedding through cosines (M-FLAG's alignment, zero-shot prompts, retrieval) see
  its geometry, which this probe measures;
- **findings → impression retrieval**: among the validation/test studies whose report has both
  sections, each findings text's [CLS] ranks every impression's by cosine; R@1 (chance
  1 / n) is how often its own impression is first.

Nothing here trains the text model; no report text is logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrbench.errors import CxrbenchError

MIN_POSITIVES = 5
FEW_STUDIES = 200
KNN = 20
SPLITS_HELD = ("validate", "test")


@dataclass(frozen=True)
class StudyText:
    study_id: str
    split: str
    text: str  # cleaned impression + findings (what pre-training reads)
    findings: str  # cleaned findings alone ("" when the report has none)
    impression: str  # cleaned impression alone
    labels: dict[str, float]  # 1.0 positive, 0.0 otherwise, per CheXpert observation


def study_texts(folder: Path) -> list[StudyText]:
    """One entry per study with frontal images and a non-empty cleaned report, in file order."""
    from cxrbench.data.formats import mimic
    from cxrbench.data.reports import clean_sections, read_report, report_text

    index = mimic.read(Path(folder))
    seen: dict[str, StudyText] = {}
    for image in index.frontal():
        if image.study_id in seen:
            continue
        report = read_report(image.report_path)
        text = report_text(report)
        if not text:
            continue
        raw = index.labels.get(image.study_id, {}) if index.labels else {}
        labels = {name: 1.0 if value == 1.0 else 0.0 for name, value in raw.items()}
        seen[image.study_id] = StudyText(image.study_id, image.split, text,
                                         *clean_sections(report), labels)  # fmt: skip
    return list(seen.values())


@torch.no_grad()
def cls_features(encoder: Any, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """[CLS] features (N, D) of ``texts`` through a frozen :class:`TextEncoder`."""
    encoder.eval()
    chunks = []
    for start in range(0, len(texts), batch_size):
        tokens = encoder.tokenize(texts[start : start + batch_size])
        chunks.append(encoder(tokens["input_ids"], tokens["attention_mask"]).cls.float())
    return torch.cat(chunks) if chunks else torch.zeros(0)


def collapse(features: torch.Tensor) -> dict[str, float]:
    """Mean pairwise cosine (i ≠ j) and ‖mean‖ / mean ‖x‖ of ``features`` (N, D)."""
    n = len(features)
    if n < 2:
        raise CxrbenchError(f"the collapse measure needs at least 2 texts, got {n}")
    unit = torch.nn.functional.normalize(features, dim=1)
    cosine = unit @ unit.T
    off = (cosine.sum() - cosine.diagonal().sum()) / (n * (n - 1))
    share = features.mean(dim=0).norm() / features.norm(dim=1).mean()
    return {"mean_pairwise_cosine": float(off), "mean_share": float(share), "texts": n}


def _probe_columns(
    train_labels: np.ndarray, test_labels: np.ndarray, names: list[str]
) -> list[int]:
    """The observations with ``MIN_POSITIVES``+ positives and a negative on both sides."""
    keep = [
        k for k in range(len(names))
        if MIN_POSITIVES <= train_labels[:, k].sum() < len(train_labels)
        and MIN_POSITIVES <= test_labels[:, k].sum() < len(test_labels)
    ]  # fmt: skip
    if not keep:
        raise CxrbenchError(
            f"no CheXpert observation has {MIN_POSITIVES}+ positives (and a negative) in both the "
            "train and the validate/test studies: the label probe needs labelled studies"
        )
    return keep


def label_probe(
    train: torch.Tensor, train_labels: np.ndarray, test: torch.Tensor, test_labels: np.ndarray,
    names: list[str],
) -> dict[str, Any]:  # fmt: skip
    """Macro AUROC of per-observation logistic regressions (see the module docstring)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from cxrbench.metrics.classification import macro_auroc

    keep = _probe_columns(train_labels, test_labels, names)
    scaler = StandardScaler().fit(train.numpy())
    x_train, x_test = scaler.transform(train.numpy()), scaler.transform(test.numpy())
    scores = np.zeros((len(test_labels), len(keep)))
    for column, k in enumerate(keep):
        model = LogisticRegression(C=1.0, max_iter=2000).fit(x_train, train_labels[:, k])
        scores[:, column] = model.predict_proba(x_test)[:, 1]
    kept = [names[k] for k in keep]
    return {
        "macro_auroc": macro_auroc(scores, test_labels[:, keep], kept),
        "observations": kept,
        "train_studies": len(train_labels),
        "test_studies": len(test_labels),
    }


def knn_probe(
    train: torch.Tensor, train_labels: np.ndarray, test: torch.Tensor, test_labels: np.ndarray,
    names: list[str], k: int = KNN,
) -> dict[str, Any]:  # fmt: skip
    """Macro AUROC of cosine k-NN label scores (see the module docstring)."""
    from cxrbench.metrics.classification import macro_auroc

    keep = _probe_columns(train_labels, test_labels, names)
    k = min(k, len(train))
    unit = torch.nn.functional.normalize
    sims = unit(test, dim=1) @ unit(train, dim=1).T
    nearest = sims.topk(k, dim=1).indices.numpy()
    scores = train_labels[:, keep][nearest].mean(axis=1)
    kept = [names[i] for i in keep]
    return {"macro_auroc": macro_auroc(scores, test_labels[:, keep], kept), "k": k,
            "observations": kept}  # fmt: skip


def retrieval_r1(findings: torch.Tensor, impressions: torch.Tensor) -> dict[str, float]:
    """Findings → impression R@1 by cosine (row i's match is column i)."""
    f = torch.nn.functional.normalize(findings, dim=1)
    i = torch.nn.functional.normalize(impressions, dim=1)
    best = (f @ i.T).argmax(dim=1)
    n = len(findings)
    return {"r1": float((best == torch.arange(n)).float().mean()), "pairs": n, "chance": 1 / n}


def evaluate_text_model(
    model_dir: Path, folder: Path, *, sample: int = 256, max_length: int = 112
) -> dict[str, Any]:
    """The four measurements of the module docstring for the text model in ``model_dir`` on the
    MIMIC-layout corpus ``folder`` (deterministic: no sampling beyond the first ``sample``)."""
    from cxrbench.models.text import TextEncoder

    encoder = TextEncoder.from_pretrained(model_dir, freeze="all", max_length=max_length)
    studies = study_texts(folder)
    train = [s for s in studies if s.split == "train"]
    held = [s for s in studies if s.split in SPLITS_HELD]
    if not train or len(held) < 2:
        raise CxrbenchError(
            f"{folder}: {len(train)} train and {len(held)} validate/test studies with reports; "
            "the text-model measurements need both"
        )
    names = sorted({name for s in studies for name in s.labels})
    held_cls = cls_features(encoder, [s.text for s in held])
    out: dict[str, Any] = {"collapse": collapse(held_cls[:sample])}
    if names:

        def matrix(part: list[StudyText]) -> np.ndarray:
            return np.array([[s.labels.get(n, 0.0) for n in names] for s in part])

        train_cls = cls_features(encoder, [s.text for s in train])
        y_train, y_held = matrix(train), matrix(held)
        out["label_probe"] = label_probe(train_cls, y_train, held_cls, y_held, names)
        out["knn_probe"] = knn_probe(train_cls, y_train, held_cls, y_held, names)
        # the same probe from FEW train studies (every k-th): with templated reports a probe
        # on thousands of studies decodes labels from almost any embedding; with a few
        # hundred, how the embedding arranges reports shows
        step = max(1, len(train) // FEW_STUDIES)
        few = slice(0, step * FEW_STUDIES, step)
        try:
            out["label_probe_few"] = label_probe(train_cls[few], y_train[few], held_cls, y_held,
                                                 names)  # fmt: skip
        except CxrbenchError as err:
            out["label_probe_few"] = {"error": str(err)}
    both = [s for s in held if s.findings and s.impression]
    if len(both) >= 2:
        out["findings_to_impression"] = retrieval_r1(
            cls_features(encoder, [s.findings for s in both]),
            cls_features(encoder, [s.impression for s in both]),
        )
    return out
