"""Text encoders (local HF folders, word merging, freezing) and the corpus-trained small BERT."""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
from collections import Counter
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest
import safetensors.torch
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, BertTokenizerFast

from cxrbench.errors import CxrbenchError
from cxrbench.models import text_pretrain
from cxrbench.models.text import TextEncoder, check_model_dir
from cxrbench.models.text_corpus import corpus_texts, pretrain_text
from cxrbench.models.text_pretrain import train_text_model
from cxrbench.models.wordpiece import learn_wordpiece_vocab

FINDINGS = (
    "no pneumothorax",
    "small left pleural effusion",
    "moderate right pleural effusion",
    "heart size is normal",
    "mild cardiomegaly",
    "right lower lobe consolidation",
    "no acute cardiopulmonary process",
    "lungs are clear",
    "stable mediastinal contours",
    "bibasilar atelectasis",
    "mild pulmonary edema",
    "no focal consolidation",
)
TINY = {"vocab_size": 1000, "layers": 2, "hidden": 64, "heads": 2, "intermediate": 256}
TRAIN = {**TINY, "epochs": 8, "batch_size": 16, "lr": 2e-3, "progress": False}
VOCAB = (
    *("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
    *("no", "pneumo", "##thorax", "small", "left", "pleur", "##al", "effusion", "is", "seen", "."),
)


def report_corpus(n: int = 200, seed: int = 0) -> list[str]:
    """Report-like texts: three findings each, shuffled."""
    rng = random.Random(seed)
    return [" ".join(rng.sample(FINDINGS, 3)) for _ in range(n)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("bert") / "model"
    return out, train_text_model(report_corpus(), out, seed=0, **TRAIN)


def write_hand_model(folder: Path, layers: int = 5) -> Path:
    """A random BERT whose hand-made vocabulary splits 'pneumothorax' and 'pleural'."""
    backend = Tokenizer(models.WordPiece({t: i for i, t in enumerate(VOCAB)}, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    BertTokenizerFast(tokenizer_object=backend).save_pretrained(str(folder))
    config = BertConfig(
        vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def hand_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_hand_model(tmp_path_factory.mktemp("hand"))


# ------------------------------------------------------------------------------ training


def test_training_lowers_heldout_loss_and_summary_holds_no_text(trained: tuple[Path, dict]):
    out, summary = trained
    before, after = summary["heldout_before"], summary["heldout_after"]
    assert summary["num_heldout"] == 10 and summary["num_train"] == 190
    assert before["masked_tokens"] >= 200
    assert after["loss"] < before["loss"] - 1.0
    assert after["accuracy"] > before["accuracy"] + 0.1
    stored = (out / "training_summary.json").read_text()
    assert json.loads(stored) == summary
    assert not any(finding in stored for finding in FINDINGS)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folders


def test_saved_folder_loads_with_auto_classes_and_text_encoder(trained: tuple[Path, dict]):
    out, summary = trained
    model = AutoModel.from_pretrained(str(out), local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    assert len(tokenizer) == summary["vocab_size"] and tokenizer.mask_token == "[MASK]"
    encoder = TextEncoder.from_pretrained(out).eval()
    batch = encoder.tokenize(["No pneumothorax.", "mild cardiomegaly"])
    assert batch["input_ids"].shape == (2, 112)
    reference = tokenizer(["No pneumothorax.", "mild cardiomegaly"], padding="max_length",
                          max_length=112, return_tensors="pt")  # fmt: skip
    assert torch.equal(batch["input_ids"], reference["input_ids"])
    with torch.no_grad():
        expected = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        features = encoder(**batch)
    torch.testing.assert_close(features.tokens, expected.last_hidden_state)
    assert encoder.hidden_size == 64 and features.cls.shape == (2, 64)


def test_same_seed_gives_bit_identical_weights(trained: tuple[Path, dict], tmp_path: Path):
    out, _ = trained
    again = tmp_path / "again"
    train_text_model(report_corpus(), again, seed=0, **TRAIN)
    first = safetensors.torch.load_file(str(out / "model.safetensors"))
    second = safetensors.torch.load_file(str(again / "model.safetensors"))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert (out / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()


def test_interrupted_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def fail(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(text_pretrain, "_encoder_state", fail)
    with pytest.raises(KeyboardInterrupt):
        train_text_model(report_corpus(20), tmp_path / "model", **{**TRAIN, "epochs": 1})
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_replace_a_foreign_folder(tmp_path: Path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(CxrbenchError, match="not a cxrbench text model"):
        train_text_model(report_corpus(20), tmp_path, **TRAIN)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_wordpiece_merges_follow_a_hand_computed_order():
    words = Counter({"low": 5, "lower": 2, "newest": 6, "widest": 3})
    vocab = learn_wordpiece_vocab(words, 10_000)
    base = len(vocab) - 12
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert {"a", "##a", "~", "##~"} <= set(vocab[5:base])
    # counts 9 (##e ##s tie-broken before ##s ##t), 9, 7, 7, 6, 6, 6, 3, 3, 3, 2, 2
    assert vocab[base:] == ["##es", "##est", "##ow", "low", "##ew", "##ewest", "newest",
                            "##dest", "##idest", "widest", "##er", "lower"]  # fmt: skip
    assert learn_wordpiece_vocab(words, base + 3)[base:] == ["##es", "##est", "##ow"]


# ------------------------------------------------------------------------- corpus / presets

STUDIES = [(f"5{i:07d}", "train" if i < 30 else "test", FINDINGS[i % 12]) for i in range(34)]


def write_corpus(root: Path) -> Path:
    """A MIMIC-CXR-JPG folder: a PA image per study, one more AP image, a lateral-only study."""
    folder = root / "mimic-cxr-jpg"
    split, meta = ["dicom_id,study_id,subject_id,split"], ["dicom_id,ViewPosition"]
    rows = [(f"d{s}", s, part, "PA") for s, part, _ in STUDIES]
    rows += [
        (f"e{STUDIES[0][0]}", STUDIES[0][0], "train", "AP"),
        ("lat", "59999999", "train", "LL"),
    ]
    for dicom, study, part, view in rows:
        split.append(f"{dicom},{study},10000001,{part}")
        meta.append(f"{dicom},{view}")
    for study, _, finding in [*STUDIES, ("59999999", "", "lateral only study")]:
        report = f" FINAL REPORT\n FINDINGS: {finding} today.\n IMPRESSION: {study} unchanged.\n"
        path = folder / "files" / "p10" / "p10000001" / f"s{study}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(report)
    for name, lines in (("split", split), ("metadata", meta)):
        with gzip.open(folder / f"mimic-cxr-2.0.0-{name}.csv.gz", "wt") as handle:
            handle.write("\n".join(lines) + "\n")
    return folder


def test_corpus_texts_are_train_frontal_one_per_study(tmp_path: Path):
    folder = write_corpus(tmp_path)
    texts = corpus_texts(folder)
    assert texts == [f"{study} unchanged {finding} today" for study, part, finding in STUDIES
                     if part == "train"]  # fmt: skip


def test_pretrain_text_reuses_a_complete_model(tmp_path: Path):
    folder = write_corpus(tmp_path)
    first = pretrain_text(tmp_path, preset="tiny", progress=False)
    out = folder / "cxrbench-text-bert-tiny"
    assert first["path"] == str(out) and not first["reused"] and first["num_train"] == 28
    assert TextEncoder.from_pretrained(out).num_layers == 2
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    again = pretrain_text(folder, preset="tiny", progress=False)
    assert again["reused"] and (out / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(CxrbenchError, match="other settings"):
        pretrain_text(folder, preset="tiny", seed=1, progress=False)
    forced = pretrain_text(folder, preset="tiny", seed=1, progress=False, force=True)
    assert not forced["reused"] and forced["settings"]["seed"] == 1
    with pytest.raises(CxrbenchError, match="unknown text preset"):
        pretrain_text(folder, preset="huge")


# ------------------------------------------------------------------------------ word merging


def test_words_are_sums_of_their_subword_features(hand_dir: Path):
    encoder = TextEncoder.from_pretrained(hand_dir, max_length=12).eval()
    texts = ["No pneumothorax", "small left pleural effusion is seen."]
    batch = encoder.tokenize(texts)
    pieces = encoder.tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    assert pieces[:5] == ["[CLS]", "no", "pneumo", "##thorax", "[SEP]"]
    with torch.no_grad():
        feats = encoder(**batch)
        tokens = encoder.model(**{k: batch[k] for k in ("input_ids", "attention_mask")})
    tokens = tokens.last_hidden_state
    # text 0: no | pneumo ##thorax ; text 1: small | left | pleur ##al | effusion | is | seen | .
    groups = [[[1], [2, 3]], [[1], [2], [3, 4], [5], [6], [7], [8]]]
    assert feats.word_mask.sum(dim=1).tolist() == [2, 7] and feats.words.shape[1] == 7
    for row, words in enumerate(groups):
        for w, positions in enumerate(words):
            torch.testing.assert_close(feats.words[row, w], tokens[row, positions].sum(dim=0))
        assert feats.words[row, len(words) :].abs().sum() == 0
    assert feats.word_ids[0].tolist() == [-1, 0, 1, 1, -1] + [-1] * 7


def test_word_index_from_ids_matches_the_tokenizer_and_mean_reduction(hand_dir: Path):
    encoder = TextEncoder.from_pretrained(hand_dir, max_length=12, word_reduce="mean").eval()
    batch = encoder.tokenize(["small left pleural effusion", "no pneumothorax is seen"])
    with torch.no_grad():
        given = encoder(**batch)
        derived = encoder(batch["input_ids"], batch["attention_mask"])
    assert torch.equal(given.word_ids, derived.word_ids)
    torch.testing.assert_close(given.words, derived.words)
    torch.testing.assert_close(given.words[0, 2], given.tokens[0, 3:5].mean(dim=0))


# ---------------------------------------------------------------------- layers and attention


def test_last4_sum_equals_sum_of_last_four_hidden_states(hand_dir: Path):
    encoder = TextEncoder.from_pretrained(hand_dir, max_length=12, layers="last4_sum").eval()
    batch = encoder.tokenize(["no pneumothorax", "small left effusion"])
    with torch.no_grad():
        feats = encoder(**batch)
        out = encoder.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            output_hidden_states=True)  # fmt: skip
    assert len(out.hidden_states) == 6
    torch.testing.assert_close(feats.tokens, sum(out.hidden_states[-4:]))
    torch.testing.assert_close(feats.cls, sum(out.hidden_states[-4:])[:, 0])


def test_cls_attention_matches_eager_and_sums_to_one(hand_dir: Path):
    sdpa = TextEncoder.from_pretrained(hand_dir, max_length=12).eval()
    eager = TextEncoder.from_pretrained(hand_dir, max_length=12, attn_implementation="eager")
    batch = sdpa.tokenize(["no pneumothorax is seen", "small left pleural effusion"])
    with torch.no_grad():
        recomputed = sdpa(**batch, output_attentions=True)
        reference = eager.eval()(**batch, output_attentions=True)
    assert recomputed.cls_attention is not None and reference.cls_attention is not None
    torch.testing.assert_close(recomputed.cls_attention, reference.cls_attention)
    mask = batch["attention_mask"].bool()
    attention = recomputed.cls_attention
    torch.testing.assert_close(attention.sum(dim=1), torch.ones(2))
    assert attention[~mask].abs().max() == 0
    assert recomputed.word_cls_attention is not None
    torch.testing.assert_close(recomputed.word_cls_attention[0, 1], attention[0, 2:4].sum())


# ---------------------------------------------------------------------------------- freezing


def test_freeze_all_keeps_weights_and_eval_mode(hand_dir: Path):
    encoder = TextEncoder.from_pretrained(hand_dir, max_length=12, freeze="all")
    assert not any(p.requires_grad for p in encoder.parameters())
    parent = torch.nn.ModuleDict({"text": encoder, "head": torch.nn.Linear(16, 1)})
    parent.train()
    assert not encoder.training and not any(m.training for m in encoder.modules())
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    optimizer = torch.optim.AdamW(parent.parameters(), lr=0.1)
    batch = encoder.tokenize(["no pneumothorax", "small left effusion"])
    loss = parent["head"](encoder(**batch).cls).square().mean()
    loss.backward()
    optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert parent["head"].weight.grad is not None


def test_freeze_lower_layers(hand_dir: Path):
    encoder = TextEncoder.from_pretrained(hand_dir, max_length=12, freeze=2).train()
    assert encoder.training and encoder.frozen_layers == 2
    base = encoder.model
    batch = encoder.tokenize(["no pneumothorax", "small left effusion"])
    words = encoder(**batch).words
    weights = torch.randn(words.shape, generator=torch.Generator().manual_seed(0))
    (words * weights).sum().backward()
    assert not any(p.requires_grad for p in base.embeddings.parameters())
    for index, layer in enumerate(base.encoder.layer):
        grads = [p.grad for p in layer.parameters()]
        if index < 2:
            assert not any(p.requires_grad for p in layer.parameters())
            assert all(g is None for g in grads)
        else:
            assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_depth_keeps_the_first_layers_with_their_weights(hand_dir: Path):
    """MGCA's text model: the pre-trained BERT loaded with fewer layers (its bert_config.json)."""
    full = TextEncoder.from_pretrained(hand_dir, max_length=12)
    cut = TextEncoder.from_pretrained(hand_dir, max_length=12, depth=2)
    assert (full.num_layers, cut.num_layers) == (5, 2)
    whole, first = full.model.state_dict(), cut.model.state_dict()
    assert set(first) < set(whole) and not any(".layer.2." in k for k in first)
    assert all(torch.equal(first[k], whole[k]) for k in first)
    batch = full.tokenize(["no pneumothorax"])
    hidden = full.model(**batch, output_hidden_states=True).hidden_states[2]
    torch.testing.assert_close(cut.model(**batch).last_hidden_state, hidden)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"freeze": 9}, "freeze"), ({"freeze": "some"}, "freeze"), ({"layers": "all"}, "layers"),
     ({"max_length": 64}, "max_position_embeddings"), ({"depth": 6}, "depth"),
     ({"depth": 0}, "depth")],
)  # fmt: skip
def test_bad_options_are_errors(hand_dir: Path, options: dict, message: str):
    with pytest.raises(CxrbenchError, match=message):
        TextEncoder.from_pretrained(hand_dir, **{"max_length": 12, **options})


# ------------------------------------------------------------------------------ bad folders


@pytest.mark.parametrize(
    ("remove", "missing"),
    [(None, "does not exist"), ("config.json", "config.json"),
     ("model.safetensors", "weights"), ("tokenizer", "tokenizer files")],
)  # fmt: skip
def test_bad_model_folders_name_the_path_and_the_missing_piece(
    hand_dir: Path, tmp_path: Path, remove: str | None, missing: str
):
    folder = tmp_path / "model"
    if remove is not None:
        shutil.copytree(hand_dir, folder)
        for name in ("tokenizer.json", "vocab.txt") if remove == "tokenizer" else (remove,):
            (folder / name).unlink(missing_ok=True)
    with pytest.raises(CxrbenchError) as info:
        TextEncoder.from_pretrained(folder)
    message = str(info.value)
    assert str(folder) in message and missing in message
    assert "Bio_ClinicalBERT" in message and "cxrbench pretrain-text" in message


def test_check_model_dir_accepts_a_complete_folder(hand_dir: Path):
    assert check_model_dir(hand_dir) == hand_dir


# ------------------------------------------------------------------ section matching (issue 22)

IMPRESSION = {  # each finding's impression wording: shared words are few, the content is shared
    "no pneumothorax": "lungs expanded",
    "small left pleural effusion": "left effusion",
    "moderate right pleural effusion": "right effusion",
    "heart size is normal": "normal heart",
    "mild cardiomegaly": "enlarged heart",
    "right lower lobe consolidation": "pneumonia right base",
    "no acute cardiopulmonary process": "normal study",
    "lungs are clear": "clear lungs",
    "stable mediastinal contours": "stable mediastinum",
    "bibasilar atelectasis": "basal collapse",
    "mild pulmonary edema": "fluid overload",
    "no focal consolidation": "no pneumonia",
}


def sectioned_corpus(n: int = 240, seed: int = 0) -> tuple[list[str], list[tuple[str, str]]]:
    rng = random.Random(seed)
    texts, sections = [], []
    for k in range(n):
        chosen = rng.sample(FINDINGS, 2)
        findings = " ".join(chosen)
        impression = " ".join(IMPRESSION[c] for c in chosen) if k % 6 else ""  # some lack one
        texts.append(f"{impression} {findings}".strip())
        sections.append((findings, impression))
    return texts, sections


def test_section_matching_objective_is_recorded_and_aligns_sections(tmp_path: Path):
    from cxrbench.models.text_eval import cls_features, retrieval_r1

    texts, sections = sectioned_corpus()
    mlm = train_text_model(texts, tmp_path / "mlm", seed=0, **TRAIN)
    matched = train_text_model(texts, tmp_path / "sections", seed=0, objective="mlm+sections",
                               sections=sections, **TRAIN)  # fmt: skip
    assert "objective" not in mlm["settings"]  # MLM models keep the settings (and reuse) they had
    assert matched["settings"]["objective"] == "mlm+sections"
    assert len(matched["settings"]["sections_sha256"]) == 64
    probe_rng = random.Random(1)
    pairs = [probe_rng.sample(FINDINGS, 2) for _ in range(40)]
    findings = [" ".join(p) for p in pairs]
    impressions = [" ".join(IMPRESSION[c] for c in p) for p in pairs]
    r1 = {}
    for name in ("mlm", "sections"):
        encoder = TextEncoder.from_pretrained(tmp_path / name, freeze="all")
        r1[name] = retrieval_r1(cls_features(encoder, findings),
                                cls_features(encoder, impressions))["r1"]  # fmt: skip
    # measured here: R@1 0.025 (chance, 40 pairs) for MLM, 0.15 with section matching; this
    # 2-layer, 64-wide model's [CLS] stays collapsed either way (mean pairwise cosine 0.9995)
    assert r1["sections"] > r1["mlm"] + 0.05, r1
    with pytest.raises(CxrbenchError, match="needs \\(findings, impression\\) per text"):
        train_text_model(texts, tmp_path / "x", objective="mlm+sections", **TRAIN)
    with pytest.raises(CxrbenchError, match="unknown text objective"):
        train_text_model(texts, tmp_path / "y", objective="clip", **TRAIN)


def test_text_measurements_by_hand() -> None:
    import numpy as np

    from cxrbench.models.text_eval import collapse, label_probe, retrieval_r1

    same = torch.ones(4, 3)
    assert collapse(same) == pytest.approx({"mean_pairwise_cosine": 1.0, "mean_share": 1.0,
                                            "texts": 4})  # fmt: skip
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert collapse(opposite)["mean_pairwise_cosine"] == pytest.approx(-1.0)
    assert collapse(opposite)["mean_share"] == pytest.approx(0.0)
    f = torch.eye(3)
    assert retrieval_r1(f, f)["r1"] == 1.0 and retrieval_r1(f, f[[1, 2, 0]])["r1"] == 0.0
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 4, generator=gen)
    y = np.stack([(x[:, 0] > 0).numpy(), (torch.rand(200, generator=gen) > 0.5).numpy()], 1)
    probe = label_probe(x[:100], y[:100].astype(float), x[100:], y[100:].astype(float),
                        ["signal", "noise"])  # fmt: skip
    assert probe["observations"] == ["signal", "noise"]
    assert 0.7 < probe["macro_auroc"] < 0.8  # one observation ~1.0, the other ~0.5
    with pytest.raises(CxrbenchError, match="positives"):
        label_probe(x[:10], np.zeros((10, 1)), x[10:20], np.zeros((10, 1)), ["none"])


def test_knn_probe_sees_the_geometry_the_linear_probe_standardises_away() -> None:
    import numpy as np

    from cxrbench.models.text_eval import knn_probe, label_probe

    gen = torch.Generator().manual_seed(0)
    label = (torch.rand(400, generator=gen) > 0.5).float()
    noise = torch.randn(400, 8, generator=gen)
    # feature 0 is a common offset of 100 plus 0.05 × label; features 1-8 are noise of scale 1:
    # standardised, feature 0 separates the classes perfectly; by cosine every vector points
    # along the offset and the nearest neighbours are set by the noise (label-blind)
    signal = torch.cat([100.0 + 0.05 * label[:, None], noise], dim=1)
    y = label.numpy()[:, None].astype(float)
    linear = label_probe(signal[:200], y[:200], signal[200:], y[200:], ["x"])["macro_auroc"]
    knn = knn_probe(signal[:200], y[:200], signal[200:], y[200:], ["x"], k=10)["macro_auroc"]
    assert linear > 0.99 and knn < 0.7, (linear, knn)
    # an embedding whose direction carries the label: the k-NN probe reads it
    spread = torch.cat([label[:, None] * 2 - 1, noise[:, :3] * 0.3], dim=1)
    read = knn_probe(spread[:200], y[:200], spread[200:], y[200:], ["x"], k=10)
    assert read["macro_auroc"] > 0.99
    with pytest.raises(CxrbenchError, match="positives"):
        knn_probe(spread[:10], np.zeros((10, 1)), spread[10:20], np.zeros((10, 1)), ["none"])
