"""Dependencies shared by the routers, as `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from qa_service.errors import ServiceNotReadyError
from qa_service.service import QAService


def get_service(request: Request) -> QAService:
    service: QAService | None = request.app.state.service
    if service is None:
        raise ServiceNotReadyError("the model and index are still loading; try again shortly")
    return service


ServiceDep = Annotated[QAService, Depends(get_service)]
