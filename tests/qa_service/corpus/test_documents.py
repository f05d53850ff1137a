from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qa_service.corpus.documents import DocumentLoadError, load_corpus, load_document
from tests.pdfs import make_pdf


def test_txt_keeps_text_and_normalises_newlines() -> None:
    doc = load_document(b"\xef\xbb\xbfFirst line\r\nSecond line\r\n", ".txt", "a")
    assert doc.text == "First line\nSecond line\n"
    assert doc.page_at(3) is None


def test_markdown_title_from_first_heading() -> None:
    doc = load_document(b"Intro\n\n# The Title #\n\nBody text.", ".md", "m")
    assert doc.title == "The Title"
    assert "Body text." in doc.text


def test_html_keeps_only_visible_text() -> None:
    html = b"""<html><head><title>Page title</title><style>p {color: red}</style></head>
    <body><script>var secret = 1;</script><h1>Heading</h1><p>First   para.</p>
    <p>Second <b>bold</b> para.</p><noscript>no js</noscript></body></html>"""
    doc = load_document(html, ".html", "h")
    assert doc.title == "Page title"
    assert doc.text == "Heading\n\nFirst para.\n\nSecond bold para."


def test_pdf_pages_are_kept_for_citations() -> None:
    doc = load_document(make_pdf(["Alpha page one.", "Beta page two."]), ".pdf", "p")
    assert "Alpha page one." in doc.text and "Beta page two." in doc.text
    assert doc.page_at(doc.text.index("Alpha")) == 1
    assert doc.page_at(doc.text.index("Beta")) == 2


@pytest.mark.parametrize(
    ("data", "suffix", "reason"),
    [
        (b"", ".txt", "empty file"),
        (b"   \n\t ", ".txt", "no text"),
        (b"abc\x00def", ".txt", "binary"),
        (b"caf\xe9", ".txt", "UTF-8"),
        (b"%PDF-1.4 this is not a pdf", ".pdf", "PDF"),
        (b"<html><script>only()</script></html>", ".html", "no text"),
        (b"data", ".docx", "unsupported file type"),
    ],
)
def test_unreadable_files_raise_a_reason(data: bytes, suffix: str, reason: str) -> None:
    with pytest.raises(DocumentLoadError, match=reason):
        load_document(data, suffix, "x")


def test_corpus_skips_bad_files_and_indexes_the_rest(tmp_path: Path) -> None:
    (tmp_path / "good.md").write_text("A good document.")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "nested.md").write_text("# Nested\nText.")
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (tmp_path / "good.txt").write_text("Same id as good.md: skipped, the first name wins")
    (tmp_path / ".hidden.txt").write_text("never indexed")
    (tmp_path / "metadata.json").write_text(
        json.dumps({"good": {"title": "Good", "publisher": "Someone", "source": "https://x"}})
    )
    loaded = load_corpus(tmp_path)
    assert {d.id for d in loaded.documents} == {"good", "sub/nested"}
    good = next(d for d in loaded.documents if d.id == "good")
    assert (good.title, good.source, good.metadata) == (
        "Good",
        "https://x",
        {"publisher": "Someone"},
    )
    skipped = {p.path.name: p.reason for p in loaded.skipped}
    assert set(skipped) == {"empty.txt", "image.png", "good.txt"}
    assert "already taken" in skipped["good.txt"]


def test_default_corpus_has_titles_and_stable_ids() -> None:
    root = Path(__file__).resolve().parents[3] / "corpus"
    loaded = load_corpus(root)
    assert not loaded.skipped
    assert [d.id for d in loaded.documents] == [
        "000_8fe30e30b1d64544",
        "001_679cc4caf4b8cd25",
        "002_1e161a6a470d0d70",
        "003_ae384882abc649e5",
        "004_7e10ae9df193b495",
    ]
    assert all(d.title for d in loaded.documents)


@given(st.binary(max_size=300), st.sampled_from([".txt", ".md", ".html", ".pdf"]))
def test_loaders_never_fail_with_anything_but_a_load_error(data: bytes, suffix: str) -> None:
    try:
        doc = load_document(data, suffix, "fuzz")
    except DocumentLoadError:
        return
    assert doc.text.strip()


def test_a_json_document_with_half_a_surrogate_pair_is_refused() -> None:
    """`"\\ud800"` parses, but no model, file or response can encode it."""
    data = b'{"text": "Rivers flow. \\ud800 Seas are deep.", "title": "T"}'
    with pytest.raises(DocumentLoadError, match="unpaired UTF-16 surrogate"):
        load_document(data, ".json", "bad")
