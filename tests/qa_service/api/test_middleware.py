"""Request ids, access logs, body limits and admission control, over the real app and service."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, Protocol

import httpx
import pytest
from fastapi.testclient import TestClient

from qa_service.api import create_app
from qa_service.api.middleware import BodyLimits, JsonFormatter, request_id_var
from qa_service.config import Settings
from qa_service.service import QAService
from tests.qa_service.conftest import server_log

QUESTION = "Who took part in the Regional Expert Group Meeting in Skopje?"
CHAT = {"messages": [{"role": "user", "content": "What is GRETA?"}]}
TWO_MIB = 2 * 1024 * 1024
QUESTION_REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("/v1/ask", {"question": QUESTION}),
    ("/v1/ask/batch", {"questions": [QUESTION]}),
    ("/v1/chat", CHAT),
]


@pytest.fixture(scope="module")
def limited(settings: Settings, service: QAService) -> Iterator[TestClient]:
    """An app that admits one question request at a time."""
    configured = settings.model_copy(update={"max_concurrent_requests": 1})
    with TestClient(create_app(configured, service)) as test_client:
        yield test_client


class _Response(Protocol):
    """What the tests read of a response, from the test client or from httpx."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    def json(self) -> Any: ...


# Request ids


def test_a_request_id_is_made_and_returned(client: TestClient) -> None:
    first = client.get("/healthz").headers["x-request-id"]
    second = client.get("/healthz").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert first != second


@pytest.mark.parametrize("given", ["abc-123", "A.b_c-9", "x" * 64])
def test_a_sane_client_request_id_is_kept(client: TestClient, given: str) -> None:
    response = client.post("/v1/ask", json={"question": QUESTION}, headers={"X-Request-ID": given})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == given


@pytest.mark.parametrize("given", [b"x" * 65, b"a b", b"id;drop", "é".encode(), b""])
def test_an_odd_client_request_id_is_replaced(client: TestClient, given: bytes) -> None:
    response = client.get("/healthz", headers={b"X-Request-ID": given})
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


def test_errors_carry_the_request_id_too(client: TestClient) -> None:
    headers = {"X-Request-ID": "err-1"}
    assert client.get("/v1/documents/missing", headers=headers).headers["x-request-id"] == "err-1"
    invalid = client.post("/v1/ask", json={"question": ""}, headers=headers)
    assert invalid.status_code == 422
    assert invalid.headers["x-request-id"] == "err-1"


def test_an_unexpected_error_is_a_json_500_with_the_request_id(
    settings: Settings, service: QAService, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("/secret/path exploded")

    monkeypatch.setattr(service, "ask", broken)
    with TestClient(create_app(settings, service), raise_server_exceptions=False) as client:
        response = client.post(
            "/v1/ask", json={"question": "what exploded?"}, headers={"X-Request-ID": "boom-1"}
        )
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error"}
    assert response.headers["x-request-id"] == "boom-1"


# Access log and question text


def _access_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "qa_service.access"]


