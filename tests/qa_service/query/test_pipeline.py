"""The question path over one index snapshot: what is searched, and one model call a batch."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from embeddings import Vectors
from qa_service.query.pipeline import AskOptions, QueryPipeline
from qa_service.query.transliteration import spellings
from qa_service.service import QAService

GRETA = "What is GRETA?"
CYRILLIC = "Ко је Петја Несторова?"
FOLLOW_UP = "How many people attended it?"
FOLLOW_UP_QUERY = "Where was the Second Country Workshop held? How many people attended it?"


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
