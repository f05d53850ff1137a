"""The service's own web pages and the embeddable widget, served from the package: no CDN, no
build step."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

# The pages load only their own scripts and styles and talk only to this origin, so a strict
# policy costs nothing and keeps an injected passage from ever running as script.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(include_in_schema=False)


class StaticAssets(StaticFiles):
    """`/static/`, with the pages' headers: the HTML files are reachable there too."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(PAGE_HEADERS)
        return response


@router.get("/")
def chat_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)


@router.get("/document")
def document_page() -> FileResponse:
    """The document view; it reads `id`, `start` and `end` from the query string itself."""
    return FileResponse(STATIC_DIR / "document.html", headers=PAGE_HEADERS)


@router.get("/widget.js")
def widget() -> FileResponse:
    """Loaded by `<script src>` from other sites, which needs no CORS; its calls to the API do."""
    return FileResponse(STATIC_DIR / "widget.js", media_type="text/javascript")
