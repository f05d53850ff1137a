"""The service over shards answers as the service over one index: the same answers, passages,
highlights, citations and abstentions, through the same API, for MiniLM and for e5 (whose
lexicon and acronyms are summed over the shards). The shards are searchers in this process;
tests/qa_service/distributed/test_serving.py puts them on a Ray cluster."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from qa_service.api import create_app
from qa_service.api.schemas import AskResponse
from qa_service.config import Settings
from qa_service.distributed.service import ShardedService
from qa_service.query.pipeline import AskOptions
from qa_service.query.retrieval import Filters
from qa_service.query.sharded import ShardSearcher
from qa_service.service import QAService, TimedAnswer
from tests.qa_service.query.test_sharded import OFF_TOPIC, split

MULTILINGUAL = [
    "Koliko je djece bilo žrtava trgovine ljudima u Srbiji?",  # BCS: read through the lexicon
    "Cilat janë rekomandimet e GRETA për Shqipërinë?",  # Albanian
]
SCORES = {"score", "dense_score", "lexical_score", "reader_score"}


def sharded(service: QAService, groups: int) -> ShardedService:
    ids = sorted(service.index.documents)
    shards, terms = split(service.index, [ids[n::groups] for n in range(groups)])
    searchers = [ShardSearcher(s, t) for s, t in zip(shards, terms, strict=True)]
    return ShardedService(
        searchers, service.encoder.encode_queries, None, service.top_k, service.mode,
        reader=service.reader,
    )  # fmt: skip


def response(timed: TimedAnswer) -> dict[str, Any]:
    return AskResponse.from_answer(timed.answer, timed.documents, 0.0).model_dump()


def assert_same(mine: dict[str, Any], theirs: dict[str, Any]) -> None:
    """Equal, scores to 1e-6: a shard's cosines come from a smaller matrix product."""
    assert mine.keys() == theirs.keys()
    for key, value in mine.items():
        if key == "passages":
            assert len(value) == len(theirs[key])
            for a, b in zip(value, theirs[key], strict=True):
                assert_same(a, b)
        elif key in SCORES and value is not None:
            assert value == pytest.approx(theirs[key], abs=2e-6), key
        else:
            assert value == theirs[key], key


@pytest.mark.parametrize("name", ["service", "e5_service", "read_service"])
def test_shards_answer_as_one_index(
    request: pytest.FixtureRequest, dev_questions: list[dict[str, Any]], name: str
) -> None:
    service: QAService = request.getfixturevalue(name)
    questions = [q["question"] for q in dev_questions] + OFF_TOPIC + MULTILINGUAL
    answers = service.ask_many(questions)
    assert any(a.answer.answerable for a in answers)
    assert any(not a.answer.answerable for a in answers)
    read = [p["reader_score"] for a in answers for p in response(a)["passages"]]
    assert any(score is not None for score in read) == (service.reader is not None)
    for groups in (2, 3):
        over_shards = sharded(service, groups)
        for mine, theirs in zip(over_shards.ask_many(questions), answers, strict=True):
            assert_same(response(mine), response(theirs))
        # A follow-up searched with the question before it, and a filter.
        query = f"{questions[0]} {questions[1]}"
        assert_same(
            response(over_shards.ask(questions[1], query=query)),
            response(service.ask(questions[1], query=query)),
        )
        only = AskOptions(top_k=3, filters=Filters(frozenset(sorted(service.index.documents)[:2])))
        assert_same(
            response(over_shards.ask(questions[0], only)), response(service.ask(questions[0], only))
        )


def test_the_api_over_shards(settings: Settings, service: QAService) -> None:
    """Documents, their texts and sentences, and readiness, as over one index; writes are
    refused with the way to add documents."""
    over_shards = sharded(service, 2)
    with (
        TestClient(create_app(settings, over_shards)) as mine,
        TestClient(create_app(settings, service)) as theirs,
    ):
        listed = mine.get("/v1/documents").json()["documents"]
        expected = theirs.get("/v1/documents").json()["documents"]
        assert sorted(listed, key=lambda d: d["id"]) == sorted(expected, key=lambda d: d["id"])
        page = mine.get("/v1/documents", params={"offset": 1, "limit": 3}).json()
        assert page == {"total": 5, "documents": listed[1:4]}
        some = expected[0]["id"]
        assert (
            mine.get(f"/v1/documents/{some}").json() == theirs.get(f"/v1/documents/{some}").json()
        )
        assert mine.get("/v1/documents/no-such-document").status_code == 404
        ready = mine.get("/readyz").json()
        assert ready == theirs.get("/readyz").json()
        keyless = mine.delete(f"/v1/documents/{some}")
        assert keyless.status_code == 403  # no write keys configured: writes are off anyway
    with pytest.raises(Exception, match="rebuild the shards"):
        over_shards.remove_documents([some])
