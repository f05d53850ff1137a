from __future__ import annotations

import pytest

from qa_service.query.conversation import Turn, is_follow_up, retrieval_query
from qa_service.query.pipeline import AskOptions
from qa_service.service import QAService


@pytest.mark.parametrize(
    "question",
    ["How many people attended it?", "And in Serbia?", "What did they conclude?",
     "Who organised these workshops?", "What about Albania?"],
)  # fmt: skip
def test_questions_that_refer_back_are_follow_ups(question: str) -> None:
    assert is_follow_up(question)


@pytest.mark.parametrize(
    "question",
    ["What is GRETA?", "Are there shelters for child victims in Montenegro?",
     "Which bodies supported the first joint investigation team?",
     "Who said that returning women is not a way to combat trafficking?"],
)  # fmt: skip
def test_standalone_questions_are_not_follow_ups(question: str) -> None:
    assert not is_follow_up(question)


def test_a_follow_up_is_searched_with_the_questions_it_leans_on() -> None:
    turns = [
        Turn("user", "Who chairs the REGM?"),
        Turn("assistant", "No confident answer."),
        Turn("user", "Where was the Second Country Workshop held?"),
        Turn("assistant", "In Bjelasnica, BiH."),
        Turn("user", "Who organised it?"),
        Turn("user", "How many people attended it?"),
    ]
    # Back to the last standalone question, and no further; answers are not searched.
    assert retrieval_query(turns) == (
        "Where was the Second Country Workshop held? Who organised it? How many people attended it?"
    )
    assert retrieval_query([*turns, Turn("user", "What is GRETA?")]) == "What is GRETA?"


def test_context_is_bounded() -> None:
    turns = [Turn("user", f"And question {i} about it?") for i in range(10)]
    assert retrieval_query(turns) == " ".join(t.content for t in turns[-3:])


def test_a_conversation_needs_a_question() -> None:
    with pytest.raises(ValueError, match="user message"):
        retrieval_query([Turn("assistant", "Hello")])


def test_the_follow_up_finds_the_workshop_it_refers_to(service: QAService) -> None:
    question = "How many people attended it?"
    alone = service.ask(question, AskOptions(top_k=3)).answer
    query = "Where was the Second Country Workshop held? " + question
    in_context = service.ask(question, AskOptions(top_k=3), query=query).answer
    texts = [p.hit.passage.text for p in in_context.passages]
    assert any("The 29 participants" in t for t in texts)
    assert not any("The 29 participants" in p.hit.passage.text for p in alone.passages)
    # Retrieval used the context; the answer is still about the question asked.
    assert in_context.question == question
    assert in_context.passages[0].hit.passage.document_id == "003_ae384882abc649e5"
