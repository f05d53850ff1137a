from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from qa_service.api.deps import ServiceDep
from qa_service.api.schemas import (
    AskRequest,
    AskResponse,
    BatchRequest,
    BatchResponse,
    ErrorResponse,
)

router = APIRouter(prefix="/v1", tags=["questions"])
NOT_READY: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorResponse, "description": "Model or index not loaded yet."}
}


@router.post("/ask", responses=NOT_READY)
def ask(body: AskRequest, service: ServiceDep) -> AskResponse:
    """Answer a question with the best-matching passages, each cited to its exact span."""
    filters = body.filters.to_filters() if body.filters else None
    timed = service.ask(body.question, body.top_k, body.min_score, body.mode, filters)
    return AskResponse.from_answer(timed.answer, service.index.documents, timed.took_ms)


@router.post("/ask/batch", responses=NOT_READY)
def ask_batch(body: BatchRequest, service: ServiceDep) -> BatchResponse:
    """Answer up to 256 questions in one call; they are encoded together, so it is much faster
    per question than separate calls."""
    filters = body.filters.to_filters() if body.filters else None
    timed = service.ask_many(body.questions, body.top_k, body.min_score, body.mode, filters)
    documents = service.index.documents
    return BatchResponse(
        results=[AskResponse.from_answer(t.answer, documents, t.took_ms) for t in timed]
    )
