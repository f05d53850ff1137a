from __future__ import annotations

from fastapi import APIRouter, Request, Response

from qa_service.api.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> Health:
    """The process is alive (it may still be loading)."""
    return Health(status="ok")


@router.get("/readyz", responses={503: {"model": Readiness}})
async def readyz(request: Request, response: Response) -> Readiness:
    """Ready once the model and index are loaded; not ready again while shutting down."""
    service = request.app.state.service
    if service is None or request.app.state.shutting_down:
        response.status_code = 503
        return Readiness(ready=False)
    return Readiness(
        ready=True,
        documents=len(service.index.documents),
        passages=len(service.index.passages),
        model=service.model,
        reader=service.reader.reader.name if service.reader else None,
        index_problem=service.index_problem,
    )
