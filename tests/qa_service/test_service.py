"""The service on the default corpus with the real model: citations and abstention."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from embeddings import E5_MODEL, Encoder, load_encoder
from qa_service.api import create_app
from qa_service.config import Settings
from qa_service.errors import IndexReplacedError
from qa_service.index.build import build_index
from qa_service.index.store import load_index
from qa_service.index.writes import NewDocument
from qa_service.query.pipeline import AskOptions
from qa_service.service import FairLock, QAService, index_spec


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).casefold()


def _contains_answer(text: str, answers: list[str]) -> bool:
    return any(_norm(a) in _norm(text) for a in answers)


def test_every_passage_cites_its_exact_span(service: QAService) -> None:
    for timed in service.ask_many(
        ["What is GRETA?", "Where was the training held?"], AskOptions(top_k=10)
    ):
        for ranked in timed.answer.passages:
            p = ranked.hit.passage
            assert service.document(p.document_id).text[p.start : p.end] == p.text
            assert ranked.highlight is not None
            assert 0 <= ranked.highlight.start < ranked.highlight.end <= len(p.text)


def test_dev_questions_find_their_answer_in_the_cited_document(
    service: QAService, dev_questions: list[dict[str, Any]]
) -> None:
    answerable = [q for q in dev_questions if not q.get("unanswerable")]
    misses = []
    for q in answerable:
        answer = service.ask(q["question"]).answer
        assert answer.answerable, q["id"]
        if not any(
            _contains_answer(r.hit.passage.text, q["answers"])
            and r.hit.passage.document_id in q["documents"]
            for r in answer.passages
        ):
            misses.append(q["id"])
    assert not misses, f"answer not in the top 5 for {misses}"


def test_off_topic_questions_abstain_but_show_nearest_passages(
    service: QAService, dev_questions: list[dict[str, Any]]
) -> None:
    for q in (q for q in dev_questions if q.get("unanswerable")):
        answer = service.ask(q["question"]).answer
        assert not answer.answerable, q["id"]
        assert answer.answer_rank is None and answer.answer_text is None
        assert len(answer.passages) == 5


def test_min_score_overrides_the_threshold(service: QAService) -> None:
    question = "What is GRETA?"
    assert service.ask(question).answer.answerable
    assert not service.ask(question, AskOptions(min_score=0.99)).answer.answerable
    assert service.ask("boiling point of water", AskOptions(min_score=-1.0)).answer.answerable


def test_answer_sentence_is_verbatim_and_answers(service: QAService) -> None:
    answer = service.ask("Who highlighted the importance of multi-agency collaboration?").answer
    assert answer.answer_text is not None and "Verena Taylor" in answer.answer_text
    holder = answer.passages[answer.answer_rank - 1]  # type: ignore[operator]
    assert answer.answer_text in holder.hit.passage.text


def test_concurrent_questions_get_the_answers_they_would_get_alone(
    service: QAService, dev_questions: list[dict[str, Any]]
) -> None:
    questions = [q["question"] for q in dev_questions][:8] * 2
    alone = [service.ask(q).answer for q in questions]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda q: service.ask(q).answer, questions))
    for a, b in zip(alone, together, strict=True):
        assert a.question == b.question and a.answer_text == b.answer_text
        assert [p.hit.passage.id for p in a.passages] == [p.hit.passage.id for p in b.passages]


def test_a_server_keeps_answering_when_its_index_is_replaced_by_another_models(
    tmp_path: Path, encoder: Encoder, caplog: pytest.LogCaptureFixture
) -> None:
    """Another process rebuilt the index folder with another model: the service goes on
    answering from the index it has, says why once (log, /readyz), and refuses writes, which
    would overwrite the other index, until that index is one it can serve again."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "rivers.txt").write_text("Rivers flow to the sea. The Drina is a river.")
    settings = Settings(corpus_dir=corpus, index_dir=tmp_path / "idx")
    service = QAService.from_settings(settings, encoder=encoder)
    served = service.index.generation

    build_index(index_spec(settings, load_encoder(E5_MODEL)))  # as `qa index --model …` would
    with caplog.at_level(logging.ERROR, logger="qa_service.service"):
        assert not service.refresh()
        assert not service.refresh()
    # Once, not at every check.
    assert [r.levelname for r in caplog.records if r.name == "qa_service.service"] == ["ERROR"]
    assert service.index_problem is not None and E5_MODEL in service.index_problem
    assert service.index.generation == served
    assert "Drina" in service.ask("Which river?").answer.passages[0].hit.passage.text
    with pytest.raises(IndexReplacedError, match="cannot serve"):
        service.add_documents([("owls", NewDocument(b"Owls hunt at night.", ".txt"))])
    with TestClient(create_app(settings, service)) as client:
        ready = client.get("/readyz").json()
        assert ready["ready"] and ready["index_problem"] == service.index_problem
        refused = client.post(
            "/v1/documents", json={"id": "owls", "text": "Owls hunt at night."},
            headers={"Authorization": "Bearer k"},
        )  # fmt: skip
        assert refused.status_code in (403, 409)  # no key configured here: 403 comes first

    build_index(index_spec(settings, encoder))  # the index is this model's again
    assert service.refresh()
    assert service.index_problem is None and service.index.generation != served
    service.add_documents([("owls", NewDocument(b"Owls hunt at night.", ".txt"))])
    assert "owls" in service.index.documents