def test_one_access_line_per_request(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    client.get("/v1/documents/missing", headers={"X-Request-ID": "log-1"})
    [line] = _access_lines(caplog)
    assert line.levelno == logging.INFO
    message = line.getMessage()
    assert message.startswith("GET /v1/documents/missing 404 ")
    assert message.endswith(" ms request_id=log-1")
    assert line.__dict__["status"] == 404
    assert line.__dict__["duration_ms"] >= 0


def test_a_crafted_path_cannot_forge_a_log_line(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    client.get("/v1/documents/x%0A2024-01-01 INFO forged")
    [line] = _access_lines(caplog)
    assert "\n" not in line.getMessage()
    assert "/v1/documents/x%0A2024-01-01%20INFO%20forged" in line.getMessage()


def test_question_text_is_not_logged_by_default(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "Which victim identification secret question xyzzy?"
    client.post("/v1/ask", json={"question": secret})
    client.post("/v1/ask/batch", json={"questions": [secret, QUESTION]})
    chat = {"messages": [{"role": "user", "content": secret}], "stream": True}
    client.post("/v1/chat", json=chat)
    client.post("/v1/ask", json={"question": secret, "top_k": 999})  # a 422
    assert len(_access_lines(caplog)) == 4
    assert "xyzzy" not in caplog.text
    assert not [r for r in caplog.records if "xyzzy" in r.getMessage()]


def test_question_text_is_logged_when_the_operator_enables_it(
    settings: Settings, service: QAService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    configured = settings.model_copy(update={"log_questions": True})
    secret = "Which victim identification secret question xyzzy?"
    with TestClient(create_app(configured, service)) as client:
        client.post("/v1/ask", json={"question": secret}, headers={"X-Request-ID": "q-1"})
        client.post("/v1/ask/batch", json={"questions": [secret, QUESTION]})
        messages = [{"role": "user", "content": "What is GRETA?"},
                    {"role": "assistant", "content": "A group of experts."},
                    {"role": "user", "content": f"{secret}\nsecond line"}]  # fmt: skip
        client.post("/v1/chat", json={"messages": messages})
    logged = [r for r in caplog.records if r.name == "qa_service.questions"]
    assert [r.__dict__["endpoint"] for r in logged] == ["/v1/ask", "/v1/ask/batch", "/v1/chat"]
    assert all(r.levelno == logging.INFO for r in logged)
    assert logged[0].__dict__["question"] == secret
    assert logged[0].__dict__["request_id"] == "q-1"
    assert logged[1].__dict__["questions"] == 2
    assert "xyzzy" not in logged[1].getMessage()
    assert logged[2].__dict__["question"] == f"{secret}\nsecond line"
    assert "\n" not in logged[2].getMessage()  # repr: one question, one line


def test_json_log_lines() -> None:
    formatter = JsonFormatter()
    record = logging.LogRecord("qa_service.access", logging.INFO, __file__, 1,
                               "GET %s %d", ("/healthz", 200), None)  # fmt: skip
    record.__dict__.update(request_id="abc", method="GET", path="/healthz", status=200)
    line = json.loads(formatter.format(record))
    assert line["message"] == "GET /healthz 200"
    assert line["level"] == "INFO"
    assert line["logger"] == "qa_service.access"
    assert (line["request_id"], line["status"], line["path"]) == ("abc", 200, "/healthz")
    assert line["time"].endswith("+00:00")
    # Any other record logged while a request is served carries its id.
    other = logging.LogRecord("qa_service.service", logging.WARNING, __file__, 1, "slow", (), None)
    token = request_id_var.set("req-9")
    try:
        assert json.loads(formatter.format(other))["request_id"] == "req-9"
    finally:
        request_id_var.reset(token)
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "ValueError: boom" in json.loads(formatter.format(failed))["exception"]


# Body limits


def _assert_too_large(response: _Response) -> None:
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/json"
    assert "1048576 bytes" in response.json()["detail"]
    assert response.headers["x-request-id"]


def _big_question() -> bytes:
    return json.dumps({"question": "x" * TWO_MIB}).encode()


@pytest.mark.parametrize("path", ["/v1/ask", "/v1/ask/batch", "/v1/chat"])
def test_a_body_over_the_limit_is_refused_by_its_content_length(
    client: TestClient, path: str
) -> None:
    response = client.post(path, content=_big_question(),
                           headers={"content-type": "application/json"})  # fmt: skip
    assert response.request.headers["content-length"] == str(len(_big_question()))
    _assert_too_large(response)


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read(
    client: TestClient,
) -> None:
    read: list[bytes] = []

    def body() -> Iterator[bytes]:
        read.append(b"{")  # a chunk the app would have asked for
        yield b"{"

    response = client.post("/v1/ask", content=body(),
                           headers={"content-type": "application/json",
                                    "content-length": str(TWO_MIB)})  # fmt: skip
    _assert_too_large(response)
    assert read == []


def test_a_chunked_body_over_the_limit_is_refused(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"question": "'
        for _ in range(64):
            yield b"x" * 65536
        yield b'"}'

    response = client.post("/v1/ask", content=chunks(),
                           headers={"content-type": "application/json"})  # fmt: skip
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    _assert_too_large(response)


def test_a_body_without_a_length_is_refused_as_soon_as_it_crosses_the_limit(
    client: TestClient,
) -> None:
    """At the ASGI level, where the chunks the app pulls can be counted: the test client reads a
    streamed body whole before it calls the app."""
    pulled = 0

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        if pulled > 64:  # 4 MiB
            return {"type": "http.request", "body": b'"}', "more_body": False}
        return {"type": "http.request", "body": b"x" * 65536, "more_body": True}

    start, *chunks = _call(
        client, "POST", "/v1/ask", receive, [(b"content-type", b"application/json")]
    )
    assert start["status"] == 413
    assert json.loads(b"".join(c.get("body", b"") for c in chunks))["detail"].endswith(
        "limit of 1048576 bytes"
    )
    assert pulled == 17  # 17 × 64 KiB is the first count over 1 MiB; nothing more was read


def test_bodies_within_the_limit_pass(client: TestClient) -> None:
    # Streamed in small chunks without a length: counted, not refused.
    def chunks() -> Iterator[bytes]:
        yield b'{"question": '
        yield json.dumps(QUESTION).encode()
        yield b"}"

    response = client.post("/v1/ask", content=chunks(),
                           headers={"content-type": "application/json"})  # fmt: skip
    assert response.status_code == 200
    assert response.json()["question"] == QUESTION


def test_the_limit_is_configurable(settings: Settings, service: QAService) -> None:
    configured = settings.model_copy(update={"max_body_bytes": 4096})
    with TestClient(create_app(configured, service)) as client:
        small = client.post("/v1/ask", json={"question": QUESTION})
        assert small.status_code == 200
        big = client.post("/v1/ask/batch", json={"questions": [QUESTION] * 100})
    assert big.status_code == 413
    assert "4096 bytes" in big.json()["detail"]


def test_body_limits_by_path_prefix() -> None:
    limits = BodyLimits(1000, {"/v1/documents": 5000, "/v1/documents/upload": 9000})
    assert limits.for_path("/v1/ask") == 1000
    assert limits.for_path("/v1/documents") == 5000
    assert limits.for_path("/v1/documents/x") == 5000
    assert limits.for_path("/v1/documents/upload") == 9000
    assert limits.for_path("/v1/documents/upload/more") == 9000
    assert limits.for_path("/v1/documentsx") == 1000


# Admission


def _assert_busy(response: _Response) -> None:
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "too many questions" in response.json()["detail"]


def test_a_question_beyond_the_limit_is_refused_at_once(limited: TestClient) -> None:
    limiter = limited.app.state.admission  # type: ignore[attr-defined]
    assert limiter.try_acquire()  # the one slot is taken
    try:
        for path, body in QUESTION_REQUESTS:
            _assert_busy(limited.post(path, json=body))
        # Only question requests are limited.
        assert limited.get("/healthz").status_code == 200
        assert limited.get("/v1/documents").status_code == 200
    finally:
        limiter.release()
    assert limited.post("/v1/ask", json={"question": QUESTION}).status_code == 200
    assert limiter.in_flight == 0


def test_a_streaming_chat_holds_its_slot_until_its_last_byte(limited: TestClient) -> None:
    limiter = limited.app.state.admission  # type: ignore[attr-defined]
    with limited.stream("POST", "/v1/chat", json={**CHAT, "stream": True}) as stream:
        # The response has started; the app is blocked sending the events nobody read yet.
        assert stream.status_code == 200
        assert limiter.in_flight == 1
        _assert_busy(limited.post("/v1/ask", json={"question": QUESTION}))
        events = [line for line in stream.iter_lines() if line.startswith("event: ")]
    assert events[0] == "event: query" and events[-1] == "event: done"
    assert limiter.in_flight == 0
    assert limited.post("/v1/ask", json={"question": QUESTION}).status_code == 200


def test_a_busy_refusal_is_logged_and_counted(
    limited: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    limiter = limited.app.state.admission  # type: ignore[attr-defined]
    assert limiter.try_acquire()
    try:
        limited.post("/v1/chat", json=CHAT, headers={"X-Request-ID": "busy-1"})
    finally:
        limiter.release()
    [line] = _access_lines(caplog)
    assert line.getMessage().startswith("POST /v1/chat 503 ")
    assert line.__dict__["request_id"] == "busy-1"
    assert 'qa_http_requests_total{method="POST",route="/v1/chat",status="503"}' in (
        limited.get("/metrics").text
    )


# Rate limits per client


def test_a_client_over_its_rate_limit_gets_429_with_retry_after(
    settings: Settings, service: QAService
) -> None:
    configured = settings.model_copy(update={"rate_limit": "3/minute"})
    with TestClient(create_app(configured, service)) as client:
        assert client.options("/v1/ask").status_code != 429  # preflights are not counted
        answered = [client.post("/v1/ask", json={"question": QUESTION}) for _ in range(2)]
        assert client.get("/v1/documents").status_code == 200  # every /v1/ request counts
        refused = client.post("/v1/ask", json={"question": QUESTION})
        # Health, metrics and the pages stay reachable; they are not the API.
        assert client.get("/healthz").status_code == 200
        assert client.get("/").status_code == 200
        metrics = client.get("/metrics").text
        refused_again = client.get("/v1/documents")
    assert [r.status_code for r in answered] == [200, 200]
    for response in (refused, refused_again):
        assert response.status_code == 429
        assert 1 <= int(response.headers["retry-after"]) <= 60
        assert "3 per 1 minute" in response.json()["detail"]
        assert "x-request-id" in response.headers
    assert 'route="/v1/ask",status="429"' in metrics


def test_refusals_on_the_openai_routes_are_openai_errors(
    settings: Settings, service: QAService
) -> None:
    """OpenAI clients read only `{"error": {...}}`: the 413, 429 and 503 given before routing
    take that shape on their routes, and keep `{"detail": ...}` everywhere else."""
    configured = settings.model_copy(
        update={"max_body_bytes": 4096, "rate_limit": "2/minute", "max_concurrent_requests": 1}
    )
    big = {**CHAT, "messages": [{"role": "user", "content": "word " * 2000}]}
    with TestClient(create_app(configured, service)) as client:
        too_large = client.post("/v1/chat/completions", json=big)
        limiter = client.app.state.admission  # type: ignore[attr-defined]
        assert limiter.try_acquire()
        try:
            busy = client.post("/v1/chat/completions", json=CHAT)
        finally:
            limiter.release()
        limited = client.get("/v1/models")  # the third request: the 413 and 503 counted
        plain = client.get("/v1/documents")
    expected = {
        too_large: (413, "4096 bytes", "invalid_request_error", "request_too_large"),
        busy: (503, "too many questions", "server_error", "unavailable"),
        limited: (429, "2 per 1 minute", "invalid_request_error", "rate_limit_exceeded"),
    }
    for response, (status, words, kind, code) in expected.items():
        assert response.status_code == status
        error = response.json()["error"]
        assert words in error["message"]
        assert (error["type"], error["code"], error["param"]) == (kind, code, None)
    assert busy.headers["retry-after"] == "1" and int(limited.headers["retry-after"]) >= 1
    assert plain.status_code == 429 and "2 per 1 minute" in plain.json()["detail"]


def test_clients_are_limited_separately(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"rate_limit": "1/minute"}), None)
    sent: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            sent.append(message["status"])

    for host in ("10.0.0.1", "10.0.0.2", "10.0.0.1"):
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "GET", "scheme": "http", "path": "/v1/documents",
                 "raw_path": b"/v1/documents", "query_string": b"", "root_path": "",
                 "client": (host, 1), "server": ("testserver", 80), "headers": []}  # fmt: skip
        asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    # No service is loaded, so an admitted request is a 503 "not ready"; the third is over.
    assert sent == [503, 503, 429]


def test_a_malformed_rate_limit_is_a_clear_setting_error() -> None:
    with pytest.raises(ValueError, match="60/minute"):
        Settings(rate_limit="lots")


# Streaming


def _call(
    client: TestClient,
    method: str,
    path: str,
    receive: Callable[[], Awaitable[dict[str, Any]]],
    headers: list[tuple[bytes, bytes]],
) -> list[dict[str, Any]]:
    """Call the app as a server would and return every message it sends."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
             "server": ("testserver", 80), "state": {}, "headers": headers}  # fmt: skip
    asyncio.run(client.app(scope, receive, send))  # type: ignore[arg-type]
    return sent


def test_chat_events_pass_through_the_middleware_one_by_one(client: TestClient) -> None:
    """At the ASGI level: each event is its own body message, not one buffered body."""
    body = json.dumps({**CHAT, "stream": True}).encode()
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        raise AssertionError

    headers = [(b"content-type", b"application/json"), (b"x-request-id", b"sse-1")]
    start, *chunks = _call(client, "POST", "/v1/chat", receive, headers)
    assert start["type"] == "http.response.start"
    assert start["status"] == 200
    assert (b"x-request-id", b"sse-1") in start["headers"]
    events = [m["body"] for m in chunks if m.get("body")]
    assert len(events) == 1 + 5 + 2  # query, the passages, answer, done
    assert all(e.startswith(b"event: ") and e.endswith(b"\n\n") for e in events)
    assert [e.split(b"\n")[0] for e in events][:2] == [b"event: query", b"event: passage"]
    assert all(m.get("more_body") for m in chunks[:-1])


# The real server


@pytest.mark.slow
def test_qa_serve_writes_one_access_line_per_request(server: str, settings: Settings) -> None:
    response = httpx.post(f"{server}/v1/ask", json={"question": "What is GRETA? zq-secret"},
                          headers={"X-Request-ID": "serve-log-1"}, timeout=30)  # fmt: skip
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "serve-log-1"
    log_path = server_log(settings, server)
    # The line is written once the response is sent, so it may trail the response a little.
    deadline = time.monotonic() + 10
    while "serve-log-1" not in (log := log_path.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [line for line in log.splitlines() if "serve-log-1" in line]
    assert len(lines) == 1, log  # ours; uvicorn's access log is off
    assert "qa_service.access: POST /v1/ask 200 " in lines[0]
    assert "zq-secret" not in log
    assert '"POST /v1/ask HTTP/1.1" 200' not in log  # uvicorn's own access line format


@pytest.mark.slow
def test_qa_serve_refuses_a_chunked_body_over_the_limit(server: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"question": "'
        for _ in range(64):
            yield b"x" * 65536
        yield b'"}'

    response = httpx.post(f"{server}/v1/ask", content=chunks(), timeout=30,
                          headers={"content-type": "application/json"})  # fmt: skip
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 413
    assert response.headers["x-request-id"]
