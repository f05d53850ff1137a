"""The service on the default corpus with the real model: citations and abstention."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from qa_service.query.pipeline import AskOptions
from qa_service.service import QAService


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).casefold()


def _contains_answer(text: str, answers: list[str]) -> bool:
    return any(_norm(a) in _norm(text) for a in answers)


def test_every_passage_cites_its_exact_span(service: QAService) -> None:
    for timed in service.ask_many(
        ["What is GRETA?", "Where was the training held?"], AskOptions(top_k=10)
    ):
        for ranked in timed.answer.passages:
            p = ranked.hit.passage
            assert service.document(p.document_id).text[p.start : p.end] == p.text
            assert ranked.highlight is not None
            assert 0 <= ranked.highlight.start < ranked.highlight.end <= len(p.text)


def test_dev_questions_find_their_answer_in_the_cited_document(
    service: QAService, dev_questions: list[dict[str, Any]]
) -> None:
    answerable = [q for q in dev_questions if not q.get("unanswerable")]
    misses = []
    for q in answerable:
        answer = service.ask(q["question"]).answer
        assert answer.answerable, q["id"]
        if not any(
            _contains_answer(r.hit.passage.text, q["answers"])
            and r.hit.passage.document_id in q["documents"]
            for r in answer.passages
        ):
            misses.append(q["id"])
    assert not misses, f"answer not in the top 5 for {misses}"


def test_off_topic_questions_abstain_but_show_nearest_passages(
    service: QAService, dev_questions: list[dict[str, Any]]
) -> None:
    for q in (q for q in dev_questions if q.get("unanswerable")):
        answer = service.ask(q["question"]).answer
        assert not answer.answerable, q["id"]
        assert answer.answer_rank is None and answer.answer_text is None
        assert len(answer.passages) == 5


def test_min_score_overrides_the_threshold(service: QAService) -> None:
    question = "What is GRETA?"
    assert service.ask(question).answer.answerable
    assert not service.ask(question, AskOptions(min_score=0.99)).answer.answerable
    assert service.ask("boiling point of water", AskOptions(min_score=-1.0)).answer.answerable


def test_answer_sentence_is_verbatim_and_answers(service: QAService) -> None:
    answer = service.ask("Who highlighted the importance of multi-agency collaboration?").answer
    assert answer.answer_text is not None and "Verena Taylor" in answer.answer_text
    holder = answer.passages[answer.answer_rank - 1]  # type: ignore[operator]
    assert answer.answer_text in holder.hit.passage.text


def test_concurrent_questions_get_the_answers_they_would_get_alone(
    service: QAService, dev_questions: list[dict[str, Any]]
) -> None:
    questions = [q["question"] for q in dev_questions][:8] * 2
    alone = [service.ask(q).answer for q in questions]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda q: service.ask(q).answer, questions))
    for a, b in zip(alone, together, strict=True):
        assert a.question == b.question and a.answer_text == b.answer_text
        assert [p.hit.passage.id for p in a.passages] == [p.hit.passage.id for p in b.passages]
