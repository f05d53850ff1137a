"""The chat page, the document view and the widget, driven in Debian's chromium by Playwright.

Every wait is for an element or a state, never a fixed sleep. Screenshots go to
`test-artifacts/browser/` (or `$QA_TEST_ARTIFACTS`).
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest
import uvicorn
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from qa_service.api import create_app
from qa_service.config import Settings
from qa_service.service import QAService
from tests.qa_service.conftest import Site, free_port

ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = Path(os.environ.get("QA_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "browser"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync"]  # fmt: skip
TIMEOUT_MS = 60_000  # an answer takes ~50 ms; the margin is for a loaded CI machine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("Debian's chromium is not installed: scripts/test.sh installs it with apt")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{request.node.name}.png", full_page=True)
    context.close()
    assert not errors, f"script errors on the page: {errors}"


def ask(page: Page, question: str) -> None:
    """Type a question and send it with the keyboard, then wait for the reply."""
    replies = page.locator("#messages .message.assistant")
    before = replies.count()
    page.locator("#question").fill(question)
    page.locator("#question").press("Enter")
    expect(replies).to_have_count(before + 1)
    expect(page.locator("#send")).to_be_enabled()


def test_a_question_gets_a_cited_answer(page: Page, server: str) -> None:
    page.goto(server + "/")
    ask(page, "Which bodies supported the first joint investigation team?")
    reply = page.locator(".message.assistant").last
    expect(reply.locator("p.answer")).to_contain_text("supported by UNODC and Eurojust")
    # Cited by the one passage it comes from.
    expect(reply.locator("p.answer a.citation")).to_have_count(1)
    expect(reply.locator("a.citation").first).to_have_text("[1]")
    expect(reply.locator("li.passage, .passage[data-rank]")).to_have_count(5)


def test_a_citation_opens_the_passage_and_the_document_view(page: Page, server: str) -> None:
    page.goto(server + "/")
    ask(page, "Which bodies supported the first joint investigation team?")
    reply = page.locator(".message.assistant").last
    answer = reply.locator("p.answer")
    citation = reply.locator("a.citation").first
    rank = citation.get_attribute("data-rank")
    citation.click()
    passage = reply.locator(f".passage[data-rank='{rank}']")
    mark = passage.locator("mark")
    expect(mark).to_be_visible()
    sentence = mark.inner_text().strip()
    assert sentence and sentence in answer.inner_text()

    passage.locator("a.source-link").click()
    page.wait_for_url("**/document?**")
    cited = page.locator("#cited")
    expect(cited).to_be_visible()
    expect(cited).to_be_in_viewport()
    assert cited.inner_text().strip() == sentence
    expect(page.locator("#document-text")).to_contain_text("Second Country Workshop")


def test_a_follow_up_is_answered_in_context(page: Page, server: str) -> None:
    page.goto(server + "/")
    ask(page, "Where was the Second Country Workshop held?")
    ask(page, "How many people attended it?")
    reply = page.locator(".message.assistant").last
    expect(reply.locator("p.query")).to_contain_text("Second Country Workshop")
    expect(reply.locator(".passage").filter(has_text="The 29 participants")).not_to_have_count(0)


def test_the_page_says_plainly_when_it_has_no_answer(page: Page, server: str) -> None:
    page.goto(server + "/")
    ask(page, "Who won the Nobel Prize in Physics in 1921?")
    reply = page.locator(".message.assistant").last
    expect(reply.locator("p.abstained")).to_be_visible()
    expect(reply.locator("p.answer")).to_have_count(0)
    expect(reply.locator(".passage[data-rank]")).to_have_count(5)


def test_the_page_fits_a_phone(browser: Browser, server: str) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True,
                                  has_touch=True)  # fmt: skip
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto(server + "/")
    ask(page, "What is GRETA?")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways on a phone ({width}px wide)"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / "phone.png", full_page=True)
    context.close()


def test_the_widget_works_from_an_allowed_origin(
    page: Page, server: str, partner_site: Site
) -> None:
    page.goto(partner_site.allowed_origin + "/index.html")
    page.locator("button.qa-launcher").click()
    page.locator("textarea.qa-input").fill("What is GRETA?")
    page.locator("button.qa-send").click()
    expect(page.locator(".qa-answer")).to_contain_text("GRETA")
    document_link = re.compile(f"^{re.escape(server)}/document")
    expect(page.locator(".qa-citation")).to_have_count(1)  # only the passage that answers
    expect(page.locator(".qa-citation").first).to_have_attribute("href", document_link)
    expect(page.locator(".qa-error")).to_have_count(0)


def test_the_widget_is_refused_from_another_origin(
    page: Page, server: str, partner_site: Site
) -> None:
    refused: list[str] = []
    page.on("console", lambda message: refused.append(message.text))
    page.goto(partner_site.refused_origin + "/index.html")
    page.locator("button.qa-launcher").click()
    page.locator("textarea.qa-input").fill("What is GRETA?")
    page.locator("button.qa-send").click()
    expect(page.locator(".qa-error")).to_be_visible()
    expect(page.locator(".qa-answer")).to_have_count(0)
    # The browser, not the page, refused it: CORS says so in the console.
    assert any("CORS" in text for text in refused), refused


def test_questions_in_the_languages_of_the_region_are_kept_intact(page: Page, server: str) -> None:
    question = "Шта је GRETA? Çfarë bën GRETA për fëmijët — č ć š ž đ?"
    page.goto(server + "/")
    ask(page, question)
    expect(page.locator(".message.user").last).to_have_text(question)
    reply = page.locator(".message.assistant").last
    expect(reply.locator(".passage[data-rank]")).to_have_count(5)


def test_the_api_docs_come_from_the_service_alone(page: Page, server: str) -> None:
    requested: list[str] = []
    refused: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.on("console", lambda message: refused.append(message.text) if _is_csp(message) else None)
    page.goto(server + "/docs")
    operation = page.locator(".opblock").filter(
        has=page.locator(".opblock-summary-path[data-path='/v1/ask']")
    )
    expect(operation).to_be_visible()
    # Trying an operation from the page calls the API, the same origin, under the page's policy.
    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Try it out").click()
    operation.get_by_role("button", name="Execute").click()
    expect(operation.locator(".live-responses-table tbody .response-col_status")).to_have_text(
        "200"
    )
    expect(operation.locator(".live-responses-table")).to_contain_text('"answerable"')
    origin = urlsplit(server)
    elsewhere = [url for url in requested if urlsplit(url)[:2] != origin[:2]]
    assert requested and not elsewhere, elsewhere
    assert any(url.endswith("/docs/assets/swagger-ui-bundle.js") for url in requested)
    assert not refused, refused


def _is_csp(message: ConsoleMessage) -> bool:
    return "Content Security Policy" in message.text


def test_the_chat_page_has_the_default_title(page: Page, server: str) -> None:
    defaults = Settings.model_fields
    page.goto(server + "/")
    expect(page).to_have_title(str(defaults["page_title"].default))
    expect(page.locator("h1")).to_have_text(str(defaults["page_title"].default))
    expect(page.locator(".tagline")).to_have_text(str(defaults["page_tagline"].default))


TITLE = 'Notes <script>window.injected = 1</script> & "minutes"'
TAGLINE = "Field <b>notes</b> from 2024 & 2025"


@pytest.fixture(scope="module")
def named_server(settings: Settings, read_service: QAService) -> Iterator[str]:
    """The app over the same index, with the collection named by settings and the reader on,
    on loopback."""
    named = settings.model_copy(
        update={"page_title": TITLE, "page_tagline": TAGLINE, "index_check_seconds": 0}
    )
    port = free_port()
    config = uvicorn.Config(create_app(named, read_service), host="127.0.0.1", port=port,
                            log_level="warning")  # fmt: skip
    uvicorn_server = uvicorn.Server(config)
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not uvicorn_server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uvicorn_server.should_exit = True
        thread.join(timeout=30)


def test_a_configured_title_shows_as_text(page: Page, named_server: str) -> None:
    page.goto(f"{named_server}/document?id=002_1e161a6a470d0d70")
    expect(page.locator("#document-text")).to_contain_text("Skopje")
    expect(page).to_have_title(re.compile(rf" · {re.escape(TITLE)}$"))
    page.goto(named_server + "/")
    expect(page).to_have_title(TITLE)
    expect(page.locator("h1")).to_have_text(TITLE)
    expect(page.locator(".tagline")).to_have_text(TAGLINE)
    expect(page.locator("header script, header b")).to_have_count(0)
    assert page.evaluate("window.injected") is None


def test_with_the_reader_the_answer_is_bold_in_its_sentence(page: Page, named_server: str) -> None:
    page.goto(named_server + "/")
    ask(page, "How many participants attended the Second Country Workshop?")
    reply = page.locator(".message.assistant").last
    expect(reply.locator("p.answer strong")).to_contain_text("29")
    expect(reply.locator("p.answer")).to_contain_text("participants were drawn from")
    expect(reply.locator("p.answer a.citation")).to_have_count(1)


QUESTION = "Which bodies supported the first joint investigation team?"


@pytest.fixture(scope="module")
def cited(server: str) -> dict[str, Any]:
    """The passage that holds the answer to QUESTION, as /v1/ask returns it."""
    reply = httpx.post(server + "/v1/ask", json={"question": QUESTION}, timeout=60).json()
    passage: dict[str, Any] = reply["passages"][reply["answer"]["passage_rank"] - 1]
    return passage


def _document_link(server: str, passage: dict[str, Any], start: int, end: int) -> str:
    return f"{server}/document?id={quote(passage['document_id'])}&start={start}&end={end}"


def _answer_span(passage: dict[str, Any]) -> tuple[int, int]:
    """The answer sentence's span in the document."""
    highlight = passage["highlight"]
    return passage["start"] + highlight["start"], passage["start"] + highlight["end"]


