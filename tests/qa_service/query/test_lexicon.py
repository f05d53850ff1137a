"""The lexicon induced from the multilingual model's word vectors, and what it does to retrieval."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from embeddings import Vectors
from qa_service.corpus.documents import Document
from qa_service.query.lexicon import (
    MIN_COSINE,
    TRANSLATED_WEIGHT,
    Lexicon,
    cache_path,
    read_cached,
    save_cached,
    words_of,
)
from qa_service.query.pipeline import AskOptions, QueryPipeline
from qa_service.query.retrieval import Retriever, SearchQuery
from qa_service.query.transliteration import spellings
from qa_service.service import QAService

CORPUS = [
    Document("a", "The Convention requires specific measures regarding children."),
    Document("b", "Experts of the regional meeting discussed the objective in Skopje."),
]
# "What does the Convention require States Parties to do regarding children?" in Serbian.
SERBIAN = "Šta Konvencija nalaže državama potpisnicama kada je riječ o djeci?"
ANSWER = "specific measures regarding children"


def test_words_are_lower_cased_letters_in_any_script() -> None:
    assert words_of("Šta Konvencija nalaže o djeci 2021?") == [
        "šta",
        "konvencija",
        "nalaže",
        "djeci",
    ]
    assert words_of("Кој ја истакна важноста?") == ["кој", "истакна", "важноста"]


def test_question_words_are_replaced_by_their_nearest_corpus_words(e5_service: QAService) -> None:
    encode = e5_service.encoder.encode_queries
    lexicon = Lexicon.build(CORPUS, encode)
    assert "children" in lexicon.words and "the" not in lexicon.words  # stop words left out
    assert lexicon.vectors.shape == (len(lexicon.words), e5_service.encoder.dimension)
    translation = lexicon.translate(SERBIAN, encode(words_of(SERBIAN)))
    found = translation.query.split()
    assert {"convention", "children"} <= set(found)
    # Each translated word counts as TRANSLATED_WEIGHT of a read word among all 10 words.
    assert translation.coverage == pytest.approx(TRANSLATED_WEIGHT * len(found) / 10)
    # Only words within MIN_COSINE of a corpus word are kept; function words are left out.
    best = (encode(words_of(SERBIAN)) @ lexicon.vectors.T).max(axis=1)
    assert len(found) == int((best >= MIN_COSINE).sum()) < len(words_of(SERBIAN))


def test_a_rebuild_encodes_only_new_words(e5_service: QAService) -> None:
    calls: list[list[str]] = []

    def counting(texts: Sequence[str]) -> Vectors:
        calls.append(list(texts))
        return e5_service.encoder.encode_queries(texts)

    first = Lexicon.build(CORPUS[:1], counting)
    second = Lexicon.build(CORPUS, counting, previous=first)
    assert set(calls[1]) == set(second.words) - set(first.words)
    for word in first.words:
        row_before = first.vectors[first.words.index(word)]
        assert np.array_equal(second.vectors[second.words.index(word)], row_before)


def test_e5_finds_the_answer_through_translated_words(e5_service: QAService) -> None:
    (top, *_) = e5_service.ask(SERBIAN, AskOptions(top_k=5, mode="hybrid")).answer.passages
    assert ANSWER in top.hit.passage.text
    # Without the translation, the embedding alone puts another passage first.
    vectors = e5_service.encoder.encode_queries(spellings(SERBIAN))
    retriever = Retriever(e5_service.index)
    query = SearchQuery(SERBIAN, vectors, retriever.lexical_coverage(SERBIAN))
    (hits,) = retriever.retrieve([query], 5, "hybrid")
    assert ANSWER not in hits[0].passage.text


def test_question_words_are_encoded_once_across_questions(e5_service: QAService) -> None:
    pipeline = QueryPipeline.over_index(e5_service.index, e5_service.encoder.encode_queries)
    calls: list[list[str]] = []

    def encode(texts: Sequence[str]) -> Vectors:
        calls.append(list(texts))
        return e5_service.encoder.encode_queries(texts)

    options = {"k": 5, "mode": "hybrid", "threshold": 0.337}
    (first,) = pipeline.run([SERBIAN], [SERBIAN], encode, **options)  # type: ignore[arg-type]
    (again,) = pipeline.run([SERBIAN], [SERBIAN], encode, **options)  # type: ignore[arg-type]
    words = set(words_of(SERBIAN))
    assert words <= set(calls[0])
    assert not words & set(calls[1])  # the question alone, its words from the cache
    assert [p.hit.passage.id for p in first.passages] == [p.hit.passage.id for p in again.passages]


class _Counting:
    """The encoder, counting the texts it encodes."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.texts: list[str] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def encode_queries(self, texts: Sequence[str], batch_size: int = 32) -> Vectors:
        self.texts.extend(texts)
        return self.inner.encode_queries(texts, batch_size)  # type: ignore[attr-defined, no-any-return]


def test_a_saved_lexicon_spares_the_next_load_its_encoding(
    e5_service: QAService, tmp_path: Path
) -> None:
    path = cache_path(tmp_path, e5_service.encoder.name)
    counting = _Counting(e5_service.encoder)
    first = QAService(counting, e5_service.index, None, 5, lexicon_cache=path)  # type: ignore[arg-type]
    assert first._live.pipeline.lexicon is not None and path.is_file()
    assert len(counting.texts) == len(first._live.pipeline.lexicon.words)
    counting.texts.clear()
    again = QAService(counting, e5_service.index, None, 5, lexicon_cache=path)  # type: ignore[arg-type]
    assert counting.texts == []  # nothing encoded: every word came from the file
    assert again._live.pipeline.lexicon is not None
    assert again._live.pipeline.lexicon.words == first._live.pipeline.lexicon.words
    assert np.array_equal(
        again._live.pipeline.lexicon.vectors, first._live.pipeline.lexicon.vectors
    )


def test_a_cached_lexicon_of_another_model_or_damaged_is_not_used(tmp_path: Path) -> None:
    lexicon = Lexicon(["convention", "children"], np.eye(2, dtype=np.float32))
    path = cache_path(tmp_path, "model-a")
    save_cached(path, "model-a", lexicon)
    cached = read_cached(path, "model-a")
    assert cached is not None and cached.words == lexicon.words
    assert read_cached(path, "model-b") is None
    path.write_bytes(b"not a numpy file")
    assert read_cached(path, "model-a") is None
    assert read_cached(tmp_path / "missing.npz", "model-a") is None
