"""Hybrid fusion across languages and models: the lexical weight follows how much of the question
BM25 can read, and each model's cosine enters on its own scale."""

from __future__ import annotations

import numpy as np
import pytest

from embeddings import E5_MODEL
from qa_service.retrieval import DENSE_SCORING, Retriever
from qa_service.service import QAService

ENGLISH = "Who is the Executive Secretary of the Council of Europe anti-trafficking convention?"
# The same question in Serbian (Cyrillic), Albanian and Macedonian.
SERBIAN = "Ко је извршни секретар Конвенције Вијећа Европе о борби против трговине људима?"
ALBANIAN = (
    "Kush është sekretari ekzekutiv i Konventës së Këshillit të Evropës kundër trafikimit të "
    "qenieve njerëzore?"
)
MACEDONIAN = "Кој е извршен секретар на Конвенцијата на Советот на Европа за борба против трговијата со луѓе?"  # noqa: E501


def test_coverage_is_the_share_of_words_bm25_can_read(service: QAService) -> None:
    retriever = Retriever(service.index)
    assert retriever.lexical_coverage(ENGLISH) == 1.0
    assert retriever.lexical_coverage(SERBIAN) == 0.0
    assert retriever.lexical_coverage(MACEDONIAN) == 0.0
    assert retriever.lexical_coverage(ALBANIAN) < 0.2
    # English stop words are read; "reset" and "password" occur nowhere in the reports.
    assert 0.5 < retriever.lexical_coverage("How do I reset my password?") < 1.0
    assert retriever.lexical_coverage("???") == 0.0


def test_a_question_bm25_cannot_read_keeps_the_dense_ranking(service: QAService) -> None:
    hybrid = service.ask(SERBIAN, top_k=10, mode="hybrid").answer.passages
    dense = service.ask(SERBIAN, top_k=10, mode="dense").answer.passages
    assert [p.hit.passage.id for p in hybrid] == [p.hit.passage.id for p in dense]
    # all-MiniLM-L6-v2's floor is 0: the fused score is the cosine itself.
    assert [p.hit.score for p in hybrid] == pytest.approx([p.hit.score for p in dense])


def test_an_english_question_still_fuses_both(service: QAService) -> None:
    (top, *_) = service.ask(ENGLISH, mode="hybrid").answer.passages
    assert top.hit.dense_score is not None and top.hit.lexical_score is not None
    assert top.hit.score == pytest.approx(0.5 * top.hit.dense_score + 0.5 * top.hit.lexical_score)


def test_e5_ranks_by_whole_passages_with_its_own_floor(e5_service: QAService) -> None:
    scoring = DENSE_SCORING[E5_MODEL]
    assert not scoring.sentence_evidence
    assert 0.5 < scoring.floor < 0.9
    (top, *_) = e5_service.ask(ENGLISH, mode="dense").answer.passages
    index = e5_service.index
    row = next(i for i, p in enumerate(index.passages) if p.id == top.hit.passage.id)
    (question,) = e5_service.encoder.encode_queries([ENGLISH])
    cosine = float(index.vectors.vectors(np.asarray([row], dtype=np.int64))[0] @ question)
    assert top.hit.dense_score == pytest.approx(cosine, abs=1e-5)  # no sentence max
    (top,) = e5_service.ask(ENGLISH, top_k=1, mode="hybrid").answer.passages
    assert top.hit.dense_score is not None and top.hit.lexical_score is not None
    rescaled = (top.hit.dense_score - scoring.floor) / (1 - scoring.floor)
    assert top.hit.score == pytest.approx(0.5 * rescaled + 0.5 * top.hit.lexical_score)


@pytest.mark.parametrize("question", [ENGLISH, SERBIAN, ALBANIAN, MACEDONIAN])
def test_e5_answers_in_every_language_from_the_english_text(
    e5_service: QAService, question: str
) -> None:
    for mode in ("dense", "hybrid"):
        answer = e5_service.ask(question, top_k=5, mode=mode).answer
        assert answer.answerable, mode
        assert any("Petya Nestorova" in p.hit.passage.text for p in answer.passages), mode
