from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.sse import EventSourceResponse, format_sse_event
from pydantic import BaseModel

from qa_service.api.deps import ServiceDep
from qa_service.api.metrics import record_answers
from qa_service.api.routes.ask import QUESTION_ERRORS
from qa_service.api.schemas import (
    AnswerEvent,
    AskResponse,
    ChatRequest,
    ChatResponse,
    QueryEvent,
)
from qa_service.query.conversation import retrieval_query

router = APIRouter(prefix="/v1", tags=["chat"])

STREAM_DESCRIPTION = (
    "With `stream: true` or `Accept: text/event-stream`: Server-Sent Events `query` "
    '(`{"query": str}`), one `passage` per passage in rank order (as in `passages`), `answer` '
    '(`{"answerable", "answer"}`), then `done` with the whole response.'
)
# One event, as FastAPI documents its own event streams (`itemSchema`): `data` is JSON text.
SSE_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["query", "passage", "answer", "done"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
}
RESPONSES: dict[int | str, dict[str, Any]] = {
    **QUESTION_ERRORS,
    200: {"content": {"text/event-stream": {"itemSchema": SSE_EVENT}},
          "description": STREAM_DESCRIPTION},
}  # fmt: skip


@router.post("/chat", response_model=ChatResponse, responses=RESPONSES)
async def chat(
    body: ChatRequest, request: Request, service: ServiceDep
) -> ChatResponse | EventSourceResponse:
    """Answer the last user message in the context of the conversation.

    A follow-up ("How many people attended it?") is searched together with the earlier
    questions it refers to; `query` shows what was searched.
    """
    question = body.messages[-1].content
    query = retrieval_query(body.turns())
    timed = await run_in_threadpool(service.ask, question, body.options(), query)
    record_answers(request, "/v1/chat", [timed.answer.answerable], question)
    response = AskResponse.from_answer(timed.answer, timed.documents, timed.took_ms)
    result = ChatResponse(**dict(response), query=query)
    if body.stream or "text/event-stream" in request.headers.get("accept", ""):
        # The answer is complete before the first event is sent, so an error is still a plain
        # JSON response with its status, never a half-written stream.
        return EventSourceResponse(
            _events(result), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
    return result


def _event(name: str, data: BaseModel) -> bytes:
    return format_sse_event(event=name, data_str=data.model_dump_json())


def _events(result: ChatResponse) -> Iterator[bytes]:
    yield _event("query", QueryEvent(query=result.query))
    for passage in result.passages:
        yield _event("passage", passage)
    yield _event("answer", AnswerEvent(answerable=result.answerable, answer=result.answer))
    yield _event("done", result)
