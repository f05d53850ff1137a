"""POST, PUT and DELETE /v1/documents in process: authorisation, every bad input, and writes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from embeddings import Encoder
from qa_service.api import create_app
from qa_service.config import Settings
from qa_service.index.store import current_generation_name
from qa_service.service import QAService
from tests.qa_service.api.conftest import writable_copy

KEYS = ["first-key-0123456789", "second-key-9876543210"]
AUTH = {"Authorization": f"Bearer {KEYS[1]}"}


@pytest.fixture(scope="module")
def writable_settings(
    settings: Settings, service: QAService, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return writable_copy(settings, tmp_path_factory, api_keys=KEYS, max_upload_bytes=64 * 1024)


@pytest.fixture(scope="module")
def writer(writable_settings: Settings, encoder: Encoder) -> Iterator[TestClient]:
    service = QAService.from_settings(writable_settings, encoder=encoder)
    with TestClient(create_app(writable_settings, service)) as client:
        yield client


def _snapshot(client: TestClient, settings: Settings) -> tuple[object, ...]:
    files = sorted(p.relative_to(settings.corpus_dir).as_posix()
                   for p in settings.corpus_dir.rglob("*"))  # fmt: skip
    return current_generation_name(settings.index_dir), client.get("/v1/documents").json(), files


def test_writes_are_disabled_without_keys(client: TestClient) -> None:
    response = client.post("/v1/documents", json={"text": "x"})
    assert response.status_code == 403
    assert "QA_API_KEYS" in response.json()["detail"]
    assert client.delete("/v1/documents/000_8fe30e30b1d64544").status_code == 403
    assert client.get("/v1/documents").status_code == 200  # reads stay open


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEYS[0]}"},
     {"Authorization": f"Bearer {KEYS[0]}x"}, {"Authorization": "Bearer"}],
)  # fmt: skip
def test_a_missing_or_wrong_key_is_401(
    writer: TestClient, writable_settings: Settings, headers: dict[str, str]
) -> None:
    before = _snapshot(writer, writable_settings)
    for response in (
        writer.post("/v1/documents", json={"text": "Hello there."}, headers=headers),
        writer.put("/v1/documents/x", json={"text": "Hello there."}, headers=headers),
        writer.delete("/v1/documents/000_8fe30e30b1d64544", headers=headers),
    ):
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
    assert _snapshot(writer, writable_settings) == before


def test_any_configured_key_writes(writer: TestClient) -> None:
    for number, key in enumerate(KEYS):
        response = writer.post(
            "/v1/documents",
            json={"id": f"keyed-{number}", "text": f"Written with key number {number}."},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert response.status_code == 201, response.text


def test_json_document_round_trip(writer: TestClient) -> None:
    body = {"id": "reports/otter", "title": "Otters", "source": "field notes",
            "text": "The otter Brambleglow was seen in Lake Ohrid on 3 May 2024.",
            "metadata": {"publisher": "Lake Watch", "date": "2024-05-03"}}  # fmt: skip
    response = writer.post("/v1/documents", json=body, headers=AUTH)
    assert response.status_code == 201, response.text
    assert response.headers["location"] == "/v1/documents/reports/otter"
    assert response.json() == {"id": "reports/otter", "title": "Otters", "source": "field notes",
                               "passages": 1}  # fmt: skip
    document = writer.get("/v1/documents/reports/otter").json()
    assert document["metadata"] == {"publisher": "Lake Watch", "date": "2024-05-03"}
    answer = writer.post(
        "/v1/ask",
        json={
            "question": "Where was Brambleglow seen?",
            "filters": {"metadata": {"publisher": "Lake Watch"}},
        },
    )
    top = answer.json()["passages"][0]
    assert top["document_id"] == "reports/otter" and top["title"] == "Otters"
    assert document["text"][top["start"] : top["end"]] == top["text"]


def test_upload_put_and_delete(writer: TestClient, writable_settings: Settings) -> None:
    files = {"file": ("Lynx Survey.md", b"# Lynx survey\n\nThe lynx Emberpaw roams Mavrovo.")}
    response = writer.post("/v1/documents", files=files, headers=AUTH)
    assert response.status_code == 201, response.text
    assert response.json()["id"] == "lynx-survey" and response.json()["title"] == "Lynx survey"
    assert (writable_settings.corpus_dir / "lynx-survey.md").exists()

    files = {"file": ("new.txt", b"The lynx Emberpaw moved to Shar Mountain.")}
    response = writer.put("/v1/documents/lynx-survey", files=files, headers=AUTH)
    assert response.status_code == 200, response.text
    assert writer.get("/v1/documents/lynx-survey").json()["text"].endswith("Shar Mountain.")
    assert not (writable_settings.corpus_dir / "lynx-survey.md").exists()

    response = writer.put("/v1/documents/made-by-put", json={"text": "Created by PUT."},
                          headers=AUTH)  # fmt: skip
    assert response.status_code == 201 and response.headers["location"].endswith("made-by-put")

    assert writer.delete("/v1/documents/lynx-survey", headers=AUTH).status_code == 204
    assert writer.get("/v1/documents/lynx-survey").status_code == 404
    ids = {d["id"] for d in writer.get("/v1/documents").json()["documents"]}
    assert "lynx-survey" not in ids and "made-by-put" in ids
    assert writer.delete("/v1/documents/lynx-survey", headers=AUTH).status_code == 404


@pytest.mark.parametrize(
    ("request_args", "status", "detail"),
    [
        ({"json": {"id": "000_8fe30e30b1d64544", "text": "Again."}}, 409, "exists already"),
        ({"files": {"file": ("big.txt", b"word " * 20_000)}}, 413, "larger than the limit"),
        ({"files": {"file": ("tool.exe", b"MZ binary")}}, 415, "unsupported file type"),
        ({"files": {"file": ("noext", b"text", "application/x-thing")}}, 415, "unsupported"),
        ({"content": b"text", "headers": {"content-type": "text/plain"}}, 415, "multipart"),
        ({"files": {"file": ("empty.txt", b"")}}, 422, "empty file"),
        ({"files": {"file": ("blank.md", b"  \n\n ")}}, 422, "no text"),
        ({"files": {"file": ("latin.txt", b"caf\xe9 au lait")}}, 422, "not valid UTF-8"),
        ({"files": {"file": ("nul.txt", b"a\x00b")}}, 422, "binary"),
        ({"files": {"file": ("broken.pdf", b"%PDF-1.7 garbage")}}, 422, "PDF"),
        ({"files": {"file": ("doc.json", b'{"no": "text"}')}}, 422, "JSON document"),
        ({"files": {"other": ("a.txt", b"x")}}, 422, "no file"),
        ({"data": {"id": "x"}}, 415, "multipart"),
        ({"json": {"text": "No id problem.", "id": "../../etc/passwd"}}, 422, "not allowed"),
        ({"json": {"text": "Unknown field.", "colour": "red"}}, 422, "colour"),
        ({"json": {"title": "No text"}}, 422, "text"),
    ],
)  # fmt: skip
def test_bad_input_is_refused_and_changes_nothing(
    writer: TestClient,
    writable_settings: Settings,
    request_args: dict[str, object],
    status: int,
    detail: str,
) -> None:
    before = _snapshot(writer, writable_settings)
    headers = {**AUTH, **request_args.pop("headers", {})}  # type: ignore[dict-item]
    response = writer.post("/v1/documents", headers=headers, **request_args)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    assert detail in str(response.json()["detail"])
    assert _snapshot(writer, writable_settings) == before


def test_put_with_a_different_body_id_is_refused(writer: TestClient) -> None:
    response = writer.put("/v1/documents/one", json={"id": "two", "text": "x."}, headers=AUTH)
    assert response.status_code == 422 and "differs" in response.json()["detail"]


def test_read_keys_close_reads(writable_settings: Settings, encoder: Encoder) -> None:
    closed = writable_settings.model_copy(update={"read_api_keys": ["reader-key"]})
    service = QAService.from_settings(closed, encoder=encoder)
    with TestClient(create_app(closed, service)) as reader:
        assert reader.get("/v1/documents").status_code == 401
        assert reader.post("/v1/ask", json={"question": "What is GRETA?"}).status_code == 401
        for key in ("reader-key", KEYS[0]):  # a write key reads too
            headers = {"Authorization": f"Bearer {key}"}
            assert reader.get("/v1/documents", headers=headers).status_code == 200
            response = reader.post("/v1/ask", json={"question": "What is GRETA?"},
                                   headers=headers)  # fmt: skip
            assert response.status_code == 200
        assert reader.get("/healthz").status_code == 200
        assert reader.get("/").status_code == 200  # the chat page itself is served
