from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from qa_service.api.schemas import MAX_MESSAGES

WORKSHOP = [
    {"role": "user", "content": "Where was the Second Country Workshop held?"},
    {"role": "assistant", "content": "It was held in Bjelasnica, BiH."},
    {"role": "user", "content": "How many people attended it?"},
]


def _events(body: str) -> list[tuple[str, Any]]:
    events = []
    for block in body.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def test_chat_answers_the_follow_up_in_context(client: TestClient) -> None:
    response = client.post("/v1/chat", json={"messages": WORKSHOP, "top_k": 3})
    assert response.status_code == 200
    body = response.json()
    assert body["question"] == "How many people attended it?"
    assert body["query"] == f"{WORKSHOP[0]['content']} How many people attended it?"
    assert body["answerable"] is True
    assert any("The 29 participants" in p["text"] for p in body["passages"])
    # Searched for the joined questions (and, densely, the follow-up too): the workshop's report.
    count = next(p for p in body["passages"] if "The 29 participants" in p["text"])
    assert body["passages"][0]["document_id"] == count["document_id"]


def test_a_standalone_question_is_searched_as_it_is(client: TestClient) -> None:
    messages = [*WORKSHOP, {"role": "assistant", "content": "29."},
                {"role": "user", "content": "What is GRETA?"}]  # fmt: skip
    body = client.post("/v1/chat", json={"messages": messages}).json()
    assert body["query"] == "What is GRETA?"
    assert "GRETA" in body["passages"][0]["text"]


@pytest.mark.parametrize("how", ["body", "accept"])
def test_streamed_chat_sends_passages_then_answer_then_done(client: TestClient, how: str) -> None:
    plain = client.post("/v1/chat", json={"messages": WORKSHOP}).json()
    body: dict[str, Any] = {"messages": WORKSHOP}
    headers = {}
    if how == "body":
        body["stream"] = True
    else:
        headers["Accept"] = "text/event-stream"
    response = client.post("/v1/chat", json=body, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _events(response.text)
    names = [name for name, _ in events]
    assert names == ["query"] + ["passage"] * len(plain["passages"]) + ["answer", "done"]
    assert events[0][1] == {"query": plain["query"]}
    passages = [data for name, data in events if name == "passage"]
    assert [p["chunk_id"] for p in passages] == [p["chunk_id"] for p in plain["passages"]]
    assert events[-2][1] == {"answerable": plain["answerable"], "answer": plain["answer"]}
    done = events[-1][1]
    assert {k: v for k, v in done.items() if k != "took_ms"} == {
        k: v for k, v in plain.items() if k != "took_ms"
    }


def test_unanswerable_chat_abstains_and_streams_the_nearest_passages(client: TestClient) -> None:
    messages = [{"role": "user", "content": "Who won the Nobel Prize in Physics in 1921?"}]
    events = _events(client.post("/v1/chat", json={"messages": messages, "stream": True}).text)
    assert ("answer", {"answerable": False, "answer": None}) in events
    assert sum(name == "passage" for name, _ in events) == 5


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ([], "at least 1 item"),
        ([{"role": "assistant", "content": "Hello"}], "last message must come from the user"),
        ([{"role": "user", "content": "   "}], "non-whitespace"),
        ([{"role": "user", "content": "x" * 2001}], "at most 2000 characters"),
        ([{"role": "assistant", "content": "x" * 8001}, {"role": "user", "content": "Why?"}],
         "at most 8000 characters"),
        ([{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Why?"}],
         "'user' or 'assistant'"),
        ([{"role": "user", "content": "Why?"}] * (MAX_MESSAGES + 1), "at most 50 items"),
    ],
)  # fmt: skip
def test_bad_conversations_are_refused_with_the_reason(
    client: TestClient, messages: list[dict[str, str]], problem: str
) -> None:
    response = client.post("/v1/chat", json={"messages": messages, "stream": True})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/json"
    assert problem in json.dumps(response.json()["detail"])
