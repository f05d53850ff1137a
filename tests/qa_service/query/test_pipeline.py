"""The question path over one index snapshot: what is searched, and one model call a batch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from embeddings import Vectors
from qa_service.models import Mode
from qa_service.query import answering
from qa_service.query.conversation import Turn, retrieval_query
from qa_service.query.pipeline import (
    FOLLOW_UP_WEIGHT,
    AskOptions,
    QueryPipeline,
    follow_up_vectors,
)
from qa_service.query.retrieval import Filters, Hit, SearchQuery
from qa_service.query.transliteration import spellings
from qa_service.service import QAService

GRETA = "What is GRETA?"
CYRILLIC = "Ко је Петја Несторова?"
FOLLOW_UP = "How many people attended it?"
FOLLOW_UP_QUERY = "Where was the Second Country Workshop held? How many people attended it?"
SKOPJE = "What was the Regional Expert Group Meeting in Skopje about?"
HOW_MANY = "How many participants did it bring together?"


def test_a_batch_takes_one_model_call_for_everything_it_searches(service: QAService) -> None:
    pipeline = QueryPipeline.over_index(service.index, service.encoder.encode_queries)
    calls: list[list[str]] = []

    def encode(texts: Sequence[str]) -> Vectors:
        calls.append(list(texts))
        return service.encoder.encode_queries(texts)

    questions = [GRETA, CYRILLIC, FOLLOW_UP]
    queries = [GRETA, CYRILLIC, FOLLOW_UP_QUERY]
    answers = pipeline.run(questions, queries, encode, k=3, mode="hybrid", threshold=0.25)
    (texts,) = calls
    # The acronym is searched spelled out, the Cyrillic question in both scripts, and the
    # follow-up as its query; the questions themselves are encoded for the answer sentence.
    expanded = pipeline.acronyms.expand(GRETA)
    assert expanded != GRETA and expanded.startswith("What is GRETA (")
    assert {GRETA, expanded, *spellings(CYRILLIC), FOLLOW_UP, FOLLOW_UP_QUERY} == set(texts)
    assert len(texts) == len(set(texts))  # each once
    assert [a.question for a in answers] == questions
    # The same answers as the service gives one at a time.
    for question, query, answer in zip(questions, queries, answers, strict=True):
        alone = service.ask(question, AskOptions(top_k=3, min_score=0.25), query=query).answer
        assert [p.hit.passage.id for p in alone.passages] == [
            p.hit.passage.id for p in answer.passages
        ]
        assert alone.answer_text == answer.answer_text


def test_each_question_needs_its_query(service: QAService) -> None:
    pipeline = QueryPipeline.over_index(service.index, service.encoder.encode_queries)
    with pytest.raises(ValueError, match="one query per question"):
        pipeline.run(
            [GRETA, FOLLOW_UP], [GRETA], service.encoder.encode_queries, k=3, mode="hybrid",
            threshold=0.25,
        )  # fmt: skip


class Recorded:
    """The service's own retriever, keeping what it was asked to search."""

    def __init__(self, pipeline: QueryPipeline) -> None:
        self.inner = pipeline.retriever
        self.searched: list[SearchQuery] = []

    def retrieve(
        self,
        queries: Sequence[SearchQuery],
        k: int,
        mode: Mode = "hybrid",
        filters: Filters | None = None,
        diversity: float = 0.0,
    ) -> list[list[Hit]]:
        self.searched += queries
        return self.inner.retrieve(queries, k, mode, filters, diversity)

    def lexical_coverage(self, question: str) -> float:
        return self.inner.lexical_coverage(question)


def test_a_follow_up_is_searched_with_its_own_vector_added(service: QAService) -> None:
    """BM25 reads the joined questions; the dense search their vector plus the follow-up's own,
    where a standalone question is searched as it is."""
    pipeline = QueryPipeline.over_index(service.index, service.encoder.encode_queries)
    recorded = Recorded(pipeline)
    pipeline.retriever = recorded
    pipeline.run(
        [FOLLOW_UP, GRETA], [FOLLOW_UP_QUERY, GRETA], service.encoder.encode_queries, k=3,
        mode="hybrid", threshold=0.25,
    )  # fmt: skip
    follow_up, standalone = recorded.searched
    joined, asked = service.encoder.encode_queries([FOLLOW_UP_QUERY, FOLLOW_UP])
    expected = joined + FOLLOW_UP_WEIGHT * asked
    assert follow_up.text == FOLLOW_UP_QUERY
    np.testing.assert_allclose(follow_up.vectors, [expected / np.linalg.norm(expected)], atol=1e-5)
    np.testing.assert_allclose(
        standalone.vectors, service.encoder.encode_queries([pipeline.acronyms.expand(GRETA)]),
        atol=1e-5,
    )  # fmt: skip
    # Every spelling of the joined questions gets the follow-up as asked.
    two = follow_up_vectors(np.vstack([joined, asked]), np.vstack([asked, joined]))
    np.testing.assert_allclose(np.linalg.norm(two, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(two[1], asked, atol=1e-5)  # itself plus itself, normalised


def test_a_follow_up_is_answered_by_the_passage_that_answers_it(e5_service: QAService) -> None:
    """The meeting is named in one passage and its participants counted in the next: searched
    with the follow-up's own vector, the count is found (before, the sentence naming the
    meeting's organisers was the answer)."""
    query = retrieval_query([Turn("user", SKOPJE), Turn("user", HOW_MANY)])
    answer = e5_service.ask(HOW_MANY, query=query).answer
    assert answer.answerable and "over 70 participants" in (answer.answer_text or "")


def test_the_answer_sentence_holds_the_kind_of_answer_asked_for(
    service: QAService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asked "how many", the sentence with the count is the answer, not one closer in words."""
    question = "How many participants did the expert meeting in Skopje bring together?"
    answer = service.ask(question).answer
    assert "over 70 participants" in (answer.answer_text or "")
    monkeypatch.setattr(answering, "KIND_WEIGHT", 0.0)
    assert "over 70 participants" not in (service.ask(question).answer.answer_text or "")
