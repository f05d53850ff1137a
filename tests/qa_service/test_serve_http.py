"""`qa serve` as a real process, spoken to over HTTP like any client would."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from qa_service.config import Settings
from qa_service.service import QAService
from tests.qa_service.conftest import launch


@pytest.mark.slow
def test_ask_over_http(server: str) -> None:
    response = httpx.post(
        f"{server}/v1/ask",
        json={"question": "Which bodies supported the first joint investigation team?"},
        timeout=30,
    )
    assert response.status_code == 200
    body = response.json()
    assert body["answerable"]
    top = body["passages"][0]
    assert "UNODC and Eurojust" in top["text"]
    document = httpx.get(f"{server}/v1/documents/{top['document_id']}", timeout=10).json()
    assert document["text"][top["start"] : top["end"]] == top["text"]


@pytest.mark.slow
def test_bad_requests_over_http_are_clean_json(server: str) -> None:
    response = httpx.post(
        f"{server}/v1/ask", content=b"{", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/json"
    assert httpx.get(f"{server}/v1/documents/missing").status_code == 404
    assert httpx.get(f"{server}/no-such-route").status_code == 404


@pytest.mark.slow
def test_chat_streams_server_sent_events_over_http(server: str) -> None:
    messages = [{"role": "user", "content": "What is GRETA?"}]
    names = []
    with httpx.stream("POST", f"{server}/v1/chat", json={"messages": messages, "stream": True},
                      timeout=30) as response:  # fmt: skip
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        names = [line[len("event: "):] for line in response.iter_lines()
                 if line.startswith("event: ")]  # fmt: skip
    assert names[0] == "query" and names[-2:] == ["answer", "done"]
    assert names.count("passage") == 5


@pytest.mark.slow
def test_shutdown_finishes_the_requests_in_flight(settings: Settings, service: QAService) -> None:
    process, url = launch(settings)
    questions = [f"What did report number {i} say about child trafficking?" for i in range(256)]
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(
            httpx.post, f"{url}/v1/ask/batch", json={"questions": questions, "top_k": 50},
            timeout=120,
        )  # fmt: skip
        # Wait until the batch is being answered, then ask the server to stop.
        deadline = time.monotonic() + 60
        while "qa_question_requests_in_flight 1.0" not in httpx.get(f"{url}/metrics").text:
            assert time.monotonic() < deadline and not pending.done(), "the batch never started"
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        response = pending.result()
    assert response.status_code == 200
    assert len(response.json()["results"]) == len(questions)
    # uvicorn re-raises the signal once it has shut down cleanly, as a parent expects.
    assert process.wait(timeout=60) in (0, -signal.SIGTERM)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthz", timeout=2)
