"""Retrieval over an index split into shards, ranking as one index over all their passages would
(issue 28; docs/scaling.md).

`retrieval.Retriever.retrieve`, cut where its work stops being per passage:

- a shard (`ShardSearcher`) finds its top `depth` passages by cosine for each of a query's
  vectors and its top `depth` by BM25 under the global statistics (`index/shard_lexical.py`),
  then scores the candidates the coordinator chose: each one's dense score
  (`Retriever.dense_scores`: its own cosine, its reading in context, its best sentence) and BM25;
- the coordinator (`ShardedRetriever`) sums the statistics, plans each question's BM25, takes
  `depth` from the total passage count, merges the shards' lists into the global top `depth` of
  each, and does the fusion (`retrieval.fused_scores`), the ordering and the merging of
  overlapping windows (`retrieval.merge_overlaps`), which must see the global order.

Cosines are comparable across shards, BM25 scores equal a single index's bit for bit, and ties
are broken by document and position (`retrieval.tie_order`), so the hits are the single
index's: the same passages, scores and order. A searcher is called with plain data only, so
that on Ray each shard can be a deployment answering the same calls; here they are in process.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from embeddings import Vectors
from qa_service.corpus.chunking import Passage, Span
from qa_service.corpus.documents import Document
from qa_service.index.lexical import Analyzer
from qa_service.index.shard_lexical import (
    QueryPlan,
    TermCounts,
    TermStatistics,
    plan_query,
    unknown_weight,
)
from qa_service.index.store import IndexData
from qa_service.models import Mode, profile_for
from qa_service.query.retrieval import (
    DENSE_WEIGHT,
    LEXICAL_SUPPORT_COVERAGE,
    Filters,
    Hit,
    Retriever,
    SearchQuery,
    best_first,
    best_positions,
    check_request,
    fused_scores,
    lexical_coverage,
    merge_overlaps,
    search_depth,
    tie_order,
)

Key = tuple[int, int]  # (shard, passage position in it)
# Plans whose BM25 a shard keeps between `find` and `score`: more than a batch of questions holds.
RECENT_PLANS = 256


@dataclass(frozen=True)
class Found:
    """A shard's candidates for one query: for each of its vectors the best (cosine, position)
    pairs, best first; and the best (BM25, tie order, position) triples, best first."""

    dense: list[list[tuple[float, int]]]
    lexical: list[tuple[float, tuple[str, int], int]]


@dataclass(frozen=True)
class Scored:
    """What a shard says of the candidates asked for, in the order asked."""

    passages: list[Passage]
    dense: npt.NDArray[np.float64] | None
    lexical: npt.NDArray[np.float64] | None


class ShardSearcher:
    """One shard's side of every search: what a deployment of that shard answers."""

    def __init__(
        self, index: IndexData, terms: TermCounts | None = None, dense_weight: float = DENSE_WEIGHT
    ) -> None:
        """`terms`: the shard's term counts (default: those its index keeps)."""
        terms = terms if terms is not None else index.term_counts
        if terms is None:
            raise ValueError("a shard needs its term counts (an index built as a shard keeps them)")
        if terms.size != len(index.passages):
            raise ValueError(f"term counts of {terms.size} passages for {len(index.passages)}")
        self.index = index
        self.terms = terms
        self._retriever = Retriever(index, dense_weight)
        # BM25 of every passage for the plans `find` scored, which `score` then reads: recent
        # ones only (a batch's), by plan and statistics.
        self._recent: dict[tuple[QueryPlan, int], npt.NDArray[np.float32]] = {}
        self._recent_lock = threading.Lock()

    @property
    def passages(self) -> int:
        return len(self.index.passages)

    def stats(self) -> TermStatistics:
        return self.terms.stats()

    def highest_weight(self, stats: TermStatistics) -> float | None:
        return self.terms.highest_weight(stats)

    def term_maxima(self, terms: Sequence[str], stats: TermStatistics) -> dict[str, float]:
        return self.terms.term_maxima(terms, stats)

    def find(
        self,
        vectors: Vectors | None,
        bounds: Sequence[int],
        plans: Sequence[QueryPlan | None],
        stats: TermStatistics,
        depth: int,
        filters: Filters | None,
    ) -> list[Found]:
        """Per query (its vectors the rows `bounds[q]:bounds[q + 1]` of `vectors`, None in
        lexical mode; its BM25 plan, None in dense mode) this shard's top `depth` by cosine and
        by BM25."""
        allowed = self._retriever.allowed_ids(filters)
        if allowed is not None and not len(allowed):
            return [Found([[] for _ in range(b - a)], []) for a, b in itertools.pairwise(bounds)]
        if vectors is not None:
            cosines, ids = self.index.vectors.search(vectors, min(depth, self.passages), allowed)
        found = []
        for (a, b), plan in zip(itertools.pairwise(bounds), plans, strict=True):
            dense = [
                [(float(c), int(i)) for c, i in zip(cosines[v], ids[v], strict=True) if i >= 0]
                for v in range(a, b)
                if vectors is not None
            ]
            lexical = []
            if plan is not None:
                scores = self._lexical(plan, stats, allowed)
                passages = self.index.passages
                lexical = [(float(scores[i]), tie_order(passages[i]), i)
                           for i in best_positions(scores, depth, passages)]  # fmt: skip
            found.append(Found(dense, lexical))
        return found

    def score(
        self,
        ids: Sequence[int],
        vectors: Vectors | None,
        plan: QueryPlan | None,
        stats: TermStatistics,
    ) -> Scored:
        """The passages at `ids`, their dense scores for the query's `vectors` and BM25 for its
        `plan` (each None when its mode leaves it out)."""
        rows = np.asarray(ids, dtype=np.int64)
        dense = None if vectors is None else self._retriever.dense_scores(rows, vectors)
        lexical = None
        if plan is not None:
            lexical = self._bm25(plan, stats)[rows].astype(np.float64)
        return Scored([self.index.passages[i] for i in ids], dense, lexical)

    def document(self, document_id: str) -> tuple[Document, list[Span]]:
        return self.index.documents[document_id], self.index.units[document_id]

    def _bm25(self, plan: QueryPlan, stats: TermStatistics) -> npt.NDArray[np.float32]:
        key = (plan, id(stats))
        with self._recent_lock:
            scores = self._recent.get(key)
        if scores is None:
            scores = self.terms.scores(plan, stats)
            with self._recent_lock:
                while len(self._recent) >= RECENT_PLANS:
                    del self._recent[next(iter(self._recent))]
                self._recent[key] = scores
        return scores

    def _lexical(
        self, plan: QueryPlan, stats: TermStatistics, allowed: npt.NDArray[np.int64] | None
    ) -> npt.NDArray[np.float32]:
        scores = self._bm25(plan, stats)
        if allowed is None:
            return scores
        mask = np.zeros(len(scores), dtype=bool)
        mask[allowed] = True
        return np.where(mask, scores, np.float32(-1.0))


