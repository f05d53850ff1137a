"""An MCP server, so that agents can search, ask and read the cited documents as tools.

The same server runs over streamable HTTP at `/mcp` inside the app (behind the read keys, when
QA_READ_API_KEYS is set) and over stdio as `qa mcp` (local, no key). Citations are the API's:
document id and `start`/`end` offsets into the text `get_document` returns.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio.to_thread
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from qa_service.api.deps import key_matches
from qa_service.api.routes.openai import Citation, answer_citations, answer_content
from qa_service.api.schemas import MAX_QUESTION_CHARS, MAX_TOP_K, AskResponse, PassageOut
from qa_service.errors import DocumentNotFoundError, QAError
from qa_service.query.pipeline import AskOptions
from qa_service.service import AnsweringService

MCP_PATH = "/mcp"
# The request headers of MCP's streamable HTTP transport, which a browser client on an allowed
# origin may send only if CORS allows them.
MCP_HEADERS = ("Mcp-Session-Id", "Mcp-Protocol-Version", "Last-Event-ID")
LOOPBACK = ("127.0.0.1", "localhost", "::1")

Question = Annotated[
    str, Field(min_length=1, max_length=MAX_QUESTION_CHARS, description="A question.")
]
TopK = Annotated[int, Field(ge=1, le=MAX_TOP_K, description="How many passages to return.")]


class SearchResult(BaseModel):
    answerable: bool = Field(description="False when no passage is relevant enough to answer.")
    passages: list[PassageOut] = Field(
        description="Best first; each cites `document_id` and its `start`..`end` offsets."
    )


class AskResult(BaseModel):
    answerable: bool
    answer: str | None = Field(description="The answer sentence, verbatim; null on abstention.")
    citations: list[Citation] = Field(description="The passage the answer comes from.")
    content: str = Field(description="The answer with its numbered citation, for a reader.")


class DocumentText(BaseModel):
    id: str
    title: str | None
    source: str | None
    start: int
    end: int
    page: int | None = Field(description="1-based page of `start` for paged formats (PDF).")
    length: int = Field(description="Length of the whole document's text.")
    text: str = Field(description="The document's text from `start` to `end`.")


ServiceGetter = Callable[[], AnsweringService | None]


def build_server(get_service: ServiceGetter) -> MCPServer[Any]:
    """The tools over whichever service `get_service` returns (None while it loads)."""
    # MCPServer configures logging when the root logger has no handler yet (a library must not):
    # a placeholder handler keeps the process's logging as the app set it up.
    root = logging.getLogger()
    placeholder = logging.NullHandler()
    root.addHandler(placeholder)
    try:
        server: MCPServer[Any] = MCPServer(
            "qa-service",
            instructions="Search and answer questions over a document collection, with exact "
            "citations: a document id and character offsets into the text `get_document` gives.",
        )
    finally:
        root.removeHandler(placeholder)

    def service() -> AnsweringService:
        found = get_service()
        if found is None:
            raise ToolError("the model and index are still loading; try again shortly")
        return found

    async def ask(question: str, top_k: int | None) -> AskResponse:
        svc = service()
        try:
            timed = await anyio.to_thread.run_sync(svc.ask, question, AskOptions(top_k=top_k))
        except QAError as exc:
            raise ToolError(str(exc)) from None
        return AskResponse.from_answer(timed.answer, timed.documents, timed.took_ms)

    read_only = ToolAnnotations(readOnlyHint=True, openWorldHint=False)

    @server.tool(name="search", annotations=read_only)
    async def search_tool(question: Question, top_k: TopK = 5) -> SearchResult:
        """Find the passages that best match a question, each with its citation and scores."""
        response = await ask(question, top_k)
        return SearchResult(answerable=response.answerable, passages=response.passages)

    @server.tool(name="ask", annotations=read_only)
    async def ask_tool(question: Question) -> AskResult:
        """Answer a question with the sentence that answers it and the citation of its passage,
        or say that the documents do not answer it."""
        answer, citations = answer_citations(await ask(question, None), None)
        content = answer_content(answer, citations)
        return AskResult(
            answerable=answer is not None, answer=answer, citations=citations, content=content
        )

    @server.tool(name="get_document", annotations=read_only)
    async def get_document_tool(
        document_id: Annotated[str, Field(min_length=1, max_length=1000)],
        start: Annotated[int | None, Field(ge=0)] = None,
        end: Annotated[int | None, Field(ge=0)] = None,
    ) -> DocumentText:
        """The text a citation points into: the whole document, or its `start`..`end` span."""
        try:
            document = service().document(document_id)
        except DocumentNotFoundError:
            raise ToolError(f"no document has the id {document_id!r}") from None
        length = len(document.text)
        first = 0 if start is None else start
        last = length if end is None else end
        if not first <= last <= length:
            raise ToolError(f"the span must satisfy 0 <= start <= end <= {length}")
        return DocumentText(
            id=document.id, title=document.title, source=document.source, start=first,
            end=last, page=_page(document.page_starts, first), length=length,
            text=document.text[first:last],
        )  # fmt: skip

    return server


def _page(page_starts: Sequence[int], offset: int) -> int | None:
    return bisect.bisect_right(page_starts, offset) if page_starts else None


class MCPEndpoint:
    """The streamable-HTTP transport as an ASGI endpoint of the app, behind the read keys.

    The SDK's session manager runs only inside `run()`, entered in the app's lifespan; each
    lifespan gets a new one, as a manager cannot be started twice.
    """

    def __init__(self, get_service: ServiceGetter, host: str, origins: Sequence[str] = ()) -> None:
        self.server = build_server(get_service)
        # Against DNS rebinding, as the SDK does for a server on loopback: a browser page may
        # reach it only from the host itself or an allowed origin. A server bound elsewhere
        # answers to whatever name it is reached by, and is protected by its keys.
        self.security = TransportSecuritySettings(
            enable_dns_rebinding_protection=host in LOOPBACK,
            allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
            allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*",
                             *origins],
        )  # fmt: skip
        self._manager: StreamableHTTPSessionManager | None = None

    @asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        # Stateless, JSON answers: every tool call is one request and its response, so nothing
        # is kept between requests and any worker may answer.
        self.server.streamable_http_app(
            streamable_http_path=MCP_PATH, stateless_http=True, json_response=True,
            transport_security=self.security,
        )  # fmt: skip
        manager = self.server.session_manager
        async with manager.run():
            self._manager = manager
            try:
                yield
            finally:
                self._manager = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["app"].state
        if state.read_api_keys:
            keys = [*state.read_api_keys, *state.api_keys]
            header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not key_matches(token.strip(), keys):
                response = JSONResponse(
                    {"detail": "the MCP endpoint needs an API key: send `Authorization: Bearer "
                     "<key>`"}, status_code=401, headers={"WWW-Authenticate": "Bearer"},
                )  # fmt: skip
                await response(scope, receive, send)
                return
        if self._manager is None:
            await JSONResponse({"detail": "not started"}, status_code=503)(scope, receive, send)
            return
        await self._manager.handle_request(scope, receive, send)
