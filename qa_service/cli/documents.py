"""`qa add` and `qa remove`: document writes on the index folder, or through a running server."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import typer
from rich.markup import escape

from qa_service.cli.common import (
    CorpusOpt,
    IndexOpt,
    KeyOpt,
    ModelOpt,
    ProgressBars,
    UrlOpt,
    fail,
    out,
    remote,
    settings_from_flags,
    user_errors,
)
from qa_service.config import Settings
from qa_service.corpus.documents import id_from_filename
from qa_service.errors import DocumentExistsError
from qa_service.index.store import IndexData, current_generation_name, index_lock, load_index
from qa_service.index.writes import DocumentUpdater, NewDocument, WriteMode
from qa_service.service import ensure_configured_index, index_spec, load_configured_encoder


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
            body = remote(method, f"{url.rstrip('/')}/v1/documents{target}", api_key,
                           *_multipart(given, name, new.data))  # fmt: skip
            _print_written(body["id"], body["passages"], "")
        return
    settings = settings_from_flags(corpus_dir=corpus_dir, index_dir=index_dir, model=model)
    mode: WriteMode = "upsert" if replace else "create"
    writer, base = _writer(settings)
    with user_errors():
        try:
            # Encoded without the index lock, so that a server's writes go on meanwhile.
            prepared = writer.prepare(base, [(given, new) for given, new, _ in items], mode)
            with index_lock(settings.index_dir):
                _, results = writer.commit(_current(settings, base), prepared, mode)
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
            remote("DELETE", f"{url.rstrip('/')}/v1/documents/{quote(doc_id)}", api_key)
            out.print(f"Removed [bold]{escape(doc_id)}[/].")
        return
    settings = settings_from_flags(corpus_dir=corpus_dir, index_dir=index_dir, model=model)
    writer, base = _writer(settings)
    with user_errors(), index_lock(settings.index_dir):
        writer.remove(_current(settings, base), ids)
    out.print(f"Removed {', '.join(f'[bold]{escape(i)}[/]' for i in ids)}.")


def _writer(settings: Settings) -> tuple[DocumentUpdater, IndexData]:
    """The index folder's writer and its current index (built first if there is none, rebuilt
    if its corpus changed, as `qa serve` would): a write needs the model and the index, not the
    query service."""
    bars = ProgressBars()
    try:
        with user_errors():
            encoder = load_configured_encoder(settings)
            base = ensure_configured_index(settings, encoder, bars, owner=False)
    finally:
        bars.close()
    return DocumentUpdater(index_spec(settings, encoder)), base


def _current(settings: Settings, seen: IndexData) -> IndexData:
    """The current generation (the caller holds the index lock): `seen`, unless another
    process wrote a newer one meanwhile."""
    if current_generation_name(settings.index_dir) == seen.generation:
        return seen
    return load_index(settings.index_dir, settings.index_config())


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
