from __future__ import annotations

import base64
import hashlib
import re
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


def test_a_configured_origin_may_use_the_mcp_endpoint(open_client: TestClient) -> None:
    """A browser MCP client sends the transport's own headers, which its preflight must allow,
    and reads the answer across origins."""
    asked = "content-type, authorization, mcp-protocol-version, mcp-session-id, last-event-id"
    preflight = open_client.options(
        "/mcp",
        headers={"Origin": ALLOWED, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": asked},
    )  # fmt: skip
    assert preflight.status_code == 200, preflight.text
    allowed = preflight.headers["access-control-allow-headers"].lower()
    assert all(header.strip() in allowed for header in asked.split(","))
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                  "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                             "clientInfo": {"name": "browser", "version": "1"}}}  # fmt: skip
    response = open_client.post(
        "/mcp",
        json=initialize,
        headers={"Origin": ALLOWED, "Host": "127.0.0.1:8000",
                 "Accept": "application/json, text/event-stream",
                 "Mcp-Protocol-Version": "2025-06-18"},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.json()["result"]["serverInfo"]["name"]
    assert response.headers["access-control-allow-origin"] == ALLOWED
    assert "mcp-session-id" in response.headers["access-control-expose-headers"].lower()


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
    "path",
    ["/", "/document?id=x&start=0&end=1", "/static/chat.js", "/docs", "/docs/oauth2-redirect",
     "/docs/assets/swagger-ui-bundle.js"],
)  # fmt: skip
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


@pytest.mark.parametrize("path", ["/docs", "/docs/oauth2-redirect"])
def test_the_docs_pages_allow_only_their_own_inline_scripts(client: TestClient, path: str) -> None:
    response = client.get(path)
    scripts = re.findall(r"<script>(.*?)</script>", response.text, re.DOTALL)
    assert scripts
    hashes = {"'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
              for s in scripts}  # fmt: skip
    policy = dict(
        directive.strip().split(" ", 1)
        for directive in response.headers["content-security-policy"].split(";")
    )
    assert set(policy["script-src"].split()) == {"'self'", *hashes}
    assert "unsafe" not in response.headers["content-security-policy"]


def test_the_docs_load_their_files_from_the_service(client: TestClient) -> None:
    page = client.get("/docs").text
    files = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert len(files) == 3  # Swagger UI's script, its stylesheet and the icon
    for url in files:
        assert url.startswith("/docs/assets/"), url
        assert client.get(url).status_code == 200
    assert "'/openapi.json'" in page


@pytest.mark.parametrize("path", ["/redoc", "/static/index.html", "/static/document.html"])
def test_no_redoc_and_no_raw_page_templates(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 404


def test_the_page_title_and_tagline_are_text(settings: Settings, service: QAService) -> None:
    named = settings.model_copy(
        update={"page_title": 'Notes <script>x()</script> & "co"', "page_tagline": "<b>Field</b>"}
    )
    with TestClient(create_app(named, service)) as named_client:
        chat, document = named_client.get("/").text, named_client.get("/document?id=x").text
        widget = named_client.get("/widget.js").text
    title = "Notes &lt;script&gt;x()&lt;/script&gt; &amp; &quot;co&quot;"
    assert f'<h1 id="page-title">{title}</h1>' in chat
    assert f"<title>{title}</title>" in chat and f"<title>Document · {title}</title>" in document
    assert '<meta name="application-name" content="' + title + '">' in document
    assert "&lt;b&gt;Field&lt;/b&gt;" in chat
    assert "<script>" not in chat + document and "<b>" not in chat
    # The widget's panel is named after the service unless its page names it: a string literal.
    assert 'const SERVICE_TITLE = "Notes <script>x()</script> & \\"co\\"";' in widget


def test_the_page_title_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QA_PAGE_TITLE", "Ask the Western Balkans reports")
    monkeypatch.setenv("QA_PAGE_TAGLINE", "Reports on child trafficking.")
    settings = Settings()
    assert (settings.page_title, settings.page_tagline) == (
        "Ask the Western Balkans reports",
        "Reports on child trafficking.",
    )
