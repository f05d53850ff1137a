"""The OpenAI-compatible routes, driven by the `openai` client library against a real server."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionUserMessageParam

from qa_service.api.routes.openai import ABSTENTION, MODEL_ID
from tests.qa_service.api.conftest import READ_KEY

QUESTION = "What was the objective of the Regional Expert Group Meeting?"
WORKSHOP = "Where was the Second Country Workshop held?"
FOLLOW_UP = "How many people attended it?"
OFF_TOPIC = "Who won the Nobel Prize in Physics in 1921?"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llm(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)


def _user(content: str) -> ChatCompletionUserMessageParam:
    return {"role": "user", "content": content}


def _extra(model: Any) -> dict[str, Any]:
    extra: dict[str, Any] = model.model_extra or {}
    return extra


def _cited_passage(server: str, body: dict[str, Any], route: str = "/v1/ask") -> dict[str, Any]:
    """The passage the service's own answer comes from, as its JSON API reports it."""
    response = httpx.post(f"{server}{route}", json=body, timeout=60).json()
    assert response["answerable"] is True
    rank = response["answer"]["passage_rank"]
    passage: dict[str, Any] = next(p for p in response["passages"] if p["rank"] == rank)
    return {**passage, "answer": response["answer"]["sentence"]["text"]}


def test_models_lists_the_collection(llm: openai.OpenAI) -> None:
    models = llm.models.list()
    assert [m.id for m in models.data] == [MODEL_ID]
    assert llm.models.retrieve(MODEL_ID).id == MODEL_ID


def test_a_completion_is_the_answer_with_the_citation_of_its_passage(
    llm: openai.OpenAI, server: str
) -> None:
    expected = _cited_passage(server, {"question": QUESTION})
    completion = llm.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "system", "content": "You are a helpful assistant."}, _user(QUESTION)],
    )
    assert completion.object == "chat.completion"
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    content = choice.message.content or ""
    answer, _, references = content.partition("\n\n")
    assert answer == f"{expected['answer']} [1]"
    # Exactly one citation, of the passage holding the answer sentence: title, link and span.
    assert references.startswith("[1] ") and "[2]" not in content
    assert expected["title"].replace("[", "\\[") in references
    assert f"characters {expected['start']}–{expected['end']}" in references
    citations = _extra(completion)["citations"]
    assert len(citations) == 1
    cited = citations[0]
    for field in ("document_id", "title", "source", "start", "end", "page", "text"):
        assert cited[field] == expected[field], field
    assert cited["url"] in references
    assert cited["url"].startswith(f"{server}/document?id=")
    document = httpx.get(f"{server}/v1/documents/{cited['document_id']}", timeout=30).json()
    assert document["text"][cited["start"] : cited["end"]] == cited["text"]
    assert document["text"][cited["answer_start"] : cited["answer_end"]] == expected["answer"]
    assert completion.usage is not None and completion.usage.completion_tokens == len(
        content.split()
    )


def test_a_streamed_completion_reassembles_into_the_same_content(
    llm: openai.OpenAI, server: str
) -> None:
    plain = llm.chat.completions.create(model=MODEL_ID, messages=[_user(QUESTION)])
    stream = llm.chat.completions.create(
        model=MODEL_ID,
        messages=[_user(QUESTION)],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == plain.choices[0].message.content
    stops = [c for c in chunks if c.choices and c.choices[0].finish_reason == "stop"]
    assert len(stops) == 1
    assert _extra(stops[0])["citations"] == _extra(plain)["citations"]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    # On the wire: `data:` lines of JSON, ending with [DONE].
    body = {"model": MODEL_ID, "messages": [_user(QUESTION)], "stream": True}
    raw = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=60)
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = [block.removeprefix("data: ") for block in raw.text.strip().split("\n\n")]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["choices"][0] == {
        "index": 0,
        "delta": {},
        "finish_reason": "stop",
        "logprobs": None,
    }


def test_a_follow_up_is_answered_in_the_context_of_the_conversation(
    llm: openai.OpenAI, server: str
) -> None:
    first = llm.chat.completions.create(model=MODEL_ID, messages=[_user(WORKSHOP)])
    first_content = first.choices[0].message.content or ""
    assert _extra(first)["citations"]
    messages: list[Any] = [
        _user(WORKSHOP),
        {"role": "assistant", "content": first_content},
        _user(FOLLOW_UP),
    ]
    second = llm.chat.completions.create(model=MODEL_ID, messages=messages)
    assert _extra(second)["query"] == f"{WORKSHOP} {FOLLOW_UP}"
    # The same answer and passage as `/v1/chat` gives for the conversation.
    expected = _cited_passage(server, {"messages": messages}, "/v1/chat")
    content = second.choices[0].message.content or ""
    assert content.startswith(f"{expected['answer']} [1]\n\n[1] ")
    cited = _extra(second)["citations"]
    assert [(c["document_id"], c["start"], c["end"]) for c in cited] == [
        (expected["document_id"], expected["start"], expected["end"])
    ]
    # The first turn is what found it: the follow-up alone is searched, and answered, otherwise.
    alone = llm.chat.completions.create(model=MODEL_ID, messages=[_user(FOLLOW_UP)])
    assert _extra(alone)["query"] == FOLLOW_UP
    assert _extra(alone)["citations"] != cited


def test_an_unanswerable_question_says_so_without_a_citation(llm: openai.OpenAI) -> None:
    completion = llm.chat.completions.create(model=MODEL_ID, messages=[_user(OFF_TOPIC)])
    assert completion.choices[0].message.content == ABSTENTION
    assert _extra(completion)["citations"] == []
    assert _extra(completion)["answerable"] is False


def test_an_unknown_model_is_not_found(llm: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        llm.chat.completions.create(model="gpt-4o", messages=[_user(QUESTION)])
    error = raised.value.body
    assert isinstance(error, dict) and error["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        llm.models.retrieve("gpt-4o")


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "assistant", "content": "Hello."}], None),
        ([_user(QUESTION), {"role": "assistant", "content": "An answer."}], None),
        ([_user("x" * 2001)], None),
        ([_user("   ")], None),
        ([_user(QUESTION)] * 51, "messages"),
        ([{"role": "tool", "content": "42", "tool_call_id": "a"}], "messages.0.role"),
    ],
)
def test_invalid_messages_are_openai_errors(
    llm: openai.OpenAI, messages: list[Any], param: str | None
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        llm.chat.completions.create(model=MODEL_ID, messages=messages)
    error = raised.value.body
    assert isinstance(error, dict) and error["type"] == "invalid_request_error"
    assert error["message"]
    if param is not None:
        assert error["param"] == param


def test_read_keys_guard_the_openai_routes(keyed_server: str) -> None:
    anonymous = openai.OpenAI(base_url=f"{keyed_server}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        anonymous.chat.completions.create(model=MODEL_ID, messages=[_user(QUESTION)])
    assert isinstance(raised.value.body, dict) and raised.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        anonymous.models.list()
    reader = openai.OpenAI(base_url=f"{keyed_server}/v1", api_key=READ_KEY, max_retries=0)
    completion = reader.chat.completions.create(model=MODEL_ID, messages=[_user(QUESTION)])
    assert _extra(completion)["citations"]
    assert [m.id for m in reader.models.list().data] == [MODEL_ID]
