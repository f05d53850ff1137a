"""`qa add` and `qa remove`: document writes on the index folder, or through a running server."""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.markup import escape

from qa_service.cli.common import (
    CorpusOpt,
    IndexOpt,
    ModelOpt,
    ProgressBars,
    fail,
    out,
    settings_from_flags,
    user_errors,
)
from qa_service.config import Settings
from qa_service.corpus.documents import id_from_filename
from qa_service.errors import DocumentExistsError
from qa_service.index.store import IndexData, index_lock
from qa_service.index.writes import DocumentUpdater, NewDocument
from qa_service.service import ensure_configured_index, index_spec, load_configured_encoder

UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="QA_URL",
        help="Write through the server at this address instead of the index folder [env QA_URL].",
    ),
]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="QA_API_KEY",
        help="API key for --url [env QA_API_KEY].",
        show_default=False,
    ),
]


def add(
    paths: Annotated[
        list[Path], typer.Argument(help="Files to add (.txt, .md, .html, .pdf, .json).")
    ],
    doc_id: Annotated[
        str | None,
        typer.Option(
            "--id", help="The document's id (one file only); default: from the file name."
        ),
    ] = None,
    replace: Annotated[
        bool,
        typer.Option("--replace", help="Replace a document with the same id instead of refusing."),
    ] = False,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    corpus_dir: CorpusOpt = None,
    index_dir: IndexOpt = None,
    model: ModelOpt = None,
) -> None:
    """Add documents to the index (and the corpus folder) without rebuilding it."""
    if doc_id is not None and len(paths) != 1:
        fail("--id names one document: give one file with it")
    items: list[tuple[str, NewDocument, str]] = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as exc:
            fail(f"cannot read {path}: {exc.strerror or exc}")
        given = doc_id or id_from_filename(path.name)
        if given is None:
            fail(f"cannot make a document id from the file name {path.name!r}: give --id")
        items.append((given, NewDocument(data, path.suffix.lower()), path.name))
    if url:
        for given, new, name in items:
            method, target = ("PUT", f"/{quote(given)}") if replace else ("POST", "")
            body = _remote(method, f"{url.rstrip('/')}/v1/documents{target}", api_key,
                           *_multipart(given, name, new.data))  # fmt: skip
            _print_written(body["id"], body["passages"], "")
        return
    settings = settings_from_flags(corpus_dir=corpus_dir, index_dir=index_dir, model=model)
    with _writer(settings) as (writer, base):
        try:
            _, results = writer.write(
                base, [(given, new) for given, new, _ in items], "upsert" if replace else "create"
            )
        except DocumentExistsError as exc:
            fail(f"{exc}; --replace replaces it")
    for result in results:
        verb = "" if result.created else " (replaced)"
        _print_written(result.document.id, result.passages, verb)


def remove(
    ids: Annotated[list[str], typer.Argument(help="Ids of the documents to remove.")],
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    corpus_dir: CorpusOpt = None,
    index_dir: IndexOpt = None,
    model: ModelOpt = None,
) -> None:
    """Remove documents from the index and their files from the corpus folder."""
    if url:
        for doc_id in ids:
            _remote("DELETE", f"{url.rstrip('/')}/v1/documents/{quote(doc_id)}", api_key)
            out.print(f"Removed [bold]{escape(doc_id)}[/].")
        return
    settings = settings_from_flags(corpus_dir=corpus_dir, index_dir=index_dir, model=model)
    with _writer(settings) as (writer, base):
        writer.remove(base, ids)
    out.print(f"Removed {', '.join(f'[bold]{escape(i)}[/]' for i in ids)}.")


@contextmanager
def _writer(settings: Settings) -> Iterator[tuple[DocumentUpdater, IndexData]]:
    """The index folder's writer and its current index (built first if there is none, rebuilt
    if stale, as `qa serve` would), under the index lock: a write needs the model and the index,
    not the query service."""
    bars = ProgressBars()
    try:
        with user_errors():
            encoder = load_configured_encoder(settings)
            with index_lock(settings.index_dir):
                base = ensure_configured_index(settings, encoder, bars)
                bars.close()
                yield DocumentUpdater(index_spec(settings, encoder)), base
    finally:
        bars.close()


def _print_written(doc_id: str, passages: int, note: str) -> None:
    out.print(f"Added [bold]{escape(doc_id)}[/]{note}: {passages} passage(s).")


def _multipart(doc_id: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    name = filename.replace('"', "%22").replace("\r", "").replace("\n", "")
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="id"\r\n\r\n{doc_id}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def _remote(
    method: str, url: str, api_key: str | None, body: bytes | None = None, content_type: str = ""
) -> Any:
    headers = {"Accept": "application/json"}
    if content_type:
        headers["Content-Type"] = content_type
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            text = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        with contextlib.suppress(ValueError, KeyError, TypeError):
            detail = str(json.loads(detail)["detail"])
        fail(f"{method} {url}: {exc.code}: {detail}", code=1)
    except urllib.error.URLError as exc:
        fail(f"cannot reach {url}: {exc.reason}", code=1)
    return json.loads(text) if text else None
