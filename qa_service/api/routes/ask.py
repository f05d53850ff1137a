from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from qa_service.api.deps import ServiceDep
from qa_service.api.metrics import record_answers
from qa_service.api.schemas import (
    AskRequest,
    AskResponse,
    BatchRequest,
    BatchResponse,
    ErrorResponse,
)

router = APIRouter(prefix="/v1", tags=["questions"])
QUESTION_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": "Request body over QA_MAX_BODY_BYTES."},
    503: {
        "model": ErrorResponse,
        "description": "Model or index not loaded yet, or too many questions in flight "
        "(QA_MAX_CONCURRENT_REQUESTS); retry after `Retry-After` seconds.",
    },
}


# The endpoints are `async def` and hand only the model and search work to the threadpool:
# as plain `def`, FastAPI would also validate the response in a second thread hand-off.


@router.post("/ask", responses=QUESTION_ERRORS)
async def ask(body: AskRequest, service: ServiceDep, request: Request) -> AskResponse:
    """Answer a question with the best-matching passages, each cited to its exact span."""
    timed = await run_in_threadpool(service.ask, body.question, body.options())
    record_answers(request, "/v1/ask", [timed.answer.answerable], body.question)
    return AskResponse.from_answer(timed.answer, timed.documents, timed.took_ms)


@router.post("/ask/batch", responses=QUESTION_ERRORS)
async def ask_batch(body: BatchRequest, service: ServiceDep, request: Request) -> BatchResponse:
    """Answer up to 256 questions in one call; they are encoded together, so it is much faster
    per question than separate calls."""
    timed = await run_in_threadpool(service.ask_many, body.questions, body.options())
    record_answers(request, "/v1/ask/batch", [t.answer.answerable for t in timed])
    return BatchResponse(
        results=[AskResponse.from_answer(t.answer, t.documents, t.took_ms) for t in timed]
    )
