"""Domain errors to HTTP statuses, in one place. Bodies are `{"detail": str}`, never a traceback."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from qa_service.errors import (
    DocumentExistsError,
    DocumentNotFoundError,
    IndexBusyError,
    IndexCorruptError,
    IndexNotFoundError,
    IndexReplacedError,
    IndexStaleError,
    InvalidDocumentError,
    LastDocumentError,
    QAError,
    ReadOnlyError,
    ServiceBusyError,
    ServiceNotReadyError,
    StorageError,
    UnsupportedDocumentTypeError,
)

logger = logging.getLogger(__name__)


class AuthenticationError(QAError):
    """No API key, or a wrong one, for an endpoint that needs one."""


class WritesDisabledError(QAError):
    """No write API key is configured, so nobody may write."""


STATUS_FOR: dict[type[QAError], int] = {
    DocumentNotFoundError: 404,
    ServiceNotReadyError: 503,
    ServiceBusyError: 503,
    IndexNotFoundError: 503,
    IndexCorruptError: 503,
    IndexStaleError: 503,
    IndexBusyError: 503,
    AuthenticationError: 401,
    WritesDisabledError: 403,
    ReadOnlyError: 403,
    DocumentExistsError: 409,
    LastDocumentError: 409,
    IndexReplacedError: 409,
    UnsupportedDocumentTypeError: 415,
    InvalidDocumentError: 422,
    StorageError: 500,
}
RETRY_AFTER_SECONDS = "5"


def _status(exc: QAError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_FOR:
            return STATUS_FOR[cls]
    return 400


async def _qa_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QAError)
    status = _status(exc)
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if status == 503 else None
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's own, except that a JSON body that is not UTF-8 is a 422 like any malformed
    JSON body (FastAPI answers it with a bare 400)."""
    assert isinstance(exc, HTTPException)
    cause = exc.__cause__
    if exc.status_code == 400 and isinstance(cause, UnicodeDecodeError):
        error = {"type": "json_invalid", "loc": ("body", cause.start), "msg": "JSON decode error",
                 "input": {}, "ctx": {"error": "the body is not UTF-8 text"}}  # fmt: skip
        return await request_validation_exception_handler(request, RequestValidationError([error]))
    return await http_exception_handler(request, exc)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": "internal error"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(QAError, _qa_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
