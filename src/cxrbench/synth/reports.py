"""MIMIC-style report text from the findings, and a CheXpert-style labeler that reads it back.

Reports come from a small grammar: synonyms, sentence order variation, explicit negations of some
absent findings, hedges ("possible", "cannot exclude") for uncertain findings, laterality, lobe and
severity words, comparisons with a prior, and a few percent of realistic noise (a finding left
unmentioned, a missing FINDINGS section). CheXpert-style labels are derived from this text by
:func:`label_report`, as the real CheXpert labeler does — never copied from the generator's truth.
"""

from __future__ import annotations

import re

import numpy as np

from cxrbench.data.formats.chexpert import OBSERVATIONS

from .findings import Finding

SEVERITY = ((0.75, ("small", "mild", "minimal")), (1.05, ("moderate",)), (9, ("large", "severe")))
SIDE = {"right": "right", "left": "left", "bilateral": "bilateral"}
HEDGES = (
    "Possible {}.",
    "{} cannot be excluded.",
    "Questionable {}.",
    "Findings may represent {}.",
)
POSITIVE = {
    "cardiomegaly": ("{sev} cardiomegaly.", "The heart is {sevly} enlarged.",
                     "Enlarged cardiac silhouette, {sev}."),
    "effusion": ("{sev} {side} pleural effusion.", "There is a {sev} {side} pleural effusion.",
                 "{Side} pleural effusion, {sev}, with blunting of the costophrenic angle."),
    "consolidation": ("{Side} {lobe} lobe consolidation.", "Focal consolidation in the {side} "
                      "{lobe} lobe, concerning for pneumonia.",
                      "{sev} airspace consolidation at the {side} {lobe} lobe, pneumonia."),
    "edema": ("{sev} pulmonary edema.", "Perihilar haziness consistent with {sev} edema.",
              "Interstitial edema, {sev}."),
    "atelectasis": ("{sev} {side} basilar atelectasis.",
                    "Plate-like atelectasis at the {side} base.", "{Side} lower lobe atelectasis."),
    "nodule": ("{sev} nodule in the {side} {lobe} lobe.", "A {side} {lobe} lobe pulmonary nodule."),
    "mass": ("{side} {lobe} lobe mass.", "There is a mass in the {side} {lobe} lobe."),
    "pneumothorax": ("{sev} {side} pneumothorax.", "There is a {sev} {side} apical pneumothorax.",
                     "{Side} pneumothorax with visible pleural line, {sev}."),
    "support": ("Endotracheal tube and enteric tube in standard position.",
                "Right internal jugular central line terminates in the SVC.",
                "Nasogastric tube courses below the diaphragm."),
    "covid": ("Bilateral peripheral ground glass opacities, {sev}.",
              "Multifocal peripheral opacities in both lower lungs, concerning for viral "
              "pneumonia."),
}  # fmt: skip
NEGATIVE = {
    "cardiomegaly": ("Heart size is normal.", "The cardiomediastinal silhouette is normal."),
    "effusion": ("No pleural effusion.", "No pleural effusions.", "There is no effusion."),
    "consolidation": ("No focal consolidation.", "No consolidation to suggest pneumonia."),
    "edema": ("No pulmonary edema.", "No evidence of edema."),
    "pneumothorax": ("No pneumothorax.", "There is no pneumothorax."),
    "atelectasis": ("No atelectasis.",),
}
HEDGE_NOUNS = {
    "cardiomegaly": "mild cardiomegaly",
    "effusion": "a small {side} pleural effusion",
    "consolidation": "{side} {lobe} lobe consolidation",
    "edema": "mild pulmonary edema",
    "atelectasis": "{side} basilar atelectasis",
    "nodule": "a {side} {lobe} lobe nodule",
    "pneumothorax": "a tiny {side} pneumothorax",
}
INDICATIONS = ("Cough.", "Fever.", "Shortness of breath.", "___ with chest pain.")
COMPARISONS = (
    "Unchanged from prior.",
    "New since the prior study.",
    "Compared to prior, improved.",
)


def _severity_word(severity: float, rng: np.random.Generator) -> str:
    for limit, words in SEVERITY:
        if severity < limit:
            return str(rng.choice(words))
    return "moderate"


def _sentence(f: Finding, rng: np.random.Generator) -> str:
    sev = _severity_word(f.severity, rng)
    text = str(rng.choice(POSITIVE[f.kind])).format(
        sev=sev,
        sevly={"small": "mildly", "minimal": "mildly", "severe": "markedly"}.get(sev, sev + "ly"),
        side=SIDE[f.side],
        Side=SIDE[f.side].capitalize(),
        lobe=f.lobe,
    )
    if f.hedged and f.kind in HEDGE_NOUNS:
        noun = HEDGE_NOUNS[f.kind].format(side=SIDE[f.side], lobe=f.lobe)
        text = str(rng.choice(HEDGES)).format(noun)
    return text[0].upper() + text[1:]


