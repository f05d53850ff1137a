from __future__ import annotations

from fastapi import APIRouter

from qa_service.api.deps import ServiceDep
from qa_service.api.schemas import DocumentList, DocumentOut, DocumentSummary, ErrorResponse

router = APIRouter(prefix="/v1/documents", tags=["documents"])


@router.get("")
def list_documents(service: ServiceDep) -> DocumentList:
    counts = service.passage_counts()
    return DocumentList(
        documents=[
            DocumentSummary(id=d.id, title=d.title, source=d.source, passages=counts[d.id])
            for d in service.documents()
        ]
    )


@router.get(
    "/{document_id:path}",
    responses={404: {"model": ErrorResponse, "description": "No document with that id."}},
)
def get_document(document_id: str, service: ServiceDep) -> DocumentOut:
    """The whole document; passage `start`/`end` offsets index into its `text`."""
    return DocumentOut.from_document(service.document(document_id))