def test_a_real_citation_is_highlighted(page: Page, server: str, cited: dict[str, Any]) -> None:
    page.goto(_document_link(server, cited, cited["start"], cited["end"]))
    expect(page.locator("#cited")).to_have_text(cited["text"])
    start, end = _answer_span(cited)
    page.goto(_document_link(server, cited, start, end))
    expect(page.locator("#cited")).to_have_text(
        cited["text"][start - cited["start"] : end - cited["start"]]
    )
    expect(page.locator("#cited")).to_be_in_viewport()
    expect(page.get_by_role("link", name="Go to the cited passage")).to_be_visible()
    expect(page.locator(".notice")).to_have_count(0)


def test_a_crafted_span_is_not_highlighted(page: Page, server: str, cited: dict[str, Any]) -> None:
    # Inside the answer sentence: neither bound is a sentence's.
    start, end = _answer_span(cited)
    page.goto(_document_link(server, cited, start + 4, end - 3))
    expect(page.locator(".notice")).to_have_text(
        "The span this link points at is not a passage of this document, so nothing is "
        "highlighted. The whole document is shown."
    )
    expect(page.locator("#document-text")).to_contain_text(cited["text"][:60])
    expect(page.locator("mark")).to_have_count(0)
    expect(page.get_by_text("cited passage")).to_have_count(0)
    # A sentence's start with an end in mid-sentence is no citation either.
    page.goto(_document_link(server, cited, start, end - 3))
    expect(page.locator(".notice")).to_be_visible()
    expect(page.locator("mark")).to_have_count(0)
