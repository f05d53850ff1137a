from __future__ import annotations

from fastapi.testclient import TestClient

from qa_service.api import create_app
from qa_service.config import Settings


def test_documents_are_listed_with_passage_counts(client: TestClient) -> None:
    documents = client.get("/v1/documents").json()["documents"]
    assert len(documents) == 5
    first = documents[0]
    assert first["id"] == "000_8fe30e30b1d64544"
    assert first["title"].startswith("Regional conference")
    assert first["source"] == "000_8fe30e30b1d64544.txt"
    assert all(d["passages"] > 0 for d in documents)


def test_documents_are_listed_a_page_at_a_time(client: TestClient) -> None:
    everything = client.get("/v1/documents").json()
    assert everything["total"] == len(everything["documents"]) == 5
    ids = [d["id"] for d in everything["documents"]]
    pages = [
        client.get("/v1/documents", params={"offset": n, "limit": 2}).json() for n in (0, 2, 4)
    ]
    assert [d["id"] for page in pages for d in page["documents"]] == ids
    assert [len(page["documents"]) for page in pages] == [2, 2, 1]
    assert all(page["total"] == 5 for page in pages)
    assert pages[1]["documents"] == everything["documents"][2:4]
    past = client.get("/v1/documents", params={"offset": 9}).json()
    assert past == {"total": 5, "documents": []}
    for name, bad in (("offset", -1), ("limit", 0), ("limit", "ten")):
        refused = client.get("/v1/documents", params={name: bad})
        assert refused.status_code == 422 and name in refused.text, (name, bad)


def test_document_has_text_and_metadata(client: TestClient) -> None:
    document = client.get("/v1/documents/002_1e161a6a470d0d70").json()
    assert document["metadata"]["publisher"] == "UNODC"
    assert "Skopje" in document["text"]


def test_unknown_document_is_404(client: TestClient) -> None:
    response = client.get("/v1/documents/nope")
    assert response.status_code == 404
    assert response.json() == {"detail": "no document with id 'nope'"}


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"] is True and ready["documents"] == 5 and ready["passages"] > 5


def test_not_ready_until_loaded(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # An app whose loading fails (no corpus) stays alive but never claims to be ready.
    settings = Settings(corpus_dir=tmp_path / "missing", index_dir=tmp_path / "idx")
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503
        response = client.post("/v1/ask", json={"question": "anything?"})
        assert response.status_code == 503
        assert response.headers["Retry-After"]
        assert "loading" in response.json()["detail"]


def test_openapi_documents_every_route_with_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/v1/ask", "/v1/ask/batch", "/v1/documents", "/v1/documents/{document_id}",
            "/healthz", "/readyz"} <= set(spec["paths"])  # fmt: skip
    assert spec["components"]["schemas"]["AskRequest"]["examples"]
    assert client.get("/docs").status_code == 200
