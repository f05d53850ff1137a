"""Every bad input gets a clear 4xx, changes nothing, and no log line carries a question.

Bodies are sent raw where Python's json module would not write them: the NaN and Infinity
literals, numbers beyond a float, escapes of unpaired UTF-16 surrogates, bytes that are not UTF-8.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from embeddings import Encoder
from qa_service.api import create_app
from qa_service.api.middleware import JsonFormatter
from qa_service.config import Settings
from qa_service.index.store import current_generation_name
from qa_service.service import QAService
from tests.qa_service.api.conftest import writable_copy
from tests.qa_service.conftest import free_port
from tests.qa_service.corpus.test_pdf_limits import inflation_bomb, text_operator_flood

KEYS = ["bad-input-key-0123456789"]
AUTH = {"Authorization": f"Bearer {KEYS[0]}"}
JSON = {"content-type": "application/json"}
INVALID_TEXT = "the text holds an invalid character (an unpaired UTF-16 surrogate)"
SECRET = "Which shelter in Skopje hid the witness xyzzy?"


@pytest.fixture(scope="module")
def writable_settings(
    settings: Settings, service: QAService, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return writable_copy(settings, tmp_path_factory, api_keys=KEYS)


@pytest.fixture(scope="module")
def writer(writable_settings: Settings, encoder: Encoder) -> Iterator[TestClient]:
    service = QAService.from_settings(writable_settings, encoder=encoder)
    with TestClient(create_app(writable_settings, service)) as client:
        yield client


def _snapshot(client: TestClient, settings: Settings) -> tuple[object, ...]:
    """Everything a write could change: the corpus files, the index generation, the list."""
    files = sorted((p.relative_to(settings.corpus_dir).as_posix(), p.stat().st_size)
                   for p in settings.corpus_dir.rglob("*"))  # fmt: skip
    return current_generation_name(settings.index_dir), client.get("/v1/documents").json(), files


class _Response(Protocol):
    """What the helpers read of a response, from the test client or from httpx."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def content(self) -> bytes: ...
    @property
    def text(self) -> str: ...


def _errors(response: _Response, status: int = 422) -> list[dict[str, Any]]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    detail = json.loads(response.content.decode("utf-8"))["detail"]
    assert isinstance(detail, list)
    return detail


def _error_at(response: _Response, loc: Sequence[str | int]) -> dict[str, Any]:
    errors = _errors(response)
    found = [e for e in errors if e["loc"] == loc]
    assert found, errors
    return found[0]


# 1. Numbers that are not finite


QUESTION_BODIES = {
    "/v1/ask": '"question": "Skopje"',
    "/v1/ask/batch": '"questions": ["Skopje"]',
    "/v1/chat": '"messages": [{"role": "user", "content": "Skopje"}]',
}


@pytest.mark.parametrize("path", QUESTION_BODIES)
@pytest.mark.parametrize("field", ["top_k", "min_score", "diversity"])
@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
def test_a_number_that_is_not_finite_is_a_422_naming_the_field(
    client: TestClient, path: str, field: str, number: str
) -> None:
    body = f'{{{QUESTION_BODIES[path]}, "{field}": {number}}}'
    error = _error_at(client.post(path, content=body.encode(), headers=JSON), ["body", field])
    assert error["type"] == "finite_number"
    assert error["msg"] == "Input should be a finite number"
    # Quoted as JSON cannot carry it: as text.
    assert error["input"] == {"1e400": "Infinity", "-1e400": "-Infinity"}.get(number, number)


def test_a_filter_value_that_is_not_finite_is_a_422(client: TestClient) -> None:
    body = b'{"question": "Skopje", "filters": {"metadata": {"year": NaN}}}'
    error = _error_at(client.post("/v1/ask", content=body, headers=JSON),
                      ["body", "filters", "metadata", "year"])  # fmt: skip
    assert error["type"] == "finite_number"


def test_finite_numbers_still_pass(client: TestClient) -> None:
    body = b'{"question": "Skopje", "top_k": 2, "min_score": -1e-300, "diversity": 0.3}'
    response = client.post("/v1/ask", content=body, headers=JSON)
    assert response.status_code == 200, response.text
    assert len(response.json()["passages"]) == 2


