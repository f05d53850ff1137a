"""Domain errors to HTTP statuses, in one place. Bodies are `{"detail": str}`, never a traceback.

Invalid input is a 422 whose errors (FastAPI's `type`, `loc`, `msg`, `ctx`) quote the input only
in short, so that a 1 MB question is not sent back. An unexpected error is a 500 `internal
error`, logged with its traceback, whose messages are left out unless `QA_LOG_QUESTIONS` is on:
an exception's message can quote the question.
"""

from __future__ import annotations

import json
import logging
import math
import re
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from qa_service.api.middleware import log_path
from qa_service.errors import (
    ClusterError,
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
    ClusterError: 503,
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


def _unreadable_json(exc: ValueError | RecursionError) -> dict[str, Any]:
    """The 422 error for a body that json.loads cannot read, in FastAPI's form."""
    position: tuple[int, ...] = ()
    if isinstance(exc, UnicodeDecodeError):
        reason, position = "the body is not UTF-8 text", (exc.start,)
    elif isinstance(exc, json.JSONDecodeError):
        reason, position = exc.msg, (exc.pos,)
    elif isinstance(exc, RecursionError):
        reason = "the JSON is nested too deeply"
    elif "digits" in str(exc):  # Python reads integers of at most 4,300 digits
        reason = "a number has too many digits"
    else:
        reason = "the JSON cannot be read"
    return {"type": "json_invalid", "loc": ("body", *position), "msg": "JSON decode error",
            "input": {}, "ctx": {"error": reason}}  # fmt: skip


def json_body(body: bytes) -> Any:
    """A JSON request body read as FastAPI reads one (NaN and Infinity included, for the models
    to refuse by name), or a RequestValidationError, as FastAPI raises, for a 422."""
    try:
        return json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise RequestValidationError([_unreadable_json(exc)]) from None


async def _http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's own, except that a JSON body that json.loads cannot read (not UTF-8, a number
    of too many digits, nested too deeply) is a 422 like any malformed JSON body: FastAPI
    answers it with a bare 400."""
    assert isinstance(exc, HTTPException)
    cause = exc.__cause__
    if exc.status_code == 400 and isinstance(cause, ValueError | RecursionError):
        return await _validation_error(request, RequestValidationError([_unreadable_json(cause)]))
    return await http_exception_handler(request, exc)


# What a 422 quotes of the input: a string's first characters, containers (to one level) of a
# few items, sizes otherwise; at most a few errors.
MAX_INPUT_CHARS = 80
MAX_INPUT_ITEMS = 8
MAX_MSG_CHARS = 300
MAX_CTX_CHARS = 200
MAX_ERRORS = 10
_SURROGATES = re.compile("[\ud800-\udfff]")


def _short_text(text: str, limit: int = MAX_INPUT_CHARS) -> str:
    # A lone surrogate cannot be encoded in a response: it is shown as U+FFFD.
    head = _SURROGATES.sub("\ufffd", text[:limit])
    return head if len(text) <= limit else f"{head}… [{len(text):,} characters]"


def _short(value: Any, depth: int = 0) -> Any:
    """`value`, as much as a 422 body may quote of it, in JSON's types."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 10**15 else _short_text(str(value), 20)
    if isinstance(value, float):
        return value if math.isfinite(value) else json.dumps(value)  # NaN, Infinity, -Infinity
    if isinstance(value, str):
        return _short_text(value)
    if isinstance(value, bytes | bytearray):  # as text, with bytes that are not UTF-8 escaped
        return _short_text(bytes(value).decode("utf-8", "backslashreplace"))
    if isinstance(value, Mapping):
        if depth > 0 or len(value) > MAX_INPUT_ITEMS:
            return f"{{{len(value):,} keys}}"
        return {_short_text(str(k)): _short(v, depth + 1) for k, v in value.items()}
    if isinstance(value, Sequence | set | frozenset):
        if depth > 0 or len(value) > MAX_INPUT_ITEMS:
            return f"[{len(value):,} items]"
        return [_short(v, depth + 1) for v in value]
    return _short_text(str(value))


def short_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """FastAPI's validation errors, with the input they quote shortened (see `_short`)."""
    shown: list[dict[str, Any]] = []
    for error in errors[:MAX_ERRORS]:
        loc = [part if isinstance(part, int) else _short_text(str(part))
               for part in error.get("loc", ())]  # fmt: skip
        msg = _short_text(str(error.get("msg", "")), MAX_MSG_CHARS)
        entry: dict[str, Any] = {"type": str(error.get("type", "")), "loc": loc, "msg": msg}
        if "input" in error:
            entry["input"] = _short(error["input"])
        ctx = error.get("ctx")
        if isinstance(ctx, Mapping):
            small = {str(k): _short(v, 1) for k, v in ctx.items()}
            if len(json.dumps(small, ensure_ascii=False)) <= MAX_CTX_CHARS:
                entry["ctx"] = small
        shown.append(entry)
    if len(errors) > MAX_ERRORS:
        more = len(errors) - MAX_ERRORS
        shown.append({"type": "too_many_errors", "loc": [], "msg": f"and {more:,} more errors"})
    return shown


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": short_errors(exc.errors())}, status_code=422)


_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    module = "" if cls.__module__ == "builtins" else f"{cls.__module__}."
    return module + cls.__qualname__


def redacted_traceback(exc: BaseException) -> str:
    """The traceback Python would print for `exc` and the exceptions it came from, with each
    exception's message (and notes) left out: the frames and types say where and what failed."""
    chain = [exc]
    while len(chain) < 100:
        last = chain[-1]
        older = last.__cause__ or (None if last.__suppress_context__ else last.__context__)
        if older is None or older in chain:
            break
        chain.append(older)
    parts: list[str] = []
    for newer, error in zip([None, *chain], chain, strict=False):
        block = f"{_type_name(error)}: [message redacted]\n"
        if error.__traceback__ is not None:
            frames = "".join(traceback.format_tb(error.__traceback__))
            block = f"Traceback (most recent call last):\n{frames}{block}"
        if newer is not None:
            block += _CAUSE if newer.__cause__ is error else _CONTEXT
        parts.append(block)
    return "".join(reversed(parts))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """Logs the traceback with the request id; its messages only with QA_LOG_QUESTIONS."""
    request_id = request.scope.get("state", {}).get("request_id")
    where = (request.method, log_path(request.scope["path"]), request_id)
    if getattr(request.app.state, "log_questions", False):
        logger.error("unhandled error on %s %s request_id=%s", *where, exc_info=exc)
    else:
        logger.error(
            "unhandled error on %s %s request_id=%s (exception messages are not logged unless "
            "QA_LOG_QUESTIONS is on)\n%s", *where, redacted_traceback(exc).rstrip("\n"),
        )  # fmt: skip
    return JSONResponse({"detail": "internal error"}, status_code=500)


class _RedactServerTracebacks(logging.Filter):
    """uvicorn logs every exception of a request once more ("Exception in ASGI application"),
    with its messages, after `_unexpected` has: that line keeps the frames, not the messages."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and str(record.msg).startswith("Exception in ASGI application"):
            traceback_text = redacted_traceback(error).rstrip("\n")
            record.msg = f"Exception in ASGI application (messages left out)\n{traceback_text}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


_SERVER_FILTER = _RedactServerTracebacks()


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(QAError, _qa_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    server_logger = logging.getLogger("uvicorn.error")
    if _SERVER_FILTER not in server_logger.filters:
        server_logger.addFilter(_SERVER_FILTER)