class GatedEncoder:
    """The real encoder, except that encoding a passage holding GATE waits for `open`."""

    GATE = "Gatekeeper"

    def __init__(self, inner: Encoder) -> None:
        self._inner = inner
        self.open = threading.Event()
        self.waiting = threading.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def encode_in_context(self, texts: Sequence[str], *args: Any, **kwargs: Any) -> Any:
        if any(self.GATE in t for t in texts):
            self.waiting.set()
            assert self.open.wait(timeout=60)
        return self._inner.encode_in_context(texts, *args, **kwargs)


def test_a_document_being_encoded_holds_up_no_other_write(tmp_path: Path, encoder: Encoder) -> None:
    """A large upload is encoded before the write lock is taken: a small write made meanwhile
    is done at once, and both end up in the index."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "rivers.txt").write_text("Rivers flow to the sea. The Drina is a river.")
    gated = GatedEncoder(encoder)
    settings = Settings(corpus_dir=corpus, index_dir=tmp_path / "idx")
    service = QAService.from_settings(settings, encoder=gated)  # type: ignore[arg-type]
    large = NewDocument(f"The {GatedEncoder.GATE} opens the gate at dawn.".encode(), ".txt")
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(service.add_documents, [("gate", large)])
        assert gated.waiting.wait(timeout=30)  # the large write is encoding
        small = pool.submit(service.add_documents, [("owls", NewDocument(b"Owls hunt.", ".txt"))])
        (written,) = small.result(timeout=30)  # not held up behind the encoding
        assert written.document.id == "owls" and not slow.done()
        gated.open.set()
        slow.result(timeout=60)
    assert {"rivers", "owls", "gate"} <= set(service.index.documents)
    assert set(load_index(settings.index_dir).documents) == {"rivers", "owls", "gate"}


def test_the_write_lock_is_granted_in_the_order_asked() -> None:
    lock = FairLock()
    assert lock.acquire(timeout=1)
    order: list[int] = []
    started: list[threading.Event] = []

    def wait_turn(n: int) -> None:
        started[n].set()
        assert lock.acquire(timeout=30)
        order.append(n)
        lock.release()

    threads = []
    for n in range(5):
        started.append(threading.Event())
        threads.append(threading.Thread(target=wait_turn, args=(n,)))
        threads[-1].start()
        assert started[n].wait(timeout=10)
        time.sleep(0.05)  # queued before the next one asks
    assert not lock.acquire(timeout=0.1)  # queued behind them, it gives up: the rest go on
    lock.release()
    for thread in threads:
        thread.join(timeout=30)
    assert order == [0, 1, 2, 3, 4]
