"""Questions in Cyrillic are searched in both spellings; the documents are in Latin letters."""

from __future__ import annotations

from qa_service.query.pipeline import AskOptions
from qa_service.query.transliteration import latin_spelling, spellings
from qa_service.service import QAService


def test_serbian_and_macedonian_letters_map_to_their_latin_spelling() -> None:
    assert latin_spelling("Ђорђе Љубић, Џеп, Њиш, Ћуприја") == "Đorđe Ljubić, Džep, Njiš, Ćuprija"
    assert latin_spelling("Ѓорѓи Ќосе Ѕвезда") == "Gjorgji Kjose Dzvezda"
    assert latin_spelling("Будва, 2024.") == "Budva, 2024."


def test_a_question_without_cyrillic_has_one_spelling() -> None:
    assert latin_spelling("Koje su zemlje poslale učesnike u Budvu?") is None
    assert spellings("Who chaired the meeting?") == ["Who chaired the meeting?"]
    question = "Ко је извршни секретар?"
    assert spellings(question) == [question, "Ko je izvršni sekretar?"]


def test_a_cyrillic_question_ranks_with_the_better_of_its_spellings(service: QAService) -> None:
    # "Who is Petya Nestorova?" with the name in Cyrillic: only its Latin spelling shares the
    # name's word pieces with the English text, so the dense score is the Latin one's.
    cyrillic = service.ask(
        "Ко је Петја Несторова?", AskOptions(top_k=3, mode="dense")
    ).answer.passages
    latin = service.ask("Ko je Petja Nestorova?", AskOptions(top_k=3, mode="dense")).answer.passages
    assert cyrillic[0].hit.passage.id == latin[0].hit.passage.id
    assert "Petya Nestorova" in cyrillic[0].hit.passage.text
    # A passage scores with the better spelling: never below the Latin spelling alone.
    latin_scores = {p.hit.passage.id: p.hit.score for p in latin}
    for passage in cyrillic:
        assert passage.hit.score >= latin_scores.get(passage.hit.passage.id, 0.0) - 1e-6
