from __future__ import annotations

import uuid
from pathlib import PurePosixPath
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from qa_service.api.deps import ReadAccess, ServiceDep, WriteAccess
from qa_service.api.errors import json_body
from qa_service.api.schemas import (
    DocumentIn,
    DocumentList,
    DocumentOut,
    DocumentSummary,
    ErrorResponse,
)
from qa_service.corpus.documents import MEDIA_TYPES, id_from_filename
from qa_service.errors import (
    DocumentExistsError,
    DocumentNotFoundError,
    InvalidDocumentError,
    UnsupportedDocumentTypeError,
)
from qa_service.index.writes import NewDocument, WriteMode, WriteResult

router = APIRouter(prefix="/v1/documents", tags=["documents"])

_MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": ".txt, .md, .html, "
                 ".pdf or .json (a JSON document: text, title, source, metadata)"},
        "id": {"type": "string", "description": "The document's id; by default from the file "
               "name (POST) or the path (PUT)."},
    },
}  # fmt: skip
_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": DocumentIn.model_json_schema()},
            "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
        },
    }
}


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _error("No API key, or a wrong one (`Authorization: Bearer <key>`)."),
    403: _error("Writes are disabled: no QA_API_KEYS configured."),
    503: _error("Loading, or another write held the index for too long; retry later."),
}
_WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    **_AUTH_ERRORS,
    409: _error("POST: a document with this id exists."),
    413: _error("Body over QA_MAX_UPLOAD_BYTES."),
    415: _error("A file type no loader reads."),
    422: _error("A bad id, or a document that is unreadable or empty (the reason is given)."),
}

Offset = Annotated[int, Query(ge=0, description="Documents to skip.")]
Limit = Annotated[int | None, Query(ge=1, description="At most this many (default: all).")]


@router.get("", dependencies=[ReadAccess], responses=_AUTH_ERRORS)
def list_documents(
    service: ServiceDep,
    offset: Offset = 0,
    limit: Limit = None,
) -> DocumentList:
    """The collection's documents in a stable order (the index's) while nothing is written;
    `total` counts them all, so a client pages with `offset` and `limit`."""
    index = service.index  # one snapshot: a write meanwhile cannot mix two states
    counts = index.passage_counts()
    ids = list(index.documents)  # the ids alone: over shards, no document is fetched
    page = ids[offset:] if limit is None else ids[offset : offset + limit]
    heads = index.heads(page)
    return DocumentList(
        total=len(ids),
        documents=[
            DocumentSummary(id=i, title=heads[i].title, source=heads[i].source, passages=counts[i])
            for i in page
        ],
    )


@router.get(
    "/{document_id:path}",
    dependencies=[ReadAccess],
    responses={404: _error("No document with that id."), **_AUTH_ERRORS},
)
def get_document(document_id: str, service: ServiceDep) -> DocumentOut:
    """The whole document and its sentences; passage `start`/`end` offsets index into its `text`
    and fall on its sentences' bounds."""
    index = service.index  # one snapshot: the sentences are those of this version of the text
    document = index.documents.get(document_id)
    if document is None:
        raise DocumentNotFoundError(document_id)
    return DocumentOut.from_document(document, index.units[document.id])


@router.post(
    "",
    status_code=201,
    dependencies=[WriteAccess],
    responses=_WRITE_ERRORS,
    openapi_extra=_BODY,
)
async def add_document(
    request: Request, response: Response, service: ServiceDep
) -> DocumentSummary:
    """Add a document: a file upload (multipart `file`, optional `id`) or JSON fields.

    Indexed with the same loaders and passage splitting as the corpus folder, and kept there
    (`<corpus>/<id><ext>`). Answered once the document is durable and searchable.
    """
    doc_id, new = await _read_document(request, None)
    try:
        return await _write(service, response, doc_id, new, "create")
    except DocumentExistsError as exc:
        raise DocumentExistsError(
            f"{exc}; replace it with PUT /v1/documents/{doc_id} or choose another id"
        ) from None


@router.put(
    "/{document_id:path}",
    status_code=200,
    dependencies=[WriteAccess],
    responses={
        201: {"model": DocumentSummary, "description": "Created."},
        404: _error("No route: the id holds characters a path cannot (a line break)."),
        **_WRITE_ERRORS,
    },
    openapi_extra=_BODY,
)
async def put_document(
    document_id: str, request: Request, response: Response, service: ServiceDep
) -> DocumentSummary:
    """Replace the document with this id (200), or create it (201); the same bodies as POST."""
    doc_id, new = await _read_document(request, document_id)
    return await _write(service, response, doc_id, new, "upsert")


@router.delete(
    "/{document_id:path}",
    status_code=204,
    dependencies=[WriteAccess],
    responses={
        404: _error("No document with that id."),
        409: _error("It is the last document."),
        **_AUTH_ERRORS,
    },
)
async def delete_document(document_id: str, service: ServiceDep) -> Response:
    """Remove the document, from the index and the corpus folder."""
    await run_in_threadpool(service.remove_documents, [document_id])
    return Response(status_code=204)


async def _write(
    service: ServiceDep, response: Response, doc_id: str, new: NewDocument, mode: WriteMode
) -> DocumentSummary:
    results: list[WriteResult] = await run_in_threadpool(
        service.add_documents, [(doc_id, new)], mode
    )
    (result,) = results
    document = result.document
    if result.created:
        response.status_code = 201
        response.headers["Location"] = f"/v1/documents/{quote(document.id)}"
    return DocumentSummary(
        id=document.id, title=document.title, source=document.source, passages=result.passages
    )


async def _read_document(request: Request, path_id: str | None) -> tuple[str, NewDocument]:
    """The document id and the document from a multipart upload or a JSON body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return await _read_upload(request, path_id)
    if content_type == "application/json" or content_type.endswith("+json"):
        try:
            # Read as FastAPI reads the other bodies, so that errors name the field (pydantic's
            # own JSON parser refuses a lone surrogate's escape as malformed JSON).
            body = DocumentIn.model_validate(json_body(await request.body()))
        except ValidationError as exc:
            errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
            raise RequestValidationError(errors) from None
        return _given_id(body.id, path_id) or uuid.uuid4().hex, NewDocument.from_fields(
            body.text, body.title, body.source, body.metadata
        )
    raise UnsupportedDocumentTypeError(
        f"unsupported request body {content_type or '(no content type)'!r}: upload a file as "
        'multipart/form-data (field `file`) or send JSON {"text": ...}'
    )


async def _read_upload(request: Request, path_id: str | None) -> tuple[str, NewDocument]:
    try:
        form = await request.form(max_files=1, max_fields=4)
    except HTTPException as exc:
        raise InvalidDocumentError(f"unreadable multipart body: {exc.detail}") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidDocumentError("the multipart body has no file in a field named `file`")
        given = form.get("id")
        if given is not None and not isinstance(given, str):
            raise InvalidDocumentError("the `id` field must be text")
        data = await upload.read()
        filename = upload.filename or ""
        suffix = PurePosixPath(filename.replace("\\", "/")).suffix.lower()
        if not suffix:
            suffix = MEDIA_TYPES.get((upload.content_type or "").split(";")[0].strip(), "")
        doc_id = _given_id(given or None, path_id) or id_from_filename(filename)
        return doc_id or uuid.uuid4().hex, NewDocument(data, suffix)
    finally:
        await form.close()


def _given_id(body_id: str | None, path_id: str | None) -> str | None:
    if body_id is not None and path_id is not None and body_id != path_id:
        raise InvalidDocumentError(
            f"the body's id {body_id!r} differs from the id in the path {path_id!r}"
        )
    return path_id or body_id