class ShardedRetriever:
    """The coordinator: `Retriever`'s interface over the shards' searchers."""

    def __init__(self, shards: Sequence[ShardSearcher], dense_weight: float = DENSE_WEIGHT) -> None:
        if not shards:
            raise ValueError("at least one shard")
        first = shards[0].index.manifest
        for n, shard in enumerate(shards):
            manifest = shard.index.manifest
            built = (manifest.model, manifest.dimension, manifest.passage_settings)
            if built != (first.model, first.dimension, first.passage_settings):
                raise ValueError(f"shard {n} was built with another model or passage settings")
        self._shards = list(shards)
        self._offsets = np.cumsum([0, *(s.passages for s in shards)])
        self.passages = int(self._offsets[-1])
        self.dense_weight = dense_weight
        self.profile = profile_for(first.model)
        # The global BM25 statistics: to be summed again after every write to a shard.
        self.stats = TermStatistics.combine(s.stats() for s in shards)
        self._unknown = unknown_weight(s.highest_weight(self.stats) for s in shards)
        self._analyzer = Analyzer()

    def plan(self, text: str) -> QueryPlan:
        """What every shard needs to score `text` with BM25 (`LexicalIndex.query_ids`)."""
        terms = list(dict.fromkeys(self._analyzer.terms(text)))
        maxima = [s.term_maxima(terms, self.stats) for s in self._shards]
        return plan_query(terms, maxima, self._unknown)

    def lexical_coverage(self, question: str) -> float:
        """`Retriever.lexical_coverage`, a term counting as indexed if any shard holds it."""
        return lexical_coverage(question, self._analyzer, lambda q: len(self.plan(q).terms))

    def retrieve(
        self,
        queries: Sequence[SearchQuery],
        k: int,
        mode: Mode = "hybrid",
        filters: Filters | None = None,
        diversity: float = 0.0,
    ) -> list[list[Hit]]:
        """`Retriever.retrieve` over all the shards' passages."""
        check_request(k, mode, diversity)
        if diversity:
            raise ValueError("diversity across shards is not supported yet")
        depth = search_depth(k, self.passages)
        if depth == 0 or not queries:
            return [[] for _ in queries]
        plans: list[QueryPlan | None] = [
            None if mode == "dense" else self.plan(q.translation.query if q.translation else q.text)
            for q in queries
        ]
        vectors = np.vstack([q.vectors for q in queries]) if mode != "lexical" else None
        bounds = np.cumsum([0, *(len(q.vectors) for q in queries)]).tolist()
        found = [s.find(vectors, bounds, plans, self.stats, depth, filters) for s in self._shards]
        results = []
        for row, (query, plan) in enumerate(zip(queries, plans, strict=True)):
            candidates: dict[Key, None] = {}
            if mode != "lexical":
                for v in range(len(query.vectors)):
                    ranked = ([(-c, n, i) for c, i in f[row].dense[v]] for n, f in enumerate(found))
                    top = itertools.islice(heapq.merge(*ranked), depth)
                    candidates.update(dict.fromkeys((n, i) for _, n, i in top))
            if plan is not None:
                lexical = sorted((-s, tie, n, i) for n, f in enumerate(found)
                                 for s, tie, i in f[row].lexical)  # fmt: skip
                candidates.update(dict.fromkeys((n, i) for _, _, n, i in lexical[:depth]))
            coverage = query.coverage if mode == "hybrid" else 1.0
            weight = query.translation.coverage if query.translation else coverage
            dense_support = coverage < LEXICAL_SUPPORT_COVERAGE
            results.append(self._rank(list(candidates), query, plan, mode, k, weight,
                                      dense_support))  # fmt: skip
        return results

    def _rank(
        self,
        keys: list[Key],
        query: SearchQuery,
        plan: QueryPlan | None,
        mode: Mode,
        k: int,
        coverage: float,
        dense_support: bool,
    ) -> list[Hit]:
        if not keys:
            return []
        found: dict[int, Passage] = {}
        dense = np.empty(len(keys)) if mode != "lexical" else None
        lex = np.empty(len(keys)) if plan is not None else None
        by_shard: dict[int, list[int]] = {}
        for j, (n, _) in enumerate(keys):
            by_shard.setdefault(n, []).append(j)
        vectors = query.vectors if dense is not None else None
        owners: dict[str, int] = {}
        for n, slots in by_shard.items():
            scored = self._shards[n].score([keys[j][1] for j in slots], vectors, plan, self.stats)
            for slot, passage in zip(slots, scored.passages, strict=True):
                found[slot] = passage
                owners[passage.document_id] = n
            if dense is not None and scored.dense is not None:
                dense[slots] = scored.dense
            if lex is not None and scored.lexical is not None:
                lex[slots] = scored.lexical
        passages = [found[j] for j in range(len(keys))]
        weight = (1 - self.dense_weight) * coverage
        scores, support = fused_scores(dense, lex, self.profile.floor, weight, dense_support)
        hits = (
            Hit(
                passages[j],
                float(scores[j]),
                float(support[j]),
                None if dense is None else float(dense[j]),
                None if lex is None else float(lex[j]),
                int(self._offsets[keys[j][0]]) + keys[j][1],
            )
            for j in best_first(scores, passages)
        )
        documents = _Documents(self._shards, owners)
        return merge_overlaps(hits, k, documents, documents.units)


class _Documents(Mapping[str, Document]):
    """Documents (and their sentence units) fetched from their shard when merging windows asks
    for one: rare, and a document can be long, so never sent unasked."""

    def __init__(self, shards: Sequence[ShardSearcher], owners: dict[str, int]) -> None:
        self._shards = shards
        self._owners = owners
        self._fetched: dict[str, tuple[Document, list[Span]]] = {}
        self.units = _Units(self)

    def fetch(self, document_id: str) -> tuple[Document, list[Span]]:
        if document_id not in self._fetched:
            shard = self._shards[self._owners[document_id]]
            self._fetched[document_id] = shard.document(document_id)
        return self._fetched[document_id]

    def __getitem__(self, document_id: str) -> Document:
        return self.fetch(document_id)[0]

    def __iter__(self) -> Iterator[str]:
        return iter(self._owners)

    def __len__(self) -> int:
        return len(self._owners)


class _Units(Mapping[str, Sequence[Span]]):
    def __init__(self, documents: _Documents) -> None:
        self._documents = documents

    def __getitem__(self, document_id: str) -> Sequence[Span]:
        return self._documents.fetch(document_id)[1]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._documents)

    def __len__(self) -> int:
        return len(self._documents)
