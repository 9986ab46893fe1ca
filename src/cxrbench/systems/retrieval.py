"""Image–report retrieval: rank reports for each image and images for each report in a method's
image–text space (nothing is trained).

The test items are images with their study's report (``Items.ids`` are ``<study>/<image>``,
``Items.targets`` the cleaned report text of each image, the text pre-training pairs it with). The
report gallery holds each study's report once (two studies with the same words are two entries);
the image gallery holds every test image. For image→report, an image's query is a hit at K when its
own study's report ranks in the top K of the gallery; for report→image, a report's query
is a hit when **any** image of its study ranks in the top K (a study may have several frontal
images). Metrics: ``i2t_r1/5/10`` and ``t2i_r1/5/10`` (Recall@K, fractions) and ``r_mean`` (their
mean, the headline); ``chance_i2t_r10`` etc. in the record's ``extra`` are the recalls of a random
ranking (K / gallery size; for a report, one minus the chance of drawing none of its images).
Ties count against the query: a constant score gets recall 0, never above chance.

Predictions (``predictions.npz``): per test image ``i2t_rank`` (its report's 0-based rank) and
``t2i_rank`` (the best rank of its study's images for its study's report, repeated on each image
of the study) with ``study`` (the study index of each image).
"""

from __future__ import annotations

from math import comb
from typing import TYPE_CHECKING

import numpy as np
import torch

from cxrbench.systems import SYSTEMS
from cxrbench.systems.base import Evaluated, EvaluationSystem
from cxrbench.systems.zeroshot import check_params, encode_images, encode_texts

if TYPE_CHECKING:
    from cxrbench.methods.base import PretrainMethod
    from cxrbench.tasks.base import Task, TaskConfig, TaskData

KS = (1, 5, 10)
PARAMS = ("batch_size",)


def ranks(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """For each row, the 0-based rank of its best positive column; a tie counts against it.
    ``scores`` (Q, G), ``positive`` (Q, G) bool with at least one True per row."""
    best = scores.masked_fill(~positive, float("-inf")).amax(dim=1, keepdim=True)
    return (scores.masked_fill(positive, float("-inf")) >= best).sum(dim=1)


def recalls(i2t: np.ndarray, t2i_by_study: np.ndarray) -> dict[str, float]:
    out = {}
    for k in KS:
        out[f"test/i2t_r{k}"] = float((i2t < k).mean())
        out[f"test/t2i_r{k}"] = float((t2i_by_study < k).mean())
    out["test/r_mean"] = float(np.mean([out[f"test/{d}_r{k}"] for d in ("i2t", "t2i") for k in KS]))
    return out


def chance(n_images: int, per_study: np.ndarray) -> dict[str, float]:
    """Recall@K of a random ranking: K / reports for image→report; for report→image, the chance
    that a random order puts one of the study's m images among the top K of all images."""
    n_reports = len(per_study)
    out = {}
    for k in KS:
        out[f"chance_i2t_r{k}"] = min(1.0, k / n_reports)
        none = [comb(n_images - m, k) / comb(n_images, k) if k <= n_images else 0.0
                for m in per_study]  # fmt: skip
        out[f"chance_t2i_r{k}"] = float(1.0 - np.mean(none))
    return out


@SYSTEMS.register("retrieval")
class RetrievalSystem(EvaluationSystem):
    """Ranks the reports for each image and the images for each report (module docstring)."""

    @classmethod
    def evaluate(
        cls, task: Task, cfg: TaskConfig, data: TaskData, method: PretrainMethod
    ) -> Evaluated:
        params = dict(cfg.params)
        check_params(params, PARAMS)
        items = data.test
        studies = [str(i).split("/")[0] for i in items.ids]  # ids are "<study>/<image>"
        first = {s: n for n, s in reversed(list(enumerate(studies)))}
        order = sorted(first, key=first.__getitem__)  # studies in order of their first image
        number = {s: n for n, s in enumerate(order)}
        study = np.asarray([number[s] for s in studies])
        gallery = [str(items.targets[first[s]]) for s in order]  # each study's report, once
        images = encode_images(method, items, cfg)
        texts = encode_texts(method, gallery, int(params.get("batch_size", 64)))
        scores = method.similarity(images, texts).float()  # (images, reports)
        own = torch.zeros_like(scores, dtype=torch.bool)
        own[torch.arange(len(study)), torch.as_tensor(study)] = True
        i2t = ranks(scores, own).numpy()
        t2i_by_study = ranks(scores.t(), own.t()).numpy()
        per_study = np.bincount(study, minlength=len(gallery))
        predictions = {"i2t_rank": i2t, "t2i_rank": t2i_by_study[study], "study": study}
        extra = {"test_images": len(items.ids), "test_reports": len(gallery),
                 **chance(len(items.ids), per_study)}  # fmt: skip
        return Evaluated(recalls(i2t, t2i_by_study), predictions, extra)


__all__ = ["RetrievalSystem", "chance", "ranks", "recalls"]
