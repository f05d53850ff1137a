from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from qa_service.api import create_app
from qa_service.config import Settings
from qa_service.service import QAService

ALLOWED = "https://ngo.example"
PREFLIGHT = {"Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "content-type"}  # fmt: skip
QUESTION = {"messages": [{"role": "user", "content": "What is GRETA?"}]}


@pytest.fixture(scope="module")
def open_client(settings: Settings, service: QAService) -> Iterator[TestClient]:
    configured = settings.model_copy(update={"cors_origins": [ALLOWED]})
    with TestClient(create_app(configured, service)) as test_client:
        yield test_client


def test_cors_is_closed_by_default(client: TestClient) -> None:
    preflight = client.options("/v1/chat", headers={"Origin": ALLOWED, **PREFLIGHT})
    assert "access-control-allow-origin" not in preflight.headers
    response = client.post("/v1/chat", json=QUESTION, headers={"Origin": ALLOWED})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_a_configured_origin_may_call_and_others_may_not(open_client: TestClient) -> None:
    preflight = open_client.options("/v1/chat", headers={"Origin": ALLOWED, **PREFLIGHT})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ALLOWED
    response = open_client.post("/v1/chat", json=QUESTION, headers={"Origin": ALLOWED})
    assert response.headers["access-control-allow-origin"] == ALLOWED

    other = "https://elsewhere.example"
    preflight = open_client.options("/v1/chat", headers={"Origin": other, **PREFLIGHT})
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers
    response = open_client.post("/v1/ask", json={"question": "What is GRETA?"},
                                headers={"Origin": other})  # fmt: skip
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize(
    ("value", "origins"),
    [('["https://a.example", "http://localhost:3000"]', ["https://a.example", "http://localhost:3000"]),
     ("https://a.example/, http://localhost:3000", ["https://a.example", "http://localhost:3000"]),
     ("", [])],
)  # fmt: skip
def test_cors_origins_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, origins: list[str]
) -> None:
    monkeypatch.setenv("QA_CORS_ORIGINS", value)
    assert Settings().cors_origins == origins


def test_a_path_is_not_an_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QA_CORS_ORIGINS", "https://a.example/chat")
    with pytest.raises(ValueError, match="not a web origin"):
        Settings()


@pytest.mark.parametrize(
    "path", ["/", "/document?id=x&start=0&end=1", "/static/index.html", "/static/chat.js"]
)
def test_pages_are_served_with_a_strict_policy(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    # Everything a page loads comes from the service itself.
    if response.headers["content-type"].startswith("text/html"):
        assert "http://" not in response.text and "https://" not in response.text


def test_widget_script_is_served(client: TestClient) -> None:
    response = client.get("/widget.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert "/v1/chat" in response.text
