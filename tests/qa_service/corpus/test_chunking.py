from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from embeddings import Encoder
from qa_service.corpus.chunking import PassageSplitter, WholeDocumentSplitter, split_sentences
from qa_service.corpus.documents import Document


def _sentences(text: str) -> list[str]:
    return [text[a:b] for a, b in split_sentences(text)]


def test_sentences_split_on_terminal_punctuation_and_lines() -> None:
    text = "Title line\nFirst one. Second one? Third one!\n\n“Quoted.” Next."
    assert _sentences(text) == [
        "Title line",
        "First one.",
        "Second one?",
        "Third one!",
        "“Quoted.”",
        "Next.",
    ]


def test_abbreviations_and_initials_do_not_end_sentences() -> None:
    text = "Dr. Smith met Mr. J. Doe at 5 p.m. in the U.S. embassy. Then they left."
    assert _sentences(text) == [
        "Dr. Smith met Mr. J. Doe at 5 p.m. in the U.S. embassy.",
        "Then they left.",
    ]


def test_lowercase_after_full_stop_continues_the_sentence() -> None:
    assert _sentences("Values e.g. ten and so on. Fine.") == ["Values e.g. ten and so on.", "Fine."]


def test_passages_overlap_by_one_sentence(encoder: Encoder) -> None:
    text = " ".join(f"Sentence number {i} talks about topic {i} in some detail." for i in range(30))
    chunked = PassageSplitter(encoder, target_tokens=40, overlap=1).split(Document("d", text))
    assert len(chunked.passages) > 3
    for before, after in zip(chunked.passages, chunked.passages[1:], strict=False):
        assert after.first_unit == before.last_unit - 1
        assert after.start < before.end  # one shared sentence
    assert chunked.passages[-1].last_unit == len(chunked.units)


def test_a_sentence_longer_than_the_limit_is_cut_at_word_pieces(encoder: Encoder) -> None:
    text = "word " * 600
    chunked = PassageSplitter(encoder, target_tokens=300, overlap=0).split(Document("d", text))
    assert len(chunked.passages) == 3  # 600 pieces in windows of at most 254
    for p in chunked.passages:
        assert len(encoder.token_spans([p.text])[0]) <= encoder.max_tokens


def test_whole_document_splitter_cuts_at_the_model_limit(encoder: Encoder) -> None:
    doc = Document("d", "Title. " + "More words here. " * 200)
    (passage,) = WholeDocumentSplitter(encoder).split(doc).passages
    assert passage.start == 0 and doc.text[: passage.end] == passage.text
    assert len(encoder.token_spans([passage.text])[0]) == encoder.max_tokens


_pieces = st.sampled_from([*"abc XYZ.!?\n\t'\"“”-–,0123456789éčšžđЖж", "Dr. ", "e.g. "])
_texts = st.lists(_pieces, min_size=1, max_size=400).map("".join)


@settings(max_examples=150, deadline=None)
@given(text=_texts, target=st.integers(min_value=8, max_value=80), overlap=st.integers(0, 2))
def test_every_passage_is_an_exact_span_within_the_limit(
    encoder: Encoder, text: str, target: int, overlap: int
) -> None:
    doc = Document("doc", text)
    chunked = PassageSplitter(encoder, target_tokens=target, overlap=overlap).split(doc)
    for ordinal, p in enumerate(chunked.passages):
        assert p.text == doc.text[p.start : p.end]
        assert p.id == f"doc#{ordinal}"
        assert len(encoder.token_spans([p.text])[0]) <= encoder.max_tokens
        a, b = chunked.units[p.first_unit][0], chunked.units[p.last_unit - 1][1]
        assert (a, b) == (p.start, p.end)
    # Nothing with content is lost: every non-space character lies in some passage.
    covered: set[int] = set()
    for p in chunked.passages:
        covered.update(range(p.start, p.end))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())
