"""`GET /metrics`: Prometheus text from the app's own registry, over the real service."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from qa_service.api import create_app
from qa_service.config import Settings
from qa_service.service import QAService

ANSWERABLE = "Who took part in the Regional Expert Group Meeting in Skopje?"
OFF_TOPIC = "Who won the Nobel Prize in Physics in 1921?"


@pytest.fixture
def fresh(settings: Settings, service: QAService) -> Iterator[TestClient]:
    """A new app, so that its counters start at zero whatever other tests did."""
    with TestClient(create_app(settings, service)) as test_client:
        yield test_client


def _samples(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
           **labels: str) -> float | None:  # fmt: skip
    return samples.get((name, frozenset(labels.items())))


def test_questions_answered_and_abstained_per_endpoint(fresh: TestClient) -> None:
    assert fresh.post("/v1/ask", json={"question": ANSWERABLE}).json()["answerable"]
    assert not fresh.post("/v1/ask", json={"question": OFF_TOPIC}).json()["answerable"]
    batch = fresh.post("/v1/ask/batch", json={"questions": [ANSWERABLE, OFF_TOPIC, ANSWERABLE]})
    assert [r["answerable"] for r in batch.json()["results"]] == [True, False, True]
    chat = {"messages": [{"role": "user", "content": OFF_TOPIC}], "stream": True}
    assert fresh.post("/v1/chat", json=chat).status_code == 200
    samples = _samples(fresh)
    questions = "qa_questions_total"
    assert _value(samples, questions, endpoint="/v1/ask", outcome="answered") == 1
    assert _value(samples, questions, endpoint="/v1/ask", outcome="abstained") == 1
    assert _value(samples, questions, endpoint="/v1/ask/batch", outcome="answered") == 2
    assert _value(samples, questions, endpoint="/v1/ask/batch", outcome="abstained") == 1
    assert _value(samples, questions, endpoint="/v1/chat", outcome="abstained") == 1
    assert _value(samples, questions, endpoint="/v1/chat", outcome="answered") is None


def test_requests_are_counted_and_timed_per_route_template(fresh: TestClient) -> None:
    fresh.post("/v1/ask", json={"question": ANSWERABLE})
    fresh.post("/v1/ask", json={"question": ""})
    document_id = fresh.get("/v1/documents").json()["documents"][0]["id"]
    fresh.get(f"/v1/documents/{document_id}")
    fresh.get("/v1/documents/no-such-document")
    fresh.get("/v1/documents/another/missing/one")
    fresh.get("/no-such-route")
    samples = _samples(fresh)
    requests = "qa_http_requests_total"
    assert _value(samples, requests, method="POST", route="/v1/ask", status="200") == 1
    assert _value(samples, requests, method="POST", route="/v1/ask", status="422") == 1
    document = "/v1/documents/{document_id:path}"
    assert _value(samples, requests, method="GET", route=document, status="200") == 1
    assert _value(samples, requests, method="GET", route=document, status="404") == 2
    assert _value(samples, requests, method="GET", route="unmatched", status="404") == 1
    # No raw path became a label.
    routes = {dict(labels).get("route") for _, labels in samples}
    assert not any(route and document_id in route for route in routes)
    assert "/no-such-route" not in routes
    histogram = "qa_http_request_duration_seconds"
    count = _value(samples, f"{histogram}_count", method="POST", route="/v1/ask", status="200")
    assert count == 1
    total = _value(samples, f"{histogram}_sum", method="POST", route="/v1/ask", status="200")
    assert total is not None and 0 < total < 60
    inf = {("le", "+Inf"), ("method", "POST"), ("route", "/v1/ask"), ("status", "200")}
    assert samples[(f"{histogram}_bucket", frozenset(inf))] == 1


def test_index_size_load_times_and_in_flight(
    fresh: TestClient, settings: Settings, service: QAService
) -> None:
    samples = _samples(fresh)
    assert _value(samples, "qa_index_documents") == len(service.index.documents) == 5
    assert _value(samples, "qa_index_passages") == len(service.index.passages)
    # The session's service was given its encoder, so only the index load was timed.
    assert "index" in service.load_seconds
    assert _value(samples, "qa_index_load_seconds") == service.load_seconds["index"]
    # The scrape itself is the one request in flight; no question holds a slot.
    assert _value(samples, "qa_http_requests_in_flight") == 1
    assert _value(samples, "qa_question_requests_in_flight") == 0


def test_question_encoding_calls_texts_and_seconds(settings: Settings, service: QAService) -> None:
    own = QAService(service.encoder, service.index, None, 5)  # its calls start at zero
    with TestClient(create_app(settings, own)) as client:
        client.post("/v1/ask", json={"question": ANSWERABLE})
        # One call; a question asked twice in a batch is encoded once.
        client.post("/v1/ask/batch", json={"questions": [ANSWERABLE, OFF_TOPIC, ANSWERABLE]})
        samples = _samples(client)
    assert _value(samples, "qa_model_query_calls_total") == own.queries.calls == 2
    assert _value(samples, "qa_model_query_texts_total") == own.queries.texts == 3
    seconds = _value(samples, "qa_model_query_seconds_total")
    assert seconds == own.queries.busy_seconds and 0 < seconds < 60


def test_load_times_of_a_service_loaded_from_settings(settings: Settings) -> None:
    """The model and the index are timed separately where the service is loaded."""
    service = QAService.from_settings(settings)
    assert set(service.load_seconds) == {"model", "index"}
    assert all(seconds > 0 for seconds in service.load_seconds.values())
    with TestClient(create_app(settings, service)) as client:
        samples = _samples(client)
    assert _value(samples, "qa_model_load_seconds") == service.load_seconds["model"]


def test_no_index_gauges_while_loading(settings: Settings) -> None:
    # No service and, outside `with`, no lifespan: it is never loaded.
    text = TestClient(create_app(settings)).get("/metrics").text
    assert "qa_index_documents" not in text
    assert "qa_http_requests_total" in text


def test_each_app_has_its_own_registry(settings: Settings, service: QAService) -> None:
    with TestClient(create_app(settings, service)) as first:
        first.post("/v1/ask", json={"question": ANSWERABLE})
        with TestClient(create_app(settings, service)) as second:
            samples = _samples(second)
    assert _value(samples, "qa_questions_total", endpoint="/v1/ask", outcome="answered") is None