# 2. Text that holds an unpaired surrogate


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        ("/v1/ask", r'{"question": "\ud800 Skopje"}', ["body", "question"]),
        ("/v1/ask", r'{"question": "Skopje \udfff"}', ["body", "question"]),
        ("/v1/ask/batch", r'{"questions": ["Skopje", "\udbff?"]}', ["body", "questions", 1]),
        ("/v1/chat", r'{"messages": [{"role": "user", "content": "\ud800 Skopje"}]}',
         ["body", "messages", 0, "content"]),
        ("/v1/chat", r'{"messages": [{"role": "user", "content": "Skopje?"}, {"role": '
         r'"assistant", "content": "\ud800"}, {"role": "user", "content": "When?"}]}',
         ["body", "messages", 1, "content"]),
        ("/v1/ask", r'{"question": "Skopje", "filters": {"document_ids": ["\ud800"]}}',
         ["body", "filters", "document_ids", 0]),
    ],
)  # fmt: skip
def test_a_lone_surrogate_in_a_question_is_a_422_naming_the_field(
    client: TestClient, caplog: pytest.LogCaptureFixture, path: str, body: str, loc: list[Any]
) -> None:
    caplog.set_level(logging.DEBUG)
    error = _error_at(client.post(path, content=body.encode(), headers=JSON), loc)
    assert error["msg"] == INVALID_TEXT
    assert error["type"] == "unpaired_surrogate"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_surrogate_pair_is_one_character_and_passes(client: TestClient) -> None:
    body = rb'{"question": "\ud83d\ude00 Who met in Skopje?"}'
    response = client.post("/v1/ask", content=body, headers=JSON)
    assert response.status_code == 200, response.text
    assert response.json()["question"] == "\U0001f600 Who met in Skopje?"


