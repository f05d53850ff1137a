"""`GET /v1/documents/{id}` gives the document's sentences, and every citation the API makes
(passage spans, merged and trimmed ones included, and answer sentences) is a run of them: what
the document view relies on to tell a real citation from a crafted link."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from qa_service.service import QAService


def test_sentences_are_ordered_spans_of_the_text(client: TestClient) -> None:
    for summary in client.get("/v1/documents").json()["documents"]:
        document = client.get(f"/v1/documents/{summary['id']}").json()
        text, sentences = document["text"], document["sentences"]
        assert sentences, summary["id"]
        previous_end = 0
        for start, end in sentences:
            assert previous_end <= start < end <= len(text)
            assert not text[start].isspace() and not text[end - 1].isspace()
            previous_end = end


def test_every_citation_is_a_run_of_whole_sentences(
    client: TestClient, service: QAService, dev_questions: list[dict[str, Any]]
) -> None:
    windows = {p.id: (p.start, p.end) for p in service.index.passages}
    bounds: dict[str, tuple[set[int], set[int]]] = {}
    kinds = {"window": 0, "merged": 0, "trimmed": 0, "answer": 0}
    for question in dev_questions[:12]:
        reply = client.post("/v1/ask", json={"question": question["question"], "top_k": 50}).json()
        for p in reply["passages"]:
            if p["document_id"] not in bounds:
                document = client.get(f"/v1/documents/{p['document_id']}").json()
                sentence_starts, sentence_ends = zip(*document["sentences"], strict=True)
                bounds[p["document_id"]] = set(sentence_starts), set(sentence_ends)
            starts, ends = bounds[p["document_id"]]
            spans = {"merged" if "-" in p["chunk_id"] else "window": (p["start"], p["end"])}
            if "-" not in p["chunk_id"] and windows[p["chunk_id"]] != (p["start"], p["end"]):
                spans = {"trimmed": (p["start"], p["end"])}
            if p["highlight"]:
                spans["answer"] = (p["start"] + p["highlight"]["start"],
                                   p["start"] + p["highlight"]["end"])  # fmt: skip
            for kind, (start, end) in spans.items():
                assert start in starts and end in ends, (kind, p["chunk_id"], start, end)
                kinds[kind] += 1
    # Each kind of citation was met, so each was checked.
    assert all(kinds.values()), kinds