def write_report(
    findings: tuple[Finding, ...], rng: np.random.Generator, noise: float = 0.03
) -> str:
    """A MIMIC-CXR-style free-text report for ``findings``."""
    present = [f for f in findings if f.kind in POSITIVE]
    if present and rng.random() < noise:  # a finding the radiologist did not mention
        present.pop(int(rng.integers(len(present))))
    sentences = [_sentence(f, rng) for f in present]
    absent = [k for k in NEGATIVE if k not in {f.kind for f in findings}]
    for kind in rng.permutation(absent)[: int(rng.integers(1, len(absent) + 1))] if absent else []:
        sentences.append(str(rng.choice(NEGATIVE[str(kind)])))
    order = rng.permutation(len(sentences))
    body = " ".join(sentences[i] for i in order) or "The lungs are clear."
    impression = (
        " ".join(s for s in sentences[: max(1, len(present))] if s)
        if present
        else str(
            rng.choice(("No acute cardiopulmonary process.", "No acute intrathoracic abnormality."))
        )
    )
    if rng.random() < 0.3:
        impression += " " + str(rng.choice(COMPARISONS))
    parts = ["                                 FINAL REPORT",
             " EXAMINATION:  CHEST (PA AND LAT)", "",
             f" INDICATION:  {rng.choice(INDICATIONS)}",
             "", " COMPARISON:  " + str(rng.choice(["None.", "___"])), ""]  # fmt: skip
    if rng.random() >= noise:  # a few reports have no FINDINGS section
        parts += [" FINDINGS:", "", " " + body, ""]
    parts += [" IMPRESSION:", "", " " + impression, ""]
    return "\n".join(parts)


MENTIONS = {
    "Cardiomegaly": r"cardiomegaly|heart is \w+ enlarged|enlarged cardiac silhouette",
    "Pleural Effusion": r"effusion",
    "Consolidation": r"consolidation",
    "Pneumonia": r"pneumonia",
    "Edema": r"edema",
    "Atelectasis": r"atelectasis",
    "Pneumothorax": r"pneumothorax",
    "Lung Lesion": r"nodule|\bmass\b",
    "Lung Opacity": r"opacit|haziness",
    "Support Devices": r"\btube\b|central line|catheter",
}
NORMAL_PHRASES = {
    "Cardiomegaly": r"heart size is normal|cardiomediastinal silhouette is normal",
    "Enlarged Cardiomediastinum": r"cardiomediastinal silhouette is normal",
}
NEGATION = re.compile(r"^(no|there is no|without|no evidence of)\b")
HEDGE = re.compile(r"possible|cannot be excluded|questionable|may represent")
HEDGE_BEFORE = re.compile(r"concerning for")  # uncertain only for what follows it
PATHOLOGIES = tuple(o for o in OBSERVATIONS if o not in ("No Finding", "Support Devices"))


def _sentence_labels(sentence: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, pattern in NORMAL_PHRASES.items():
        if re.search(pattern, sentence):
            out[name] = 0.0
    negated = bool(NEGATION.match(sentence))
    hedged = HEDGE.search(sentence) is not None
    before = HEDGE_BEFORE.search(sentence)
    for name, pattern in MENTIONS.items():
        match = re.search(pattern, sentence)
        if match is None:
            continue
        if negated:
            out[name] = 0.0
        elif hedged or (before is not None and before.start() < match.start()):
            out[name] = -1.0
        else:
            out[name] = 1.0
    return out


def label_report(text: str) -> dict[str, float | None]:
    """CheXpert-style labels (1 / 0 / -1 / None) read from the FINDINGS and IMPRESSION text."""
    body = text.split("FINDINGS:", 1)[-1] if "FINDINGS:" in text else text.split("IMPRESSION:")[-1]
    labels: dict[str, float | None] = dict.fromkeys(OBSERVATIONS)
    rank = {1.0: 3, -1.0: 2, 0.0: 1}
    for sentence in re.split(r"\.\s*", body.lower()):
        for name, value in _sentence_labels(sentence.strip()).items():
            current = labels[name]
            if current is None or rank[value] > rank[current]:
                labels[name] = value
    if not any(labels[p] in (1.0, -1.0) for p in PATHOLOGIES):
        labels["No Finding"] = 1.0
    return labels
