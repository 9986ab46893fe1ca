"""Report sections and MGCA's text cleaning on hand-made reports (expected strings by hand)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures_formats import REPORT_FULL, REPORT_NO_SECTIONS, TEXT_FULL

from cxrbench.data.reports import (
    clean_report,
    clean_sentences,
    extract_sections,
    read_report,
    report_sentences,
    report_text,
)
from cxrbench.errors import DataFormatError


def test_sections_of_a_typical_report() -> None:
    sections = extract_sections(REPORT_FULL)
    assert sections == {
        "preamble": "FINAL REPORT",
        "examination": "CHEST (PA AND LAT)",
        "indication": "___F with cough",
        "findings": "The lungs are clear. There is no pleural effusion or pneumothorax. "
        "Heart size is normal.",
        "impression": "No acute cardiopulmonary process.",
    }


def test_multi_word_headers_synonyms_and_repeats() -> None:
    text = (
        "WET READ: ___ ___ 10:07 AM\n  Left lower lobe opacity.\n"
        "FINDINGS AND IMPRESSION: Small effusion.\n"
        "COMPARISON:  None.\n"
        "IMPRESSIONS: Also atelectasis.\n"
        "NOTIFICATION: Discussed with Dr. ___.\n"
    )
    sections = extract_sections(text)
    assert sections["wet read"] == "___ ___ 10:07 AM Left lower lobe opacity."
    assert sections["impression"] == "Small effusion. Also atelectasis."
    assert sections["comparison"] == "None."
    assert sections["notification"] == "Discussed with Dr. ___."
    assert "preamble" not in sections and "last_paragraph" not in sections


def test_lowercase_or_mid_line_colons_are_not_headers() -> None:
    text = "FINDINGS: NG tube: in place. Heart size: normal.\nLines: unchanged."
    assert extract_sections(text) == {
        "findings": "NG tube: in place. Heart size: normal. Lines: unchanged."
    }


def test_last_paragraph_fallback_only_without_findings_or_impression() -> None:
    sections = extract_sections(REPORT_NO_SECTIONS)
    assert sections["last_paragraph"] == "Heart size is normal and the lungs are clear."
    assert sections["indication"] == "Cough. Heart size is normal and the lungs are clear."
    assert "last_paragraph" not in extract_sections(REPORT_FULL)
    assert extract_sections("No headers at all.\n\nSecond paragraph.") == {
        "last_paragraph": "Second paragraph."
    }


def test_clean_report_full_report() -> None:
    assert report_text(REPORT_FULL) == TEXT_FULL


@pytest.mark.parametrize(
    ("impression", "findings", "expected"),
    [
        # impression first, numbered items split, "1.5" splits at "1." as in MGCA
        (
            "1. No pneumonia.\n2. Small left effusion, 1.5 cm.",
            "",
            "no pneumonia small left effusion 5 cm",
        ),
        ("No acute process.", "Lungs are clear.", "no acute process lungs are clear"),
        # single-token sentences are dropped; nothing left -> ""
        ("Normal.", "Unchanged. Stable.", ""),
        # fewer than 3 tokens in total -> ""
        ("No change.", "", ""),
        ("No change.", None, ""),
        # non-ASCII characters are stripped from tokens; symbols are not tokens
        ("Lungs café clear.", "Size ≥ 5 cm.", "lungs caf clear size 5 cm"),
        # a token left empty by the ASCII filter does not count ("é"), so 2 tokens -> ""
        ("Résumé é normal.", "", ""),
        # the anonymisation mark ___ is a \w+ token, as in MGCA
        ("Patient ___ is stable.", "", "patient ___ is stable"),
        # a one-token sentence is dropped, the rest kept; newline becomes a space
        ("Stable.\nNo\nfocal consolidation.", "", "no focal consolidation"),
    ],
)
def test_clean_report_by_hand(impression: str, findings: str | None, expected: str) -> None:
    assert clean_report(impression, findings) == expected


def test_sentences_are_the_cleaned_report_split() -> None:
    """GLoRIA samples one sentence; the sentences joined are exactly MGCA's cleaned text."""
    assert report_sentences(REPORT_FULL) and " ".join(report_sentences(REPORT_FULL)) == TEXT_FULL
    assert clean_sentences("No effusion. 2. Heart size normal.", "Lungs clear.") == [
        "no effusion",
        "heart size normal",
        "lungs clear",
    ]
    assert clean_sentences("Clear.", None) == []  # under 3 tokens: nothing, like clean_report


def test_read_report_utf8(tmp_path: Path) -> None:
    path = tmp_path / "s1.txt"
    path.write_bytes("FINDINGS: Normal café.\n".encode())
    assert read_report(path) == "FINDINGS: Normal café.\n"


def test_undecodable_report_names_file_and_line_but_no_text(tmp_path: Path) -> None:
    path = tmp_path / "s2.txt"
    path.write_bytes(b"FINDINGS: SECRETWORD one.\nIMPRESSION: \xff\xfe SECRETWORD two.\n")
    with pytest.raises(DataFormatError, match="UTF-8") as info:
        read_report(path)
    assert info.value.path == path and info.value.line == 2
    assert "SECRETWORD" not in str(info.value)


def test_missing_report(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="no such file") as info:
        read_report(tmp_path / "absent.txt")
    assert info.value.path == tmp_path / "absent.txt"
