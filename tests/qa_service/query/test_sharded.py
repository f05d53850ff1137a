"""Retrieval over shards ranks as one index over all their passages: the same passages, scores
and order, in every mode, with filters, on the default corpus and the real model."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from embeddings import Encoder, VectorIndex
from qa_service.index.lexical import Analyzer, LexicalIndex
from qa_service.index.shard_lexical import TermCounts
from qa_service.index.store import IndexData
from qa_service.models import Mode
from qa_service.query.retrieval import Filters, Hit, Retriever, SearchQuery
from qa_service.query.sharded import ShardedRetriever, ShardSearcher
from qa_service.service import QAService

OFF_TOPIC = [
    "What is the boiling point of water at sea level?",
    "Sa banorë ka Sarajeva?",  # another language: BM25 reads little of it
    "GRETA UNODC Eurojust Skopje Budva",  # keywords only
]


def split(data: IndexData, groups: list[list[str]]) -> tuple[list[IndexData], list[TermCounts]]:
    """The index's documents in shards, with the very vectors the index holds, so that only the
    merging is under test (tests/qa_service/distributed: a cluster's shards hold these vectors)."""
    analyzer = Analyzer()
    shards, terms = [], []
    for group in groups:
        rows = [i for d in group for i in data.passage_ids[d]]
        texts = [data.passages[i].text for i in rows]
        assert data.unit_vectors is not None
        unit_vectors = np.concatenate(
            [data.unit_vectors[data.unit_offsets[d] : data.unit_offsets[d] + len(data.units[d])]
             for d in group]
        )  # fmt: skip
        shards.append(IndexData(
            documents={d: data.documents[d] for d in group},
            units={d: data.units[d] for d in group},
            acronyms={d: data.acronyms[d] for d in group},
            passages=[data.passages[i] for i in rows],
            vectors=VectorIndex.build(data.vectors.vectors(np.asarray(rows))),
            lexical=LexicalIndex.build(texts),
            unit_vectors=unit_vectors,
            manifest=replace(data.manifest, documents=len(group), passages=len(rows)),
            context_vectors=None if data.context_vectors is None else data.context_vectors[rows],
        ))  # fmt: skip
        terms.append(TermCounts.from_terms([analyzer.terms(t) for t in texts]))
    return shards, terms


@pytest.fixture(scope="module")
def questions(dev_questions: list[dict[str, Any]]) -> list[str]:
    return [q["question"] for q in dev_questions] + OFF_TOPIC


def _queries(
    retriever: Retriever | ShardedRetriever, questions: list[str], encoder: Encoder
) -> list[SearchQuery]:
    vectors = encoder.encode_queries(questions)
    return [
        SearchQuery(q, vectors[n : n + 1], retriever.lexical_coverage(q))
        for n, q in enumerate(questions)
    ]


def _same(sharded: list[list[Hit]], single: list[list[Hit]]) -> None:
    for mine, theirs in zip(sharded, single, strict=True):
        assert [h.passage for h in mine] == [h.passage for h in theirs]
        for a, b in zip(mine, theirs, strict=True):
            assert a.score == pytest.approx(b.score, abs=1e-6)
            assert a.support == pytest.approx(b.support, abs=1e-6)
            assert (a.lexical_score is None) == (b.lexical_score is None)


@pytest.mark.parametrize("layout", ["2 shards", "3 shards, one of a single document"])
@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_shards_rank_as_one_index(
    service: QAService, encoder: Encoder, questions: list[str], layout: str, mode: Mode
) -> None:
    data = service.index
    ids = sorted(data.documents)
    groups = [ids[:3], ids[3:]] if layout == "2 shards" else [ids[0::2][:2], ids[1::2], ids[4:]]
    assert sorted(d for g in groups for d in g) == ids
    shards, terms = split(data, groups)
    searchers = [ShardSearcher(s, t) for s, t in zip(shards, terms, strict=True)]
    sharded, single = ShardedRetriever(searchers), Retriever(data)
    search = _queries(single, questions, encoder)
    assert [q.coverage for q in _queries(sharded, questions, encoder)] == [
        q.coverage for q in search
    ]
    for k in (1, 5, 12):
        _same(sharded.retrieve(search, k, mode), single.retrieve(search, k, mode))
    # Maximal marginal relevance, the hits' vectors fetched from their shards.
    for diversity in (0.3, 1.0):
        diverse = single.retrieve(search, 5, mode, diversity=diversity)
        _same(sharded.retrieve(search, 5, mode, diversity=diversity), diverse)
    assert diverse != single.retrieve(search, 5, mode)  # it changed something
    some = Filters(document_ids=frozenset(ids[1:4]))
    _same(sharded.retrieve(search, 5, mode, some), single.retrieve(search, 5, mode, some))
    none = Filters(document_ids=frozenset({"no-such-document"}))
    assert sharded.retrieve(search, 5, mode, none) == [[] for _ in search]


def test_shards_that_do_not_belong_together_are_refused(service: QAService) -> None:
    data = service.index
    ids = sorted(data.documents)
    shards, terms = split(data, [ids[:2], ids[2:]])
    other = replace(shards[1], manifest=replace(shards[1].manifest, model="another-model"))
    with pytest.raises(ValueError, match="shard 1 was built with another model"):
        ShardedRetriever([ShardSearcher(shards[0], terms[0]), ShardSearcher(other, terms[1])])
    with pytest.raises(ValueError, match="term counts of 2 passages"):
        ShardSearcher(shards[1], TermCounts.from_terms([["one"], ["passage"]]))
    with pytest.raises(ValueError, match="needs its term counts"):
        ShardSearcher(shards[1])  # not built as a shard
    sharded = ShardedRetriever([ShardSearcher(s, t) for s, t in zip(shards, terms, strict=True)])
    with pytest.raises(ValueError, match="diversity must lie in"):
        sharded.retrieve([], 5, diversity=1.3)


class _Counting:
    """A shard's searcher, counting the calls made to it."""

    def __init__(self, inner: ShardSearcher, calls: Counter[str]) -> None:
        self._inner = inner
        self._calls = calls

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._inner, name)
        if not callable(found):
            return found

        def call(*args: Any) -> Any:
            self._calls[name] += 1
            return found(*args)

        return call


def test_term_bounds_and_titles_are_asked_of_the_shards_once(service: QAService) -> None:
    """Both hold until a write, which makes a new coordinator: a question whose terms were seen
    before needs no call for its BM25 plan, a citation seen before none for its title."""
    data = service.index
    ids = sorted(data.documents)
    shards, terms = split(data, [ids[:3], ids[3:]])
    calls: Counter[str] = Counter()
    sharded = ShardedRetriever(
        [_Counting(ShardSearcher(s, t), calls) for s, t in zip(shards, terms, strict=True)]
    )
    question = "How many children were identified as victims of trafficking?"
    plan = sharded.plan(question)
    assert calls["term_maxima"] == 2 and plan.terms
    assert sharded.plan(question.upper()) == plan and calls["term_maxima"] == 2
    longer = sharded.plan(f"{question} In Skopje?")
    assert calls["term_maxima"] == 4 and len(longer.terms) == len(plan.terms) + 1
    fresh = ShardedRetriever([ShardSearcher(s, t) for s, t in zip(shards, terms, strict=True)])
    assert fresh.plan(f"{question} In Skopje?") == longer  # the same plan, bound to the bit
    heads = sharded.catalogue.heads([ids[0], ids[4], "no-such-document"])
    assert heads == data.heads([ids[0], ids[4]]) and calls["heads"] == 2
    assert sharded.catalogue.heads([ids[4], ids[0]]) == heads and calls["heads"] == 2
