from __future__ import annotations

from fastapi import APIRouter

from qa_service.api.deps import ServiceDep
from qa_service.api.schemas import AskRequest, AskResponse, ErrorResponse

router = APIRouter(prefix="/v1", tags=["questions"])


@router.post(
    "/ask",
    responses={503: {"model": ErrorResponse, "description": "Model or index not loaded yet."}},
)
def ask(body: AskRequest, service: ServiceDep) -> AskResponse:
    """Answer a question with the best-matching passages, each cited to its exact span."""
    timed = service.ask(body.question, body.top_k, body.min_score)
    return AskResponse.from_answer(timed.answer, service.index.documents, timed.took_ms)
