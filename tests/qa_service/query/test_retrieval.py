"""Retrieval modes, fusion, overlap merging and filters, on the default corpus and real model."""

from __future__ import annotations

import pytest

from qa_service.models import Mode
from qa_service.query.pipeline import AskOptions
from qa_service.query.retrieval import Filters
from qa_service.service import QAService


def _ranked_ids(service: QAService, question: str, **options: object) -> list[str]:
    answer = service.ask(question, AskOptions(**options)).answer  # type: ignore[arg-type]
    return [r.hit.passage.document_id for r in answer.passages]


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_each_mode_answers_with_exact_citations(service: QAService, mode: Mode) -> None:
    answer = service.ask(
        "Which bodies supported the first joint investigation team?", AskOptions(mode=mode)
    ).answer
    assert answer.answerable
    top = answer.passages[0].hit
    assert "UNODC and Eurojust" in top.passage.text
    assert service.document(top.passage.document_id).text[top.passage.start : top.passage.end] == (
        top.passage.text
    )
    assert (top.dense_score is None) == (mode == "lexical")
    assert (top.lexical_score is None) == (mode == "dense")


def test_a_rare_exact_name_is_found_where_dense_alone_misses_it(service: QAService) -> None:
    # A place name the embedding model knows nothing about.
    question = "Bjelasnica"
    assert _ranked_ids(service, question, mode="dense")[0] != "003_ae384882abc649e5"
    for mode in ("lexical", "hybrid"):
        answer = service.ask(question, AskOptions(mode=mode)).answer
        assert "Bjelasnica" in answer.passages[0].hit.passage.text


def test_an_exact_token_keeps_hybrid_from_abstaining(service: QAService) -> None:
    # The UNODC contact address: meaningless to the embedding, exact for BM25.
    assert not service.ask("htmss", AskOptions(mode="dense")).answer.answerable
    answer = service.ask("htmss", AskOptions(mode="hybrid")).answer
    assert answer.answerable
    assert "htmss AT unodc DOT org" in answer.passages[0].hit.passage.text


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_overlapping_windows_are_never_returned_twice(service: QAService, mode: Mode) -> None:
    for question in ["trafficking of children", "Council of Europe project", "victims"]:
        passages = [
            r.hit.passage
            for r in service.ask(question, AskOptions(top_k=20, mode=mode)).answer.passages
        ]
        for i, a in enumerate(passages):
            for b in passages[i + 1 :]:
                assert a.document_id != b.document_id or a.end <= b.start or b.end <= a.start
            document = service.document(a.document_id)
            assert document.text[a.start : a.end] == a.text
            assert a.page == document.page_at(a.start)


def test_merged_neighbours_keep_the_answer(service: QAService) -> None:
    # The answer sits in the sentence after the one that names the meeting; the two windows
    # that share a sentence come back as one passage.
    answer = service.ask("Who took part in the Regional Expert Group Meeting in Skopje?").answer
    top = answer.passages[0].hit.passage
    assert "police officers, prosecutors, judges" in top.text
    assert "-" in top.id.split("#")[1]  # a merged range of windows


def test_document_filter_fills_top_k_from_allowed_documents(service: QAService) -> None:
    allowed = frozenset({"001_679cc4caf4b8cd25"})
    for mode in ("dense", "hybrid"):
        ids = _ranked_ids(service, "trafficking", top_k=3, mode=mode,
                          filters=Filters(document_ids=allowed))  # fmt: skip
        assert ids == ["001_679cc4caf4b8cd25"] * 3


def test_metadata_and_date_filters(service: QAService) -> None:
    unodc = Filters(metadata=(("publisher", "UNODC"),))
    ids = _ranked_ids(service, "child trafficking", top_k=5, filters=unodc)
    assert len(ids) == 5
    assert set(ids) == {"002_1e161a6a470d0d70", "003_ae384882abc649e5"}
    recent = Filters(date_from="2023-01-01")
    assert set(_ranked_ids(service, "trafficking", top_k=6, filters=recent)) == {
        "002_1e161a6a470d0d70",
        "004_7e10ae9df193b495",
    }
    nothing = Filters(document_ids=frozenset({"no-such-document"}))
    answer = service.ask("trafficking", AskOptions(filters=nothing)).answer
    assert answer.passages == [] and not answer.answerable


def test_abstention_threshold_per_request(service: QAService) -> None:
    question = "What was the objective of the Regional Expert Group Meeting?"
    best = service.ask(question).answer.passages[0].hit.score
    assert service.ask(question, AskOptions(min_score=best - 0.01)).answer.answerable
    assert not service.ask(question, AskOptions(min_score=best + 0.01)).answer.answerable


def test_diversity_lets_a_near_duplicate_give_way(service: QAService) -> None:
    # Two reports carry the same paragraph about the Convention's Executive Secretary.
    question = "Who is the Executive Secretary of the Council of Europe anti-trafficking treaty?"
    plain = service.ask(question, AskOptions(top_k=3)).answer.passages
    first, second = (p.hit.passage.text for p in plain[:2])
    assert "Petya Nestorova" in first and "Petya Nestorova" in second
    assert plain[0].hit.passage.document_id != plain[1].hit.passage.document_id

    diverse = service.ask(question, AskOptions(top_k=3, diversity=0.5)).answer.passages
    # The best passage stays first with its score (it may absorb more neighbouring windows, as
    # more candidates are ranked to choose from).
    assert diverse[0].hit.score == plain[0].hit.score
    assert diverse[0].hit.passage.start <= plain[0].hit.passage.start
    assert diverse[0].hit.passage.end >= plain[0].hit.passage.end
    # The copy in the other report (cosine 0.98 with the first) gives way to other evidence.
    assert "Petya Nestorova" not in diverse[1].hit.passage.text
    assert len(diverse) == 3
    with pytest.raises(ValueError, match="diversity"):
        service.ask(question, AskOptions(diversity=1.5))
