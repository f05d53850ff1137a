"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from qa_service.api import metrics
from qa_service.api.deps import ReadAccess
from qa_service.api.errors import install_error_handlers
from qa_service.api.index_watch import watch_index
from qa_service.api.mcp import MCP_HEADERS, MCP_PATH, MCPEndpoint
from qa_service.api.middleware import (
    QUESTION_PATHS,
    AdmissionLimiter,
    AdmissionMiddleware,
    BodyLimits,
    BodySizeLimitMiddleware,
    RateLimitMiddleware,
    RequestContextMiddleware,
)
from qa_service.api.routes import ask, chat, documents, health, openai, pages
from qa_service.config import Settings
from qa_service.service import AnsweringService, QAService

logger = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    service: AnsweringService | None = None,
    load: Callable[[], AnsweringService] | None = None,
) -> FastAPI:
    """An app over `service`, or one that loads the service in the background: with `load`, or
    else `QAService.from_settings(settings)`.

    Loading in the background lets `/healthz` answer at once while `/readyz` reports false until
    the model and index are in memory.
    """
    settings = settings or Settings()
    loader = load or partial(QAService.from_settings, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading: asyncio.Task[None] | None = None
        if app.state.service is None:

            async def load() -> None:
                try:
                    app.state.service = await asyncio.to_thread(loader)
                except Exception:
                    logger.exception("could not load the question-answering service")

            loading = asyncio.create_task(load())
        watcher: asyncio.Task[None] | None = None
        if settings.index_check_seconds > 0:
            watcher = asyncio.create_task(
                watch_index(lambda: app.state.service, settings.index_check_seconds)
            )
        async with app.state.mcp.run():  # the MCP transport's session manager
            yield
        app.state.shutting_down = True
        if loading is not None:
            loading.cancel()
        if watcher is not None:
            watcher.cancel()

    app = FastAPI(
        title="Semantic question answering",
        version="0.1.0",
        summary="Answers questions with the best-matching passages, each with an exact citation.",
        lifespan=lifespan,
        # /docs is served by routes/pages.py, from the package's own copy of Swagger UI. ReDoc
        # is not served: it styles itself with injected <style> elements, which the pages'
        # policy forbids, and one documentation page is enough.
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=pages.OAUTH2_REDIRECT_URL,
    )
    app.state.service = service
    app.state.shutting_down = False
    app.state.log_questions = settings.log_questions
    app.state.api_keys = list(settings.api_keys)
    app.state.read_api_keys = list(settings.read_api_keys)
    app.state.pages = pages.Pages.render(settings.page_title, settings.page_tagline)
    app.state.admission = limiter = AdmissionLimiter(settings.max_concurrent_requests)
    app.state.metrics = metrics.Metrics(lambda: app.state.service, lambda: limiter.in_flight)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(ask.router, dependencies=[ReadAccess])
    app.include_router(chat.router, dependencies=[ReadAccess])
    app.include_router(openai.router, dependencies=[ReadAccess])
    app.state.mcp = MCPEndpoint(lambda: app.state.service, settings.host, settings.cors_origins)
    app.add_route(MCP_PATH, app.state.mcp, include_in_schema=False)  # its own key check
    app.include_router(documents.router)
    app.include_router(pages.router)
    app.mount("/static", pages.StaticAssets(directory=pages.STATIC_DIR), name="static")
    app.mount(
        pages.DOCS_ASSETS_URL,
        pages.StaticAssets(directory=pages.DOCS_ASSETS_DIR),
        name="docs-assets",
    )
    app.include_router(metrics.router)
    # Middleware added later wraps what was added before. The limits sit inside CORS, so that a
    # browser can read their 413, 429 and 503; the request context is outermost, so that every
    # response, refusals and CORS preflights included, has a request id and is logged and counted.
    # Document uploads get their own, larger cap.
    limits = BodyLimits(settings.max_body_bytes, {"/v1/documents": settings.max_upload_bytes})
    app.add_middleware(BodySizeLimitMiddleware, limits=limits)
    questions = {*QUESTION_PATHS, "/v1/chat/completions", MCP_PATH}  # MCP: tool calls are POSTs
    app.add_middleware(AdmissionMiddleware, limiter=limiter, paths=questions)
    if settings.rate_limit:
        app.add_middleware(RateLimitMiddleware, limits=settings.rate_limit)
    if settings.cors_origins:
        # Closed unless configured: a browser page on any other origin is refused.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            # MCP's streamable HTTP sends and reads its own headers (`/mcp`).
            allow_headers=["Content-Type", "Authorization", *MCP_HEADERS],
            expose_headers=["Retry-After", "X-Request-ID", "Mcp-Session-Id"],
            max_age=600,
        )
    app.add_middleware(RequestContextMiddleware, metrics=app.state.metrics)
    return app
