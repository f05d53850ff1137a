"""Request ids, access logs, body limits and admission control, as pure ASGI middleware.

Pure ASGI (not Starlette's `BaseHTTPMiddleware`) so that the Server-Sent Events of `/v1/chat`
pass through message by message, unbuffered. From the outside in (`create_app` adds them):

- `RequestContextMiddleware`: a request id (the client's `X-Request-ID` when it is a sane token,
  else a new one) on every response, one access log line per request and the request metrics;
- `CORSMiddleware`, when configured, so that the refusals below still carry CORS headers;
- `RateLimitMiddleware`, when configured: at most N requests per client address and window, the
  rest get 429;
- `AdmissionMiddleware`: at most N question requests in flight, the rest get 503 at once;
- `BodySizeLimitMiddleware`: 413 for a body over the cap, before the app reads or parses it.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from limits import parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.responses import JSONResponse
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qa_service.api.schemas import OpenAIError

if TYPE_CHECKING:
    from qa_service.api.metrics import Metrics

access_logger = logging.getLogger("qa_service.access")

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_KEY = REQUEST_ID_HEADER.lower().encode("latin-1")
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# The id of the request being served, for log records emitted while serving it (the JSON
# formatter adds it). Each ASGI request runs in its own task, so a value never leaks to another.
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

QUESTION_PATHS = frozenset({"/v1/ask", "/v1/ask/batch", "/v1/chat"})
# The OpenAI-compatible routes (routes/openai.py), whose clients read only OpenAI's error shape.
OPENAI_PATHS = ("/v1/chat/completions", "/v1/models")  # `/v1/models/{id}` too
_OPENAI_CODES = {413: "request_too_large", 429: "rate_limit_exceeded", 503: "unavailable"}
MAX_BODY_BYTES = 1024 * 1024
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def refusal(
    scope: Scope, status: int, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """A request refused before it reaches a route: `{"detail": …}` as the app's own errors,
    or OpenAI's error object on the OpenAI-compatible routes."""
    body: dict[str, Any] = {"detail": message}
    if scope["path"].startswith(OPENAI_PATHS):
        body = OpenAIError.of(status, message, code=_OPENAI_CODES.get(status)).model_dump()
    return JSONResponse(body, status_code=status, headers=headers)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value)
    return None


def log_path(path: str) -> str:
    """`path` percent-encoded for a log line, so that a crafted path cannot forge one."""
    return quote(path, safe="/:@!$&'()*+,;=~")


def request_id_for(scope: Scope) -> str:
    """The client's `X-Request-ID` if it is at most 64 of [A-Za-z0-9._-], else a new uuid4."""
    given = _header(scope, _REQUEST_ID_KEY)
    if given is not None:
        text = given.decode("latin-1")
        if _SANE_REQUEST_ID.fullmatch(text):
            return text
    return uuid.uuid4().hex


def route_template(scope: Scope) -> str:
    """The matched route's path template (`/v1/documents/{document_id:path}`), never the raw
    path, so that ids do not become metric labels; "unmatched" when no route matches.

    A request refused before routing (413, 503) is matched against the app's routes here.
    """
    route = scope.get("route")
    if route is None:
        route = next(
            (r for r in _flat_routes(getattr(scope.get("app"), "routes", ()))
             if r.matches(scope)[0] is Match.FULL),
            None,
        )  # fmt: skip
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else "unmatched"


def _flat_routes(routes: Iterable[Any]) -> Iterator[Any]:
    for route in routes:
        # Recent FastAPI versions keep an included router whole, behind a wrapper.
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _flat_routes(included.routes)
        else:
            yield route


