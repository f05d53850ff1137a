"""Dependencies shared by the routers, as `Annotated` aliases.

They are `async def` because they never block: FastAPI runs a plain `def` dependency in its
threadpool, one thread hand-off per dependency per request.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Annotated

from fastapi import Depends, Request

from qa_service.api.errors import AuthenticationError, WritesDisabledError
from qa_service.errors import ServiceNotReadyError
from qa_service.service import AnsweringService


async def get_service(request: Request) -> AnsweringService:
    service: AnsweringService | None = request.app.state.service
    if service is None:
        raise ServiceNotReadyError("the model and index are still loading; try again shortly")
    return service


ServiceDep = Annotated[AnsweringService, Depends(get_service)]


def _bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def key_matches(given: str, keys: Sequence[str]) -> bool:
    """Whether `given` is one of `keys`, compared in constant time against every key (no early
    exit, so the time taken does not tell which key, or how much of one, matched)."""
    given_bytes = given.encode()
    found = False
    for key in keys:
        found |= hmac.compare_digest(given_bytes, key.encode())
    return found


def _authenticate(request: Request, keys: Sequence[str], what: str) -> None:
    token = _bearer_token(request)
    if token is None:
        raise AuthenticationError(f"{what} needs an API key: send `Authorization: Bearer <key>`")
    if not key_matches(token, keys):
        raise AuthenticationError("the API key is not valid")


async def require_write_key(request: Request) -> None:
    """Writes need one of QA_API_KEYS; with none configured, writes are disabled (403)."""
    keys: list[str] = request.app.state.api_keys
    if not keys:
        raise WritesDisabledError(
            "document writes are disabled: the server has no API key configured. Set "
            "QA_API_KEYS to one or more keys (comma-separated or a JSON list), restart it, and "
            "send `Authorization: Bearer <key>`"
        )
    _authenticate(request, keys, "writing documents")


async def require_read_key(request: Request) -> None:
    """Reads are open unless QA_READ_API_KEYS is set; then a read or a write key is needed."""
    read_keys: list[str] = request.app.state.read_api_keys
    if read_keys:
        _authenticate(request, [*read_keys, *request.app.state.api_keys], "this endpoint")


WriteAccess = Depends(require_write_key)
ReadAccess = Depends(require_read_key)
