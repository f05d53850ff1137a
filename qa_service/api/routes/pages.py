"""The service's own web pages, its API documentation and the embeddable widget, served from the
package: no CDN, no build step."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from string import Template

import fastapi_offline
from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import Scope

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# Swagger UI's script, stylesheet and icon, which FastAPI's own /docs would load from a CDN (and
# so fail offline, and tell the CDN of every visitor). The fastapi-offline package ships them.
DOCS_ASSETS_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"
DOCS_ASSETS_URL = "/docs/assets"
DOCS_URL = "/docs"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"


def content_security_policy(script_src: str = "'self'") -> str:
    """Everything from this origin only; `script_src` widens scripts for one page."""
    return (
        f"default-src 'self'; script-src {script_src}; style-src 'self'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'self'"
    )


# The pages load only their own scripts and styles and talk only to this origin, so a strict
# policy costs nothing and keeps an injected passage from ever running as script.
PAGE_HEADERS = {
    "Content-Security-Policy": content_security_policy(),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class Pages:
    """The HTML pages, rendered once from their templates with the collection's name."""

    chat: str
    document: str
    widget: str

    @classmethod
    def render(cls, title: str, tagline: str) -> Pages:
        # Settings are plain text: escaped, so a title like "<b>" shows as written.
        fields = {"title": html.escape(title), "tagline": html.escape(tagline)}
        return cls(
            chat=_template("index.html").substitute(fields),
            document=_template("document.html").substitute(fields),
            widget=_widget(title),
        )


# The widget's default panel title; a JavaScript file, so `string.Template` (whose `${…}` its
# template literals use too) cannot fill it.
_WIDGET_TITLE = 'const SERVICE_TITLE = "Ask the documents";'


def _widget(title: str) -> str:
    script = (STATIC_DIR / "widget.js").read_text(encoding="utf-8")
    if script.count(_WIDGET_TITLE) != 1:
        raise RuntimeError(f"widget.js has lost its line {_WIDGET_TITLE!r}")
    # A JSON string is a JavaScript string literal; ASCII-only, so no line separator breaks it.
    return script.replace(_WIDGET_TITLE, f"const SERVICE_TITLE = {json.dumps(title)};")


def _template(name: str) -> Template:
    return Template((STATIC_DIR / name).read_text(encoding="utf-8"))


class StaticAssets(StaticFiles):
    """`/static/` and the docs assets, with the pages' headers.

    The HTML files are templates, served rendered at `/` and `/document` only.
    """

    async def get_response(self, path: str, scope: Scope) -> Response:
        if PurePosixPath(path).suffix.lower() == ".html":
            raise HTTPException(status_code=404)
        response = await super().get_response(path, scope)
        response.headers.update(PAGE_HEADERS)
        return response


@router.get("/")
def chat_page(request: Request) -> HTMLResponse:
    pages: Pages = request.app.state.pages
    return HTMLResponse(pages.chat, headers=PAGE_HEADERS)


@router.get("/document")
def document_page(request: Request) -> HTMLResponse:
    """The document view; it reads `id`, `start` and `end` from the query string itself."""
    pages: Pages = request.app.state.pages
    return HTMLResponse(pages.document, headers=PAGE_HEADERS)


@router.get("/widget.js")
def widget(request: Request) -> Response:
    """Loaded by `<script src>` from other sites, which needs no CORS; its calls to the API do."""
    pages: Pages = request.app.state.pages
    return Response(pages.widget, media_type="text/javascript")


_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def _allowing_its_inline_scripts(page: HTMLResponse) -> HTMLResponse:
    """FastAPI's docs pages start Swagger UI from an inline script, which the pages' policy
    forbids: this page's policy allows exactly those scripts, by their hashes, and no other."""
    hashes = [
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(bytes(page.body).decode())
    ]
    page.headers.update(PAGE_HEADERS)
    page.headers["Content-Security-Policy"] = content_security_policy(" ".join(["'self'", *hashes]))
    return page


@router.get(DOCS_URL)
def api_docs(request: Request) -> HTMLResponse:
    """FastAPI's Swagger UI page, with its files served from here instead of a CDN."""
    app: FastAPI = request.app
    root = str(request.scope.get("root_path", "")).rstrip("/")
    assert app.openapi_url is not None
    page = get_swagger_ui_html(
        openapi_url=root + app.openapi_url,
        title=f"{app.title} - Swagger UI",
        oauth2_redirect_url=root + OAUTH2_REDIRECT_URL,
        init_oauth=app.swagger_ui_init_oauth,
        swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
        swagger_ui_parameters=app.swagger_ui_parameters,
    )
    return _allowing_its_inline_scripts(page)


@router.get(OAUTH2_REDIRECT_URL)
def api_docs_oauth2_redirect() -> HTMLResponse:
    """Where Swagger UI's OAuth2 sign-in returns to, as FastAPI's default docs have it."""
    return _allowing_its_inline_scripts(get_swagger_ui_oauth2_redirect_html())
