"""Hybrid fusion across languages and models: the lexical weight follows how much of the question
BM25 can read, and each model's cosine enters on its own scale."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from embeddings import E5_MODEL
from qa_service.models import profile_for
from qa_service.query.pipeline import AskOptions
from qa_service.query.retrieval import LEXICAL_SUPPORT_COVERAGE, Retriever, SearchQuery
from qa_service.query.transliteration import spellings
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
    hybrid = service.ask(SERBIAN, AskOptions(top_k=10, mode="hybrid")).answer.passages
    dense = service.ask(SERBIAN, AskOptions(top_k=10, mode="dense")).answer.passages
    assert [p.hit.passage.id for p in hybrid] == [p.hit.passage.id for p in dense]
    # all-MiniLM-L6-v2's floor is 0: the fused score is the cosine itself.
    assert [p.hit.score for p in hybrid] == pytest.approx([p.hit.score for p in dense])


def test_an_english_question_still_fuses_both(service: QAService) -> None:
    (top, *_) = service.ask(ENGLISH, AskOptions(mode="hybrid")).answer.passages
    assert top.hit.dense_score is not None and top.hit.lexical_score is not None
    assert top.hit.score == pytest.approx(0.5 * top.hit.dense_score + 0.5 * top.hit.lexical_score)


# "When did the Annual Regional Meeting of the Task Forces take place?" in Albanian. BM25 reads
# two of its nine words: "i" (an English stop word) and "task".
TASK_FORCES = "Kur u mbajt Takimi Vjetor Rajonal i Task-Forcave?"


def test_a_question_bm25_barely_reads_is_judged_on_its_dense_scores(service: QAService) -> None:
    assert 0 < Retriever(service.index).lexical_coverage(TASK_FORCES) < LEXICAL_SUPPORT_COVERAGE
    passages = service.ask(TASK_FORCES, AskOptions(top_k=10, mode="hybrid")).answer.passages
    (dense, *_) = service.ask(TASK_FORCES, AskOptions(mode="dense")).answer.passages
    top = passages[0].hit
    # all-MiniLM-L6-v2's floor is 0: the best dense score is dense mode's first score.
    assert top.support == pytest.approx(dense.hit.score)
    assert all(p.hit.support == top.support for p in passages)
    assert top.score < top.support  # the lexical weight pulled the fused score down
    hybrid = AskOptions(top_k=10, mode="hybrid")
    answer = service.ask(TASK_FORCES, replace(hybrid, min_score=top.support - 1e-3)).answer
    assert answer.answerable
    answer = service.ask(TASK_FORCES, replace(hybrid, min_score=top.support + 1e-3)).answer
    assert not answer.answerable
    # A question BM25 reads is judged on its fused score, as is every question in dense mode.
    (english, *_) = service.ask(ENGLISH, AskOptions(mode="hybrid")).answer.passages
    assert english.hit.support == english.hit.score
    assert dense.hit.support == dense.hit.score


def test_e5_answers_a_question_bm25_barely_reads(e5_service: QAService) -> None:
    answer = e5_service.ask(TASK_FORCES, AskOptions(mode="hybrid")).answer
    assert "17 May 2024" in answer.passages[0].hit.passage.text
    assert answer.answerable
    floor = profile_for(E5_MODEL).floor
    (dense, *_) = e5_service.ask(TASK_FORCES, AskOptions(mode="dense")).answer.passages
    expected = (dense.hit.score - floor) / (1 - floor)
    assert answer.passages[0].hit.support == pytest.approx(expected)


def test_e5_ranks_by_whole_passages_with_its_own_floor(e5_service: QAService) -> None:
    scoring = profile_for(E5_MODEL)
    assert not scoring.sentence_evidence
    assert 0.5 < scoring.floor < 0.9
    index = e5_service.index
    weight = scoring.preceding_context
    assert index.manifest.passage_settings["preceding_context"] == weight
    assert index.context_vectors is not None
    (question,) = e5_service.encoder.encode_queries([ENGLISH])
    for top in e5_service.ask(ENGLISH, AskOptions(mode="dense")).answer.passages:
        rows = np.asarray([top.hit.row], dtype=np.int64)
        cosine = float(index.vectors.vectors(rows)[0] @ question)
        in_context = float(index.context_vectors[top.hit.row] @ question)
        # No sentence max: the passage, mixed with its reading after the passage before it.
        expected = (1 - weight) * cosine + weight * in_context
        assert top.hit.dense_score == pytest.approx(expected, abs=1e-5)
    (top,) = e5_service.ask(ENGLISH, AskOptions(top_k=1, mode="hybrid")).answer.passages
    assert top.hit.dense_score is not None and top.hit.lexical_score is not None
    rescaled = (top.hit.dense_score - scoring.floor) / (1 - scoring.floor)
    assert top.hit.score == pytest.approx(0.5 * rescaled + 0.5 * top.hit.lexical_score)


@pytest.mark.parametrize("question", [ENGLISH, SERBIAN, ALBANIAN, MACEDONIAN])
def test_e5_answers_in_every_language_from_the_english_text(
    e5_service: QAService, question: str
) -> None:
    for mode in ("dense", "hybrid"):
        answer = e5_service.ask(question, AskOptions(top_k=5, mode=mode)).answer
        assert answer.answerable, mode
        assert any("Petya Nestorova" in p.hit.passage.text for p in answer.passages), mode


# The participants' countries are named in a passage that never says "Budva": the training of
# trainers there is introduced in the passage before it.
BUDVA = "Koje su zemlje poslale učesnike na obuku za trenere u Budvi?"
COUNTRIES = "Bosnia and Herzegovina, Montenegro, North Macedonia and Serbia"


def test_e5_finds_a_passage_by_the_one_before_it(e5_service: QAService) -> None:
    (top, *_) = e5_service.ask(BUDVA, AskOptions(top_k=5, mode="hybrid")).answer.passages
    assert COUNTRIES in top.hit.passage.text
    # Without the passages read in context, the first passage names Budva but not the countries.
    retriever = Retriever(e5_service.index)
    assert retriever.context_weight > 0
    retriever.context_weight = 0.0
    vectors = e5_service.encoder.encode_queries(spellings(BUDVA))
    query = SearchQuery(BUDVA, vectors, retriever.lexical_coverage(BUDVA))
    (hits,) = retriever.retrieve([query], k=5, mode="hybrid")
    assert "Budva" in hits[0].passage.text and COUNTRIES not in hits[0].passage.text