class RequestContextMiddleware:
    """Request id, access log line and request metrics for every HTTP request.

    An exception that escapes the app before a response started becomes a JSON 500 here, so that
    it too carries the request id; the exception is re-raised for the app's error handler to log
    and for the server to report.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_for(scope)
        request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = [*message.get("headers", []), (_REQUEST_ID_KEY, request_id.encode())]
                message = {**message, "headers": headers}
            await send(message)

        if self.metrics is not None:
            self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if not response_started:
                await JSONResponse({"detail": "internal error"}, status_code=500)(
                    scope, receive, send_with_id
                )
            raise
        finally:
            seconds = time.perf_counter() - started
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            path = log_path(scope["path"])
            access_logger.info(
                "%s %s %d %.1f ms request_id=%s", method, path, status, seconds * 1000, request_id,
                extra={"request_id": request_id, "method": method, "path": path,
                       "status": status, "duration_ms": round(seconds * 1000, 1)},
            )  # fmt: skip
            if self.metrics is not None:
                self.metrics.in_flight.dec()
                self.metrics.observe_request(method, route_template(scope), status, seconds)


class BodyLimits:
    """The body cap for a path: the longest configured prefix that matches, else the default.

    The hook for endpoints that need a larger cap (uploads):
    `BodyLimits(1 << 20, {"/v1/documents/upload": 100 << 20})`.
    """

    def __init__(self, default: int = MAX_BODY_BYTES, by_prefix: Mapping[str, int] | None = None):
        self.default = default
        # Longest first, so that the most specific prefix wins.
        self.by_prefix = sorted((by_prefix or {}).items(), key=lambda item: -len(item[0]))

    def for_path(self, path: str) -> int:
        for prefix, limit in self.by_prefix:
            base = prefix.rstrip("/")
            if path == base or path.startswith(base + "/"):
                return limit
        return self.default


class _BodyTooLarge(Exception):
    pass


def _too_large(scope: Scope, limit: int) -> JSONResponse:
    return refusal(scope, 413, f"request body is larger than the limit of {limit} bytes")


class BodySizeLimitMiddleware:
    """413 for a body over its cap, before the app parses it.

    A declared `Content-Length` over the cap is refused without reading anything. Without one
    (chunked) the bytes are counted as the app reads them; past the cap, reading fails and
    whatever the app would answer to that failure is replaced by the 413.
    """

    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.for_path(scope["path"])
        declared = _header(scope, b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            await _too_large(scope, limit)(scope, receive, send)
            return

        received = 0
        exceeded = False
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if exceeded and not response_started:
                return  # the app's answer to a body it could not read; ours is sent below
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not response_started:
            await _too_large(scope, limit)(scope, receive, send)


class AdmissionLimiter:
    """Counts question requests in flight against a limit.

    Only the event loop touches it (from the middleware), so a plain counter is enough.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    def try_acquire(self) -> bool:
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        self.in_flight -= 1


class AdmissionMiddleware:
    """At most `limiter.limit` question requests in flight; beyond it, 503 with `Retry-After`.

    The slot is taken before the body is read and held until the last byte of the response
    (a streamed chat included) is sent, so that excess load is refused at once instead of
    queueing for the model.
    """

    def __init__(
        self,
        app: ASGIApp,
        limiter: AdmissionLimiter,
        paths: Iterable[str] = QUESTION_PATHS,
        retry_after_seconds: int = 1,
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.paths = frozenset(paths)
        self.retry_after = str(retry_after_seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        if not self.limiter.try_acquire():
            busy = refusal(
                scope, 503, "too many questions in flight; try again shortly",
                {"Retry-After": self.retry_after},
            )  # fmt: skip
            await busy(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.limiter.release()


class RateLimitMiddleware:
    """Requests per client address to the API (`/v1/`), over a moving window; beyond the limit,
    429 with `Retry-After` (seconds until the oldest counted request leaves the window).

    The address is the connection's peer; behind a reverse proxy, run uvicorn with
    `--forwarded-allow-ips` so that it is the client's. Counts live in this process's memory.
    """

    def __init__(self, app: ASGIApp, limits: str, prefix: str = "/v1/") -> None:
        self.app = app
        self.items = parse_many(limits)
        self.prefix = prefix
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] == "OPTIONS"  # CORS preflights are the browser's, not the client's
            or not scope["path"].startswith(self.prefix)
        ):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        key = client[0] if client else "unknown"
        # Every limit is tested before any is counted, so a refused request counts for none.
        refused = [item for item in self.items if not self.limiter.test(item, key)]
        if not refused:
            for item in self.items:
                self.limiter.hit(item, key)
            await self.app(scope, receive, send)
            return
        reset = max(self.limiter.get_window_stats(item, key).reset_time for item in refused)
        retry_after = max(1, math.ceil(reset - time.time()))
        limit = ", ".join(str(item) for item in refused)
        response = refusal(
            scope, 429, f"rate limit exceeded ({limit} per client); try again in {retry_after} s",
            {"Retry-After": str(retry_after)},
        )  # fmt: skip
        await response(scope, receive, send)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the request id when there is
    one, the access fields and any exception."""

    FIELDS = ("request_id", "method", "path", "status", "duration_ms", "endpoint", "question",
              "questions")  # fmt: skip

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in self.FIELDS:
            if hasattr(record, field):
                entry[field] = getattr(record, field)
        if "request_id" not in entry and (request_id := request_id_var.get()) is not None:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(json_lines: bool = False, level: int = logging.INFO) -> None:
    """Log to stderr, as text or one JSON object per line, replacing any handlers the root
    logger had."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
