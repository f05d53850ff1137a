"""Reading the best candidates: reordered by the reader, the rest left in retrieval order."""

from __future__ import annotations

import pytest

from embeddings.reader import Reader
from qa_service.query.pipeline import AskOptions
from qa_service.query.reading import PassageReader
from qa_service.service import QAService

WORKSHOP = "How many participants attended the Second Country Workshop?"


@pytest.fixture(scope="module")
def reader() -> Reader:
    return Reader()


def test_settings_are_checked(reader: Reader) -> None:
    with pytest.raises(ValueError, match="at least one passage"):
        PassageReader(reader, depth=0)
    with pytest.raises(ValueError, match="probability"):
        PassageReader(reader, threshold=1.5)
    assert PassageReader(reader).threshold == reader.manifest.answerable_threshold


def test_read_passages_come_first_most_likely_first(service: QAService, reader: Reader) -> None:
    hits = service.ask(WORKSHOP, AskOptions(top_k=8)).answer.passages
    found = [p.hit for p in hits]
    (read,) = PassageReader(reader, depth=5).run([WORKSHOP], [found])
    probabilities = [r.probability for r in read.readings[:5] if r is not None]
    assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True)
    assert read.readings[5:] == [None] * 3
    # The unread keep their order, after the read; nothing is lost or repeated.
    assert read.hits[5:] == found[5:]
    assert sorted(h.passage.id for h in read.hits) == sorted(h.passage.id for h in found)
    first = read.readings[0]
    assert first is not None
    assert "29" in read.hits[0].passage.text[first.start : first.end]


def test_only_questions_bm25_reads_are_read() -> None:
    assert PassageReader.reads(1.0)
    assert not PassageReader.reads(0.2)  # another language than the documents'
