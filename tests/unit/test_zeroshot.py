"""Zero-shot classification and retrieval: GLoRIA's 5×200 rule, the prompt styles' scoring, and
Recall@K with its chance level, each against a hand computation."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrbench.data.formats.chexpert import OBSERVATIONS
from cxrbench.errors import ConfigError
from cxrbench.systems.retrieval import chance, ranks, recalls
from cxrbench.systems.zeroshot import class_prompts, class_scores
from cxrbench.tasks.chexpert_zeroshot import draw, eligible


@dataclass
class _Image:
    path: str
    labels: dict
    split: str = "train"
    frontal: bool = True


@dataclass
class _Index:
    images: list


def _image(path: str, **positive: float) -> _Image:
    labels: dict = dict.fromkeys(OBSERVATIONS)
    labels.update({k.replace("_", " "): v for k, v in positive.items()})
    return _Image(path, labels)


def test_gloria_rule_keeps_images_whose_only_positive_is_the_class() -> None:
    index = _Index([
        _image("a", Atelectasis=1.0),
        _image("b", Atelectasis=1.0, No_Finding=1.0),  # No Finding is not looked at
        _image("c", Atelectasis=1.0, Support_Devices=1.0),  # a second positive
        _image("d", Atelectasis=1.0, Pneumonia=-1.0),  # an uncertain anywhere
        _image("e", Edema=-1.0),  # uncertain is not positive
        _image("f", Cardiomegaly=1.0, Edema=0.0),
        _image("g", Lung_Opacity=1.0),  # its only positive is not a competition class
        _Image("h", {**dict.fromkeys(OBSERVATIONS), "Edema": 1.0}, frontal=False),
        _Image("i", {**dict.fromkeys(OBSERVATIONS), "Edema": 1.0}, split="valid"),
    ])  # fmt: skip
    found = eligible(index)
    assert found == {"Atelectasis": ["a", "b"], "Cardiomegaly": ["f"], "Consolidation": [],
                     "Edema": [], "Pleural Effusion": []}  # fmt: skip


def test_draw_is_balanced_seeded_and_independent_of_pool_order() -> None:
    pools = {"x": [f"x{i}" for i in range(30)], "y": [f"y{i}" for i in range(8)]}
    picked = draw(pools, 200, seed=0)
    assert {k: len(v) for k, v in picked.items()} == {"x": 8, "y": 8}  # the smallest pool's n
    assert picked == draw({k: list(reversed(v)) for k, v in pools.items()}, 200, seed=0)
    assert picked != draw(pools, 200, seed=1)
    assert len(set(draw(pools, 5, seed=0)["x"])) == 5


def test_gloria_prompts_are_a_seeded_draw_of_the_combinations() -> None:
    words = [["mild", "large"], ["effusion"], ["", "on the left"]]
    params = {"style": "gloria", "prompts_per_class": 2, "draw_seed": 0,
              "prompts": {"gloria": {"A": words}}}  # fmt: skip
    prompts = class_prompts(params, ["A"])["A"]
    combos = {"mild effusion", "large effusion", "mild effusion on the left",
              "large effusion on the left"}  # fmt: skip
    assert len(prompts) == 2 and set(prompts) <= combos
    assert prompts == class_prompts(params, ["A"])["A"]
    with pytest.raises(ConfigError, match=r"params\.prompts\.gloria\.B"):
        class_prompts(params, ["A", "B"])
    with pytest.raises(ConfigError, match=r"params\.style"):
        class_prompts({**params, "style": "clip"}, ["A"])


class _Space:
    """A method whose image–text scores are given: image i against text t is table[i][t]."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table

    def encode_texts(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return {"global": torch.tensor([self.table[t] for t in texts]).t()}  # (images, texts)

    def similarity(self, images: dict, texts: dict) -> torch.Tensor:
        return texts["global"]


def test_gloria_scoring_takes_the_max_prompt_then_standardises_each_class() -> None:
    table = {"a1": [0.1, 0.5, 0.3], "a2": [0.4, 0.2, 0.3], "b1": [0.0, 0.9, 0.6]}
    scores = class_scores(_Space(table), {}, {"A": ["a1", "a2"], "B": ["b1"]}, "gloria", 8)  # type: ignore[arg-type]
    best = np.array([[0.4, 0.0], [0.5, 0.9], [0.3, 0.6]])
    want = (best - best.mean(axis=0)) / best.std(axis=0)
    np.testing.assert_allclose(scores, want, rtol=1e-6, atol=1e-6)


def test_chexzero_scoring_is_the_softmax_of_positive_against_negative() -> None:
    table = {"pos": [2.0, 0.0], "neg": [0.0, 1.0]}
    scores = class_scores(_Space(table), {}, {"A": {"positive": "pos", "negative": "neg"}},
                          "chexzero", 8)  # type: ignore[arg-type]  # fmt: skip
    np.testing.assert_allclose(scores[:, 0], [1 / (1 + np.exp(-2.0)), 1 / (1 + np.exp(1.0))],
                               rtol=1e-6)  # fmt: skip


def test_ranks_recalls_and_ties_by_hand() -> None:
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.2, 0.1], [0.3, 0.8, 0.1]])
    own = torch.eye(3, dtype=torch.bool)
    # row 0: own 0.9 first; row 1: own 0.2 tied with 0.2, the tie counts against it; row 2: own
    # 0.1 below both others
    assert ranks(scores, own).tolist() == [0, 1, 2]
    two = torch.tensor([[True, False, True]])  # best of several positives
    assert ranks(torch.tensor([[0.1, 0.9, 0.8]]), two).tolist() == [1]
    out = recalls(np.array([0, 1, 2]), np.array([0, 0, 12]))
    assert out["test/i2t_r1"] == pytest.approx(1 / 3) and out["test/i2t_r5"] == 1.0
    assert out["test/t2i_r1"] == pytest.approx(2 / 3) and out["test/t2i_r10"] == pytest.approx(
        2 / 3
    )


