"""Question files come from users: any content loads or fails with EvaluationDataError."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qa_service.evaluation.datasets import EvaluationDataError, load_question_set, load_squad

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                    st.text(max_size=10))  # fmt: skip
JSON = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)  # fmt: skip


# Mostly well-formed, with any value anywhere now and then.
def _or_junk(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(strategy, strategy, strategy, JSON)


WORDS = st.text(alphabet="abc xyz", min_size=0, max_size=8).map(lambda w: w + " words?")
NAMES = st.uuids().map(str)  # ids and titles that rarely collide, so most files can load
QUESTION_LIKE = st.fixed_dictionaries(
    {},
    optional={
        "id": _or_junk(NAMES),
        "question": _or_junk(WORDS),
        "answers": _or_junk(st.lists(WORDS, max_size=2)),
        "documents": _or_junk(st.lists(NAMES, max_size=2)),
        "unanswerable": _or_junk(st.booleans()),
        "language": _or_junk(st.sampled_from(["sq", "sr-Cyrl", ""])),
    },
)
ANSWER = _or_junk(st.fixed_dictionaries({"text": _or_junk(WORDS)}))
QA = _or_junk(
    st.fixed_dictionaries(
        {
            "id": _or_junk(NAMES),
            "question": _or_junk(WORDS),
            "answers": _or_junk(st.lists(ANSWER, min_size=1, max_size=2)),
        }
    )
)
PARAGRAPH = _or_junk(
    st.fixed_dictionaries(
        {"context": _or_junk(WORDS), "qas": _or_junk(st.lists(QA, min_size=1, max_size=2))}
    )
)
ARTICLE = _or_junk(
    st.fixed_dictionaries(
        {
            "title": _or_junk(NAMES),
            "paragraphs": _or_junk(st.lists(PARAGRAPH, min_size=1, max_size=2)),
        }
    )
)
SQUAD_LIKE = _or_junk(
    st.fixed_dictionaries({"data": _or_junk(st.lists(ARTICLE, min_size=1, max_size=2))})
)


def _written(content: bytes, name: str) -> Path:
    folder = Path(tempfile.mkdtemp())
    path = folder / name
    path.write_bytes(content)
    return path


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(st.one_of(QUESTION_LIKE.map(json.dumps), st.text(max_size=30)), max_size=5))
def test_any_question_file_loads_or_names_the_problem(lines: list[str]) -> None:
    path = _written("\n".join(lines).encode("utf-8", "surrogatepass"), "questions.jsonl")
    try:
        questions = load_question_set(path)
    except EvaluationDataError as exc:
        assert str(path) in str(exc)
        return
    assert questions.questions
    assert all(q.text.strip() for q in questions.questions)


@settings(max_examples=100, deadline=None)
@given(content=SQUAD_LIKE)
def test_any_squad_file_loads_or_names_the_problem(content: Any) -> None:
    path = _written(json.dumps(content).encode(), "dev.json")
    try:
        benchmark = load_squad(path)
    except EvaluationDataError as exc:
        assert str(exc)
        return
    assert benchmark.questions
    assert all(isinstance(d.text, str) for d in benchmark.documents)
    assert all(q.text.strip() for q in benchmark.questions)


def _squad(context: Any = "Text.", question: Any = "Why?", title: str = "T") -> dict[str, Any]:
    qas = [{"id": "q1", "question": question, "answers": [{"text": "Text"}]}]
    return {"data": [{"title": title, "paragraphs": [{"context": context, "qas": qas}]}]}


def test_a_well_formed_squad_file_loads() -> None:
    benchmark = load_squad(_written(json.dumps(_squad()).encode(), "dev.json"))
    assert [d.text for d in benchmark.documents] == ["Text."]
    assert [q.text for q in benchmark.questions] == ["Why?"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [(_squad(context=5), "`context` must be non-empty text"),
     (_squad(context="  "), "`context` must be non-empty text"),
     (_squad(question=""), "has no text"),
     (_squad(question=["Why?"]), "has no text"),
     ({"data": [_squad()["data"][0], _squad()["data"][0]]}, "title used twice"),
     ({"data": "x"}, "wrong type")],
)  # fmt: skip
def test_bad_squad_files_name_the_problem(content: Any, problem: str) -> None:
    with pytest.raises(EvaluationDataError, match=problem):
        load_squad(_written(json.dumps(content).encode(), "dev.json"))