@pytest.mark.parametrize(
    ("fields", "loc", "msg"),
    [
        (r'"text": "\ud800 Visit notes."', ["body", "text"], INVALID_TEXT),
        (r'"text": "Visit notes.", "title": "Notes \udc00"', ["body", "title"], INVALID_TEXT),
        (r'"text": "Visit notes.", "source": "\ud800"', ["body", "source"], INVALID_TEXT),
        (r'"text": "Visit notes.", "metadata": {"place": "\ud800"}', ["body", "metadata"],
         "the text at metadata['place'] holds an invalid character (an unpaired UTF-16 "
         "surrogate)"),
        (r'"text": "Visit notes.", "metadata": {"tags": ["ok", {"\udfff": 1}]}',
         ["body", "metadata"], "a key at metadata['tags'][1] holds an invalid "
         "character (an unpaired UTF-16 surrogate)"),
        (r'"text": "Visit notes.", "metadata": {"score": NaN}', ["body", "metadata"],
         "metadata['score'] should be a finite number"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_bad_text_or_numbers_in_a_json_document_are_a_422_and_write_nothing(
    writer: TestClient,
    writable_settings: Settings,
    method: str,
    fields: str,
    loc: list[str],
    msg: str,
) -> None:
    before = _snapshot(writer, writable_settings)
    url = "/v1/documents" + ("/notes/visit" if method == "PUT" else "")
    body = ("{" + fields + "}").encode()
    response = writer.request(method, url, content=body, headers={**AUTH, **JSON})
    assert _error_at(response, loc)["msg"] == msg
    assert _snapshot(writer, writable_settings) == before


# 3. Bodies that are not UTF-8


@pytest.mark.parametrize("body", [b"\xa5", b'{"text": "caf\xe9 au lait"}', b"\xff\xfe{}"])
def test_a_json_document_that_is_not_utf8_is_a_clean_422(
    writer: TestClient, writable_settings: Settings, body: bytes
) -> None:
    before = _snapshot(writer, writable_settings)
    response = writer.post("/v1/documents", content=body, headers={**AUTH, **JSON})
    [error] = _errors(response)
    assert error["type"] == "json_invalid"
    assert error["loc"][0] == "body"
    assert error["ctx"] == {"error": "the body is not UTF-8 text"}
    assert _snapshot(writer, writable_settings) == before


DIGITS = b"9" * 5000  # Python reads integers of at most 4,300 digits
DEEP = b"[" * 100_000


@pytest.mark.parametrize(
    ("path", "body", "reason"),
    [
        ("/v1/ask", b'{"question": "x", "top_k": %s}' % DIGITS, "a number has too many digits"),
        ("/v1/ask", DEEP, "the JSON is nested too deeply"),
        ("/v1/documents", b'{"text": "x", "metadata": {"n": %s}}' % DIGITS,
         "a number has too many digits"),
        ("/v1/documents", DEEP, "the JSON is nested too deeply"),
    ],
)  # fmt: skip
def test_json_that_python_cannot_read_is_a_422(
    writer: TestClient, writable_settings: Settings, path: str, body: bytes, reason: str
) -> None:
    before = _snapshot(writer, writable_settings)
    [error] = _errors(writer.post(path, content=body, headers={**AUTH, **JSON}))
    assert error["type"] == "json_invalid"
    assert error["ctx"] == {"error": reason}
    assert _snapshot(writer, writable_settings) == before


def test_a_question_body_that_is_not_utf8_stays_a_422(client: TestClient) -> None:
    [error] = _errors(client.post("/v1/ask", content=b'{"question": "caf\xe9"}', headers=JSON))
    assert error["type"] == "json_invalid"
    assert error["ctx"] == {"error": "the body is not UTF-8 text"}


def _multipart(fields: list[tuple[bytes, bytes, bytes]]) -> tuple[bytes, dict[str, str]]:
    """A multipart body of (name, filename or b"", value) parts, byte for byte."""
    boundary = b"qa-test-boundary"
    body = b""
    for name, filename, value in fields:
        disposition = b'form-data; name="%s"' % name
        if filename:
            disposition += b'; filename="%s"' % filename
        body += b"--%s\r\nContent-Disposition: %s\r\n\r\n%s\r\n" % (boundary, disposition, value)
    body += b"--%s--\r\n" % boundary
    return body, {"content-type": f"multipart/form-data; boundary={boundary.decode()}"}


@pytest.mark.parametrize(
    "fields",
    [
        [(b"file", b"notes.txt", b"Visit notes."), (b"id", b"", b"caf\xe9")],
        [(b"file", b"notes.txt", b"Visit notes."), (b"id", b"", b"\xed\xa0\x80")],
    ],
)
def test_an_upload_whose_id_is_not_utf8_is_a_clean_422(
    writer: TestClient, writable_settings: Settings, fields: list[tuple[bytes, bytes, bytes]]
) -> None:
    before = _snapshot(writer, writable_settings)
    body, headers = _multipart(fields)
    response = writer.post("/v1/documents", content=body, headers={**AUTH, **headers})
    assert response.status_code == 422, response.text
    assert "is not allowed" in json.loads(response.content.decode("utf-8"))["detail"]
    assert _snapshot(writer, writable_settings) == before


# 4. PDFs over the reader's limits, uploaded


@pytest.mark.parametrize(
    ("name", "build", "reason"),
    [
        ("bomb", inflation_bomb, "the PDF's page 1 content inflates beyond 16 MiB"),
        ("flood", text_operator_flood,
         "the PDF's page 1 has more than 200,000 operators and operands"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_an_uploaded_pdf_over_the_readers_limits_is_a_422_with_the_reason(
    writer: TestClient,
    writable_settings: Settings,
    method: str,
    name: str,
    build: Any,
    reason: str,
) -> None:
    before = _snapshot(writer, writable_settings)
    url = "/v1/documents" + (f"/{name}" if method == "PUT" else "")
    started = time.perf_counter()
    response = writer.request(
        method, url, files={"file": (f"{name}.pdf", build(), "application/pdf")}, headers=AUTH
    )
    assert time.perf_counter() - started < 10
    assert response.status_code == 422, response.text
    assert response.json() == {"detail": f"document {name!r} cannot be read: {reason}"}
    assert _snapshot(writer, writable_settings) == before


# 5. No log line carries a question unless QA_LOG_QUESTIONS is on


def _break_ask(service: QAService, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make /v1/ask fail as a library might: with messages that quote the question."""

    def broken_ask(question: str, *args: Any, **kwargs: Any) -> Any:
        try:
            question.encode("ascii")
        except UnicodeEncodeError as exc:
            raise RuntimeError(f"boom {question}") from exc
        raise AssertionError("the question must not be ASCII")

    monkeypatch.setattr(service, "ask", broken_ask)


def _everything_logged(records: list[logging.LogRecord]) -> str:
    """All that a handler could write of the records: message, args, exception text, and the
    records formatted as text and as JSON lines (which format any exc_info)."""
    text, json_lines = logging.Formatter(), JsonFormatter()
    parts: list[str] = []
    for record in records:
        parts += [record.getMessage(), repr(record.args), record.exc_text or ""]
        if record.exc_info:
            parts.append("".join(traceback.format_exception(*record.exc_info)))
        parts += [text.format(record), json_lines.format(record)]
    return "\n".join(parts)


def test_an_unexpected_error_logs_no_question(
    settings: Settings,
    service: QAService,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    _break_ask(service, monkeypatch)
    with TestClient(create_app(settings, service), raise_server_exceptions=False) as client:
        response = client.post(
            "/v1/ask", json={"question": f"{SECRET} ё"}, headers={"X-Request-ID": "boom-2"}
        )
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error"}
    assert "xyzzy" not in _everything_logged(caplog.records)
    [record] = [r for r in caplog.records if r.name == "qa_service.api.errors"]
    logged = record.getMessage()
    assert logged.startswith("unhandled error on POST /v1/ask request_id=boom-2")
    # The traceback is whole but for the messages: frames, types, and how they are chained.
    assert "in broken_ask" in logged
    assert "UnicodeEncodeError: [message redacted]" in logged
    assert "direct cause of the following exception" in logged
    assert logged.endswith("RuntimeError: [message redacted]")


def test_an_unexpected_error_logs_its_messages_when_questions_may_be_logged(
    settings: Settings,
    service: QAService,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    _break_ask(service, monkeypatch)
    configured = settings.model_copy(update={"log_questions": True})
    with TestClient(create_app(configured, service), raise_server_exceptions=False) as client:
        assert client.post("/v1/ask", json={"question": f"{SECRET} ё"}).status_code == 500
    [record] = [r for r in caplog.records if r.name == "qa_service.api.errors"]
    assert f"RuntimeError: boom {SECRET} ё" in _everything_logged([record])


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_the_servers_own_log_of_the_error_carries_no_question(
    settings: Settings, service: QAService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvicorn logs every exception that reaches it once more, with its traceback."""
    _break_ask(service, monkeypatch)
    records = _Records()
    logging.getLogger("uvicorn.error").addHandler(records)
    port = free_port()
    config = uvicorn.Config(create_app(settings, service), host="127.0.0.1", port=port,
                            log_config=None, access_log=False)  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        response = httpx.post(f"http://127.0.0.1:{port}/v1/ask",
                              json={"question": f"{SECRET} ё"}, timeout=30)  # fmt: skip
        assert response.status_code == 500
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        logging.getLogger("uvicorn.error").removeHandler(records)
    [logged] = [r for r in records.records if "Exception in ASGI application" in r.getMessage()]
    assert "RuntimeError: [message redacted]" in logged.getMessage()
    assert "xyzzy" not in _everything_logged(records.records)


# 6. A 422 quotes long inputs in short


def test_a_422_quotes_a_1_mb_question_in_short(client: TestClient) -> None:
    question = "Skopje " + "ё" * 499_990  # 1 MB of UTF-8, under the body limit
    response = client.post("/v1/ask", json={"question": question})
    [error] = _errors(response)
    assert len(response.content) < 1024
    assert error["loc"] == ["body", "question"]
    assert error["type"] == "string_too_long"
    assert error["input"] == f"{question[:80]}… [499,997 characters]"
    assert error["ctx"] == {"max_length": 2000}


def test_a_422_counts_10000_questions_rather_than_quoting_them(client: TestClient) -> None:
    response = client.post("/v1/ask/batch", json={"questions": ["Who met in Skopje?"] * 10_000})
    [error] = _errors(response)
    assert len(response.content) < 1024
    assert error["loc"] == ["body", "questions"]
    assert error["input"] == "[10,000 items]"


def test_a_422_lists_the_first_errors_only(client: TestClient) -> None:
    response = client.post("/v1/ask/batch", json={"questions": [" "] * 200 + ["x" * 9000] * 50})
    errors = _errors(response)
    assert len(response.content) < 4096
    assert [e["loc"] for e in errors[:-1]] == [["body", "questions", i] for i in range(10)]
    assert errors[-1] == {"type": "too_many_errors", "loc": [], "msg": "and 240 more errors"}


def test_a_422_summarises_the_body_a_model_error_quotes(client: TestClient) -> None:
    messages = [{"role": "user", "content": f"Question {i}?"} for i in range(49)]
    messages.append({"role": "assistant", "content": "An answer. " * 700})
    response = client.post("/v1/chat", json={"messages": messages, "top_k": 3})
    [error] = _errors(response)
    assert error["loc"] == ["body"]
    assert "the last message must come from the user" in error["msg"]
    assert error["input"] == {"messages": "[50 items]", "top_k": 3}
