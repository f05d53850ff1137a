"""Loaders take arbitrary bytes from users: they return a document or say why not, nothing else."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qa_service.corpus.documents import LOADERS, DocumentLoadError, load_document
from tests.pdfs import make_pdf

SUFFIXES = sorted(LOADERS)
MARKUP = st.sampled_from(["<", ">", "</p>", "<script>", "<!--", "-->", "&amp;", "&#x", "#",
                          "*", "[", "](", "```", "\n", "\r\n", " ", "\t", "\u00a0",
                          "\u2028"])  # fmt: skip
TEXTISH = st.lists(st.one_of(MARKUP, st.text(max_size=20)), max_size=40).map("".join)


def _load(data: bytes, suffix: str) -> None:
    try:
        document = load_document(data, suffix, "doc")
    except DocumentLoadError as exc:
        assert str(exc)  # a reason the user can read
        return
    assert document.text.strip()
    assert list(document.page_starts) == sorted(document.page_starts)
    assert all(0 <= start <= len(document.text) for start in document.page_starts)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=2000), suffix=st.sampled_from(SUFFIXES))
def test_any_bytes_load_or_fail_with_a_reason(data: bytes, suffix: str) -> None:
    _load(data, suffix)


@settings(max_examples=150, deadline=None)
@given(text=TEXTISH, suffix=st.sampled_from(SUFFIXES))
def test_any_text_loads_or_fails_with_a_reason(text: str, suffix: str) -> None:
    _load(text.encode("utf-8", "surrogatepass"), suffix)


@settings(max_examples=40, deadline=None)
@given(pages=st.lists(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126),
                              max_size=80), min_size=1, max_size=4),
       cut=st.integers(min_value=0, max_value=400))  # fmt: skip
def test_damaged_pdfs_load_or_fail_with_a_reason(pages: list[str], cut: int) -> None:
    pdf = make_pdf(pages)
    _load(pdf, ".pdf")
    _load(pdf[: len(pdf) - cut], ".pdf")


@pytest.mark.parametrize("suffix", ["", ".exe", ".docx"])
def test_unsupported_types_say_which_are_supported(suffix: str) -> None:
    with pytest.raises(DocumentLoadError, match=r"supported: \.txt"):
        load_document(b"hello", suffix, "doc")
