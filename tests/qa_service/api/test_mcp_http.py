"""The MCP tools over streamable HTTP at /mcp of a real server, with the SDK's own client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp_types import CallToolResult

from tests.qa_service.api.conftest import READ_KEY

QUESTION = "What was the objective of the Regional Expert Group Meeting?"
OFF_TOPIC = "Who won the Nobel Prize in Physics in 1921?"

pytestmark = pytest.mark.slow


@asynccontextmanager
async def mcp_session(url: str, key: str | None = None) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {key}"} if key else None
    async with (
        create_mcp_http_client(headers=headers) as http,
        streamable_http_client(f"{url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def structured(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    content: dict[str, Any] | None = result.structured_content
    assert content is not None
    return content


async def exercise_tools(session: ClientSession) -> dict[str, Any]:
    """List and call every tool; the checks hold for any transport. Returns the ask result."""
    tools = {tool.name: tool for tool in (await session.list_tools()).tools}
    assert set(tools) == {"search", "ask", "get_document"}
    assert tools["search"].input_schema["required"] == ["question"]

    found = structured(await session.call_tool("search", {"question": QUESTION, "top_k": 3}))
    assert found["answerable"] is True and len(found["passages"]) == 3
    assert [p["rank"] for p in found["passages"]] == [1, 2, 3]
    assert found["passages"][0]["score"] >= found["passages"][1]["score"]

    answered = structured(await session.call_tool("ask", {"question": QUESTION}))
    assert answered["answerable"] is True and answered["answer"]
    (citation,) = answered["citations"]
    assert answered["content"].startswith(f"{answered['answer']} [1]")

    # The citation points into the text get_document returns, whole or as the span.
    args = {"document_id": citation["document_id"]}
    whole = structured(await session.call_tool("get_document", args))
    assert whole["text"][citation["start"] : citation["end"]] == citation["text"]
    span = {**args, "start": citation["answer_start"], "end": citation["answer_end"]}
    sentence = structured(await session.call_tool("get_document", span))
    assert sentence["text"] == answered["answer"]

    abstained = structured(await session.call_tool("ask", {"question": OFF_TOPIC}))
    assert abstained == {
        "answerable": False,
        "answer": None,
        "citations": [],
        "content": "The documents do not answer this question.",
    }
    missing = await session.call_tool("get_document", {"document_id": "no-such-document"})
    assert missing.is_error
    too_far = await session.call_tool("get_document", {**args, "start": 0, "end": 10**9})
    assert too_far.is_error
    bad = await session.call_tool("search", {"question": QUESTION, "top_k": 0})
    assert bad.is_error
    # The text content is the same result as JSON, for clients that read only text.
    plain = await session.call_tool("ask", {"question": QUESTION})
    assert json.loads(plain.content[0].text) == structured(plain)  # type: ignore[union-attr]
    return answered


def test_tools_over_http(server: str) -> None:
    async def run() -> dict[str, Any]:
        async with mcp_session(server) as session:
            return await exercise_tools(session)

    answered = anyio.run(run)
    body = {"question": QUESTION}
    expected = httpx.post(f"{server}/v1/ask", json=body, timeout=60).json()
    assert answered["answer"] == expected["answer"]["sentence"]["text"]


def test_http_transport_needs_a_read_key_when_they_are_set(keyed_server: str) -> None:
    response = httpx.post(f"{keyed_server}/mcp", json={}, timeout=30)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    wrong = httpx.post(
        f"{keyed_server}/mcp", json={}, headers={"Authorization": "Bearer nope"}, timeout=30
    )
    assert wrong.status_code == 401

    async def run() -> list[str]:
        async with mcp_session(keyed_server, READ_KEY) as session:
            answered = structured(await session.call_tool("ask", {"question": QUESTION}))
            assert answered["answerable"] is True
            return [tool.name for tool in (await session.list_tools()).tools]

    assert sorted(anyio.run(run)) == ["ask", "get_document", "search"]
