r"""MIMIC-CXR free-text reports: reading, section extraction and MGCA's text cleaning.

Official format (MIMIC-CXR 2.0.0 ``files/p1X/pSUBJECT/sSTUDY.txt``): plain text, one report per
study, typically a ``FINAL REPORT`` line followed by sections whose headers are upper-case words
ending in a colon at the start of a line (``EXAMINATION:``, ``INDICATION:``, ``TECHNIQUE:``,
``COMPARISON:``, ``FINDINGS:``, ``IMPRESSION:``, multi-word ones such as ``WET READ:``); the section
text may start on the header's line or on the next ones.

:func:`extract_sections` follows the idea of MIT-LCP's ``section_parser`` (the code MGCA's
preprocessing copies), written anew:

* a header is an upper-case run of letters, spaces and ``()/&,-`` (at least two characters) at the
  start of a line, followed by ``:``; the key is the header lower-cased with whitespace collapsed;
* a few synonyms are folded: ``impressions``, ``conclusion(s)`` and ``findings and impression`` /
  ``impression and findings`` become ``impression``; ``finding`` becomes ``findings``;
* text before the first header is kept as ``preamble`` (when non-empty); a header seen twice has its
  texts joined with a space; every section's text is whitespace-normalised (runs of whitespace,
  newlines included, become one space);
* when there is neither ``findings`` nor ``impression``, the last paragraph of the report (the text
  after the last blank line) is returned as ``last_paragraph`` (MIT-LCP's fallback). It is *not*
  used for MGCA's pre-training text, which drops such studies.

:func:`clean_report` implements MGCA's caption cleaning (``pretrain_dataset.py``): the text is
``impression + " " + findings``; newlines become spaces; it is split on ``[0-9]+\.`` and then on
``.``; per piece, lower-case and keep ``\w+`` tokens; drop a piece with at most one token (counted
before the ASCII filter, as MGCA does); strip non-ASCII characters from each token and drop tokens
left empty; a report with fewer than 3 tokens in total is empty (``""``). Sentences are joined with
single spaces and **no sentence separator is kept**, exactly like MGCA's ``" ".join`` of its
sentence list.

Report text is patient data: nothing here logs it or puts it into an error message.
"""

from __future__ import annotations

import re
from pathlib import Path

from cxrbench.errors import DataFormatError

_HEADER = re.compile(r"^[ \t]*([A-Z][A-Z ()/&,-]*[A-Z)])[ \t]*:", re.MULTILINE)
_NUMBERED = re.compile(r"[0-9]+\.")
_TOKEN = re.compile(r"\w+")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_SYNONYMS = {
    "impressions": "impression",
    "conclusion": "impression",
    "conclusions": "impression",
    "findings and impression": "impression",
    "impression and findings": "impression",
    "finding": "findings",
}
MIN_SENTENCE_TOKENS = 2
MIN_REPORT_TOKENS = 3


def _normalise(text: str) -> str:
    return " ".join(text.split())


def extract_sections(text: str) -> dict[str, str]:
    """Split a MIMIC-CXR report into ``{section name (lower case): normalised text}``.

    See the module docstring for the header rule, synonyms, ``preamble`` and ``last_paragraph``.
    """
    sections: dict[str, str] = {}
    matches = list(_HEADER.finditer(text))
    preamble = _normalise(text[: matches[0].start()] if matches else text)
    if preamble and matches:
        sections["preamble"] = preamble
    for number, match in enumerate(matches):
        end = matches[number + 1].start() if number + 1 < len(matches) else len(text)
        name = _normalise(match.group(1)).lower()
        name = _SYNONYMS.get(name, name)
        body = _normalise(text[match.end() : end])
        sections[name] = f"{sections[name]} {body}".strip() if name in sections else body
    if not sections.get("findings") and not sections.get("impression"):
        paragraphs = [p for p in _PARAGRAPH_BREAK.split(text) if p.strip()]
        if paragraphs:
            sections["last_paragraph"] = _normalise(paragraphs[-1])
    return sections


def _sentence_tokens(sentence: str) -> list[str] | None:
    """Tokens MGCA keeps from one sentence, or ``None`` when the sentence is dropped."""
    tokens = _TOKEN.findall(sentence.lower())
    if len(tokens) < MIN_SENTENCE_TOKENS:
        return None
    kept = [t.encode("ascii", "ignore").decode("ascii") for t in tokens]
    return [t for t in kept if t]


def clean_sentences(impression: str | None, findings: str | None) -> list[str]:
    """MGCA's cleaned sentences of one study, in order (``[]`` when fewer than 3 tokens remain).

    :func:`clean_report` is these joined with single spaces; methods that sample a sentence
    (GLoRIA) or align per sentence use the list.
    """
    caption = f"{impression or ''} {findings or ''}".replace("\n", " ")
    sentences: list[str] = []
    total = 0
    for point in _NUMBERED.split(caption):
        for piece in point.split("."):
            tokens = _sentence_tokens(piece)
            if tokens:
                sentences.append(" ".join(tokens))
                total += len(tokens)
    return sentences if total >= MIN_REPORT_TOKENS else []


def clean_report(impression: str | None, findings: str | None) -> str:
    """MGCA's cleaned pre-training text for one study (``""`` when fewer than 3 tokens remain)."""
    return " ".join(clean_sentences(impression, findings))


def report_sentences(text: str) -> list[str]:
    """MGCA's cleaned sentences of a report (:func:`clean_sentences` of impression, findings)."""
    sections = extract_sections(text)
    return clean_sentences(sections.get("impression", ""), sections.get("findings", ""))


def clean_sections(text: str) -> tuple[str, str]:
    """A report's cleaned findings and its cleaned impression, each alone (``""`` for a
    section it lacks): what section matching pairs."""
    sections = extract_sections(text)
    return (clean_report(None, sections.get("findings", "")),
            clean_report(sections.get("impression", ""), None))  # fmt: skip


def report_text(text: str) -> str:
    """MGCA's cleaned text of a report: :func:`clean_report` of its impression and findings."""
    return " ".join(report_sentences(text))


def read_report(path: str | Path) -> str:
    """Read a report file as UTF-8; a missing or undecodable file is a :class:`DataFormatError`."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise DataFormatError(p, "a report text file", "no such file") from None
    except OSError as err:
        raise DataFormatError(p, "a readable report text file", type(err).__name__) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataFormatError(
            p, "UTF-8 text", f"an undecodable byte at offset {err.start}", line
        ) from None
