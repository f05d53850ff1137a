from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from qa_service.api import create_app
from qa_service.config import Settings
from qa_service.service import QAService


def test_ask_returns_the_contract(client: TestClient) -> None:
    question = "Why are the real numbers of trafficking victims hard to measure?"
    response = client.post("/v1/ask", json={"question": question, "top_k": 3})
    assert response.status_code == 200
    body = response.json()
    assert set(body) >= {"question", "answerable", "answer", "passages", "took_ms"}
    assert body["question"] == question
    assert body["answerable"] is True
    assert len(body["passages"]) == 3
    assert [p["rank"] for p in body["passages"]] == [1, 2, 3]
    scores = [p["score"] for p in body["passages"]]
    assert scores == sorted(scores, reverse=True)
    answer = body["answer"]
    holder = body["passages"][answer["passage_rank"] - 1]
    h = holder["highlight"]
    # The answer's sentence is its passage's highlight, and the answer lies inside it.
    assert holder["text"][h["start"] : h["end"]] == answer["sentence"]["text"]
    assert answer["sentence"]["start"] == holder["start"] + h["start"]
    assert answer["sentence"]["start"] <= answer["start"] < answer["end"]
    assert answer["end"] <= answer["sentence"]["end"]
    assert holder["document_id"] == answer["document_id"] == "001_679cc4caf4b8cd25"
    assert "hidden nature of trafficking" in body["passages"][0]["text"]


def test_without_the_reader_the_sentence_is_the_answer(client: TestClient) -> None:
    body = client.post("/v1/ask", json={"question": "What is GRETA?"}).json()
    answer = body["answer"]
    assert answer["confidence"] is None
    assert answer["text"] == answer["sentence"]["text"]
    sentence = answer["sentence"]
    assert (answer["start"], answer["end"]) == (sentence["start"], sentence["end"])
    assert all(p["reader_score"] is None for p in body["passages"])


def test_with_the_reader_the_answer_is_the_exact_span_of_its_document(
    settings: Settings, read_service: QAService
) -> None:
    question = "How many participants attended the Second Country Workshop?"
    with TestClient(create_app(settings, read_service)) as client:
        body = client.post("/v1/ask", json={"question": question}).json()
        answer = body["answer"]
        document = client.get(f"/v1/documents/{answer['document_id']}").json()["text"]
    assert body["answerable"] is True and "29" in answer["text"]
    assert len(answer["text"]) < len(answer["sentence"]["text"])  # the answer, not its sentence
    assert document[answer["start"] : answer["end"]] == answer["text"]
    sentence = answer["sentence"]
    assert document[sentence["start"] : sentence["end"]] == sentence["text"]
    assert sentence["start"] <= answer["start"] < answer["end"] <= sentence["end"]
    first = body["passages"][0]
    assert answer["passage_rank"] == 1 and first["reader_score"] == answer["confidence"]
    read = [p["reader_score"] for p in body["passages"][:3]]
    assert read == sorted(read, reverse=True)  # the read passages, most likely to answer first
    assert all(p["reader_score"] is None for p in body["passages"][3:])


def test_passage_offsets_index_into_the_document_endpoint(client: TestClient) -> None:
    body = client.post("/v1/ask", json={"question": "Who won in court?", "top_k": 10}).json()
    for passage in body["passages"]:
        document = client.get(f"/v1/documents/{passage['document_id']}").json()
        assert document["text"][passage["start"] : passage["end"]] == passage["text"]
        assert passage["title"] == document["title"]
        assert passage["chunk_id"].startswith(passage["document_id"] + "#")
        assert passage["page"] is None


def test_unanswerable_question_abstains_with_nearest_passages(client: TestClient) -> None:
    body = client.post("/v1/ask", json={"question": "Who won the Nobel Prize in Physics in 1921?"})
    assert body.status_code == 200
    data = body.json()
    assert data["answerable"] is False and data["answer"] is None
    assert len(data["passages"]) == 5


def test_top_k_defaults_to_settings(client: TestClient) -> None:
    body = client.post("/v1/ask", json={"question": "What is GRETA?"}).json()
    assert len(body["passages"]) == 5


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"question": ""}, "question"),
        ({"question": "   \n\t"}, "question"),
        ({"question": "x" * 2001}, "question"),
        ({"question": "ok?", "top_k": 0}, "top_k"),
        ({"question": "ok?", "top_k": 51}, "top_k"),
        ({"question": "ok?", "top_k": "five"}, "top_k"),
        ({"top_k": 3}, "question"),
        ({"question": 42}, "question"),
        ({"question": "ok?", "unknown": 1}, "unknown"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(
    client: TestClient, payload: dict[str, object], field: str
) -> None:
    response = client.post("/v1/ask", json=payload)
    assert response.status_code == 422
    locations = [error["loc"] for error in response.json()["detail"]]
    assert any(field in loc for loc in locations), locations


@pytest.mark.parametrize("body", [b"{not json", b"", b"[1, 2]", b"null"])
def test_malformed_json_is_a_422(client: TestClient, body: bytes) -> None:
    response = client.post("/v1/ask", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert "detail" in response.json()


def test_question_at_the_length_limit_is_accepted(client: TestClient) -> None:
    response = client.post("/v1/ask", json={"question": "trafficking " * 166 + "why?"})
    assert response.status_code == 200


def test_batch_answers_in_order(client: TestClient) -> None:
    questions = ["What is GRETA?", "Who won the Nobel Prize in Physics in 1921?", "When did the "
                 "Annual Regional Meeting of the Task Forces take place?"]  # fmt: skip
    response = client.post("/v1/ask/batch", json={"questions": questions, "top_k": 2})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["question"] for r in results] == questions
    assert [r["answerable"] for r in results] == [True, False, True]
    assert all(len(r["passages"]) == 2 for r in results)
    single = client.post("/v1/ask", json={"question": questions[2], "top_k": 2}).json()
    assert [p["chunk_id"] for p in single["passages"]] == [
        p["chunk_id"] for p in results[2]["passages"]
    ]


@pytest.mark.parametrize(
    "payload",
    [
        {"questions": []},
        {"questions": ["ok?"] * 257},
        {"questions": ["fine", "  "]},
        {"questions": "not a list"},
        {"questions": ["ok?"], "top_k": 0},
    ],
)
def test_batch_limits(client: TestClient, payload: dict[str, object]) -> None:
    response = client.post("/v1/ask/batch", json=payload)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][:2] in (["body", "questions"], ["body", "top_k"])


def test_a_question_that_cannot_get_the_model_in_time_gets_503(
    settings: Settings, service: QAService
) -> None:
    impatient = QAService(service.encoder, service.index, None, 5, max_wait=0.05)
    with TestClient(create_app(settings, impatient)) as test_client:
        batcher = impatient.queries
        batcher._leading = True  # another caller is encoding a batch, for too long
        try:
            response = test_client.post("/v1/ask", json={"question": "What is GRETA?"})
        finally:
            batcher._leading = False
        assert response.status_code == 503
        assert response.headers["retry-after"]
        assert "the model is busy" in response.json()["detail"]
        assert test_client.post("/v1/ask", json={"question": "What is GRETA?"}).status_code == 200