def test_chance_recall_of_a_random_ranking() -> None:
    per_study = np.array([1, 2, 1])  # 4 images, 3 reports
    c = chance(4, per_study)
    assert c["chance_i2t_r1"] == pytest.approx(1 / 3) and c["chance_i2t_r5"] == 1.0
    # a study with 2 of 4 images: P(one of them first) = 1/2; with 1: 1/4
    assert c["chance_t2i_r1"] == pytest.approx(np.mean([1 / 4, 1 / 2, 1 / 4]))
    assert c["chance_t2i_r5"] == 1.0
    rng = np.random.default_rng(0)  # against simulation: random orders of 10 images
    per = np.array([3, 1, 2, 4])
    study = np.repeat(np.arange(4), per)
    hits = [np.mean([(study[rng.permutation(10)][:5] == s).any() for s in range(4)])
            for _ in range(4000)]  # fmt: skip
    assert chance(10, per)["chance_t2i_r5"] == pytest.approx(np.mean(hits), abs=0.01)


def test_prompt_precision_by_hand() -> None:
    from cxrbench.systems.zeroshot import prompt_precision

    # two images (class A, class B), prompts a1 a2 (A) and b1 (B)
    table = {"a1": [0.9, 0.1], "a2": [0.2, 0.8], "b1": [0.5, 0.7]}
    targets = np.array([[1.0, 0.0], [0.0, 1.0]])
    out = prompt_precision(_Space(table), {}, {"A": ["a1", "a2"], "B": ["b1"]}, targets, 8,
                           ks=(1, 2, 3, 5))  # type: ignore[arg-type]  # fmt: skip
    # image 0 ranks a1, b1, a2: P@1 1, P@2 1/2; image 1 ranks a2, b1, a1: P@1 0, P@2 1/2
    assert out == {"p@1": 0.5, "p@2": 0.5, "p@3": pytest.approx(0.5)}  # K beyond the prompts: none


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", re.sub(r"\{[^}]*\}", " ", text.lower())))


def _strings(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, (list, tuple)):
        return [s for v in node for s in _strings(v)]
    return []


@pytest.mark.parametrize("task", ["chexpert_zeroshot", "rsna_zeroshot"])
def test_prompts_use_only_the_report_grammars_words(task) -> None:
    """docs/synthcxr.md: a text tower pre-trained on SynthCXR reports knows no other words."""
    import yaml

    from cxrbench.synth import reports

    grammar = [*_strings(reports.POSITIVE), *_strings(reports.NEGATIVE),
               *_strings(reports.HEDGE_NOUNS), *reports.COMPARISONS,
               *[w for _, words in reports.SEVERITY for w in words], *reports.SIDE.values(),
               "upper middle lower mildly moderately markedly"]  # fmt: skip
    known = set().union(*map(_words, grammar))
    path = Path(__file__).resolve().parents[2] / "src/cxrbench/configs/task" / f"{task}.yaml"
    prompts = yaml.safe_load(path.read_text())["params"]["prompts"]
    unknown = set().union(*map(_words, _strings(prompts))) - known
    assert not unknown, f"{task} prompts use words no SynthCXR report has: {sorted(unknown)}"


def test_retrieval_resamples_give_the_recorded_recalls_and_weigh_studies_by_drawn_images(
    tmp_path,
) -> None:
    """`cxrbench compare` resamples images; a report (one query per study) weighs the share of
    its study's images drawn, so on the test set itself every metric is the recorded one."""
    from cxrbench.predictions import Predictions

    study = np.array([0, 0, 1, 2, 2, 2])  # 6 images, 3 reports
    i2t = np.array([0, 3, 0, 12, 1, 0])
    t2i = np.array([4, 4, 0, 11, 11, 11])  # per study, repeated on each of its images
    arrays = {"kind": "retrieval", "task": "mimic_retrieval", "ids": [f"i{k}" for k in range(6)],
              "i2t_rank": i2t, "t2i_rank": t2i, "study": study}  # fmt: skip
    preds = Predictions(tmp_path / "predictions.npz", arrays)
    recorded = preds.metrics()
    ones = np.ones((1, 6))
    for name in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "t2i_r10", "r_mean"):
        assert preds.resampled(name)(ones)[0] == pytest.approx(recorded[f"test/{name}"]), name
    # a resample with study 0's images twice, study 1's none, one image of study 2:
    # reports weigh 2 (all of study 0's images, twice), 0 and 1/3; study 0 hits R@5, study 2 not
    counts = np.array([[2, 2, 0, 1, 0, 0]])
    assert preds.resampled("t2i_r5")(counts)[0] == pytest.approx(2 / (2 + 1 / 3))
    assert preds.resampled("i2t_r1")(counts)[0] == pytest.approx(2 / 5)  # images 0, 0 hit
