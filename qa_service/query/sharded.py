"""Retrieval over an index split into shards, ranking as one index over all their passages would
(issue 28; docs/scaling.md).

`retrieval.Retriever.retrieve`, cut where its work stops being per passage:

- a shard (`ShardSearcher`) finds its top `depth` passages by cosine for each of a query's
  vectors and its top `depth` by BM25 under the global statistics (`index/shard_lexical.py`),
  and scores them all: each one's dense score (`Retriever.dense_scores`: its own cosine, its
  reading in context, its best sentence) and BM25, sent with them in the same call;
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
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from embeddings import Vectors
from qa_service.corpus.acronyms import Definition
from qa_service.corpus.chunking import Passage, Span
from qa_service.corpus.documents import Document, DocumentHead
from qa_service.index.lexical import Analyzer
from qa_service.index.shard_lexical import (
    QueryPlan,
    TermCounts,
    TermStatistics,
    plan_query,
    unknown_weight,
)
from qa_service.index.store import IndexData, Manifest
from qa_service.models import Mode, profile_for
from qa_service.query.answering import (
    AnswerBuilder,
    Asked,
    BaseAnswerBuilder,
    Sentence,
    sentence_around,
)
from qa_service.query.lexicon import word_counts
from qa_service.query.recent import Recent
from qa_service.query.retrieval import (
    DENSE_WEIGHT,
    DIVERSITY_POOL,
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
    most_relevant_and_diverse,
    search_depth,
    tie_order,
)

T = TypeVar("T")
V = TypeVar("V")
Key = tuple[int, int]  # (shard, passage position in it)
# Terms whose BM25 bound on every shard the coordinator keeps, and documents whose titles and
# sources: both hold until a write (a write makes a new coordinator), and most questions then
# need no call to the shards for them.
TERMS_KEPT = 100_000
HEADS_KEPT = 100_000


@dataclass(frozen=True)
class Scored:
    """Passages of a shard (`positions` in it) with their dense scores and BM25, each None
    when the mode leaves it out."""

    positions: list[int]
    passages: list[Passage]
    dense: npt.NDArray[np.float64] | None
    lexical: npt.NDArray[np.float64] | None


@dataclass(frozen=True)
class Found:
    """A shard's candidates for one query: for each of its vectors the best (cosine, position)
    pairs, best first; the best (BM25, tie order, position) triples, best first; and all of
    them scored, so that the coordinator has the scores of those that make the global lists
    without asking again."""

    dense: list[list[tuple[float, int]]]
    lexical: list[tuple[float, tuple[str, int], int]]
    scored: Scored


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
        self._answers = AnswerBuilder(index)

    @property
    def passages(self) -> int:
        return len(self.index.passages)

    @property
    def manifest(self) -> Manifest:
        return self.index.manifest

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
        by BM25, all of them scored (`Retriever.dense_scores`: its own cosine, its reading in
        context, its best sentence; and BM25)."""
        allowed = self._retriever.allowed_ids(filters)
        if allowed is not None and not len(allowed):
            return [
                Found([[] for _ in range(b - a)], [], self._score([], vectors, plan, None))
                for (a, b), plan in zip(itertools.pairwise(bounds), plans, strict=True)
            ]
        if vectors is not None:
            cosines, ids = self.index.vectors.search(vectors, min(depth, self.passages), allowed)
        passages = self.index.passages
        found = []
        for (a, b), plan in zip(itertools.pairwise(bounds), plans, strict=True):
            dense = [
                [(float(c), int(i)) for c, i in zip(cosines[v], ids[v], strict=True) if i >= 0]
                for v in range(a, b)
                if vectors is not None
            ]
            lexical = []
            scores = None
            if plan is not None:
                scores = self._lexical(plan, stats, allowed)
                lexical = [(float(scores[i]), tie_order(passages[i]), i)
                           for i in best_positions(scores, depth, passages)]  # fmt: skip
            positions = list(dict.fromkeys([*(i for v in dense for _, i in v),
                                            *(i for _, _, i in lexical)]))  # fmt: skip
            asked = None if vectors is None else vectors[a:b]
            scored = self._score(positions, asked, plan, scores)
            found.append(Found(dense, lexical, scored))
        return found

    def _score(
        self,
        positions: list[int],
        vectors: Vectors | None,
        plan: QueryPlan | None,
        bm25: npt.NDArray[np.float32] | None,
    ) -> Scored:
        """The passages at `positions`, their dense scores for the query's `vectors` and their
        BM25 (of every passage, for its `plan`), each None when the mode leaves it out."""
        rows = np.asarray(positions, dtype=np.int64)
        dense = lexical = None
        if vectors is not None:
            dense = self._retriever.dense_scores(rows, vectors) if positions else np.empty(0)
        if plan is not None:
            lexical = bm25[rows].astype(np.float64) if bm25 is not None else np.empty(0)
        return Scored(positions, [self.index.passages[i] for i in positions], dense, lexical)

    def vectors(self, ids: Sequence[int]) -> Vectors:
        """The vectors of the passages at `ids`: diversity compares the hits with each other."""
        return self.index.vectors.vectors(np.asarray(ids, dtype=np.int64))

    def sentences(
        self, passages: Sequence[Passage], vectors: Vectors, asked: Asked
    ) -> list[Sentence | None]:
        """The best sentence of each of the shard's `passages` for the question
        (`AnswerBuilder`): the sentence vectors stay on their shard."""
        return [self._answers.best_sentence(p, vectors, asked) for p in passages]

    def documents(self, ids: Sequence[str]) -> list[tuple[Document, list[Span]]]:
        """The documents and their sentence units (KeyError for one the shard does not hold)."""
        return [(self.index.documents[i], self.index.units[i]) for i in ids]

    def heads(self, ids: Sequence[str]) -> list[DocumentHead]:
        """What citations name of these documents (KeyError for one the shard does not hold)."""
        documents = self.index.documents
        return [documents[i].head for i in ids]

    def passage_counts(self) -> dict[str, int]:
        """Each document's passage count, in the shard's document order."""
        return self.index.passage_counts()

    def word_counts(self) -> Counter[str]:
        """The shard's part of the lexicon's word counts (`lexicon.word_counts`)."""
        return word_counts(self.index.documents.values())

    def acronyms(self) -> list[list[Definition]]:
        return list(self.index.acronyms.values())

    def _lexical(
        self, plan: QueryPlan, stats: TermStatistics, allowed: npt.NDArray[np.int64] | None
    ) -> npt.NDArray[np.float32]:
        """BM25 of every passage; -1 for those the filters leave out."""
        scores = self.terms.scores(plan, stats)
        if allowed is None:
            return scores
        mask = np.zeros(len(scores), dtype=bool)
        mask[allowed] = True
        return np.where(mask, scores, np.float32(-1.0))


class Shard(Protocol):
    """What the coordinator calls: a `ShardSearcher` in process, or a proxy to one elsewhere
    (`distributed/serving.py`)."""

    @property
    def passages(self) -> int: ...
    @property
    def manifest(self) -> Manifest: ...
    def stats(self) -> TermStatistics: ...
    def highest_weight(self, stats: TermStatistics) -> float | None: ...
    def term_maxima(self, terms: Sequence[str], stats: TermStatistics) -> dict[str, float]: ...
    def find(
        self,
        vectors: Vectors | None,
        bounds: Sequence[int],
        plans: Sequence[QueryPlan | None],
        stats: TermStatistics,
        depth: int,
        filters: Filters | None,
    ) -> list[Found]: ...
    def vectors(self, ids: Sequence[int]) -> Vectors: ...
    def sentences(
        self, passages: Sequence[Passage], vectors: Vectors, asked: Asked
    ) -> list[Sentence | None]: ...
    def documents(self, ids: Sequence[str]) -> list[tuple[Document, list[Span]]]: ...
    def heads(self, ids: Sequence[str]) -> list[DocumentHead]: ...
    def passage_counts(self) -> dict[str, int]: ...
    def word_counts(self) -> Counter[str]: ...
    def acronyms(self) -> list[list[Definition]]: ...


class ShardedRetriever:
    """The coordinator: `Retriever`'s interface over the shards' searchers."""

    def __init__(self, shards: Sequence[Shard], dense_weight: float = DENSE_WEIGHT) -> None:
        if not shards:
            raise ValueError("at least one shard")
        # Every shard is asked at once: on a cluster the calls wait on the network.
        self._pool = ThreadPoolExecutor(len(shards), thread_name_prefix="shard")
        self._shards = list(shards)
        manifests = self.each(lambda s: s.manifest)
        first = manifests[0]
        for n, manifest in enumerate(manifests):
            built = (manifest.model, manifest.dimension, manifest.passage_settings)
            if built != (first.model, first.dimension, first.passage_settings):
                raise ValueError(f"shard {n} was built with another model or passage settings")
        self._offsets = np.cumsum([0, *self.each(lambda s: s.passages)])
        self.passages = int(self._offsets[-1])
        self.model = first.model
        self.dimension = first.dimension
        self.dense_weight = dense_weight
        self.profile = profile_for(first.model)
        # The global BM25 statistics: to be summed again after every write to a shard.
        self.stats = TermStatistics.combine(self.each(lambda s: s.stats()))
        self._unknown = unknown_weight(self.each(lambda s: s.highest_weight(self.stats)))
        self._analyzer = Analyzer()
        # Per term, its highest BM25 weight on each shard (None: not there).
        self._maxima: Recent[str, tuple[float | None, ...]] = Recent(TERMS_KEPT)
        self.catalogue = ShardCatalogue(self)

    @property
    def shards(self) -> list[Shard]:
        return list(self._shards)

    def each(self, call: Callable[[Shard], T]) -> list[T]:
        """`call` on every shard, all at once; the results in the shards' order."""
        return list(self._pool.map(call, self._shards))

    def each_of(self, call: Callable[[int], T], shards: Iterable[int]) -> list[T]:
        """`call` on each of the shards numbered `shards`, all at once, in their order."""
        return list(self._pool.map(call, shards))

    def owner(self, position: int) -> tuple[int, int]:
        """The shard holding the passage at global `position`, and its position there."""
        n = int(np.searchsorted(self._offsets, position, side="right")) - 1
        return n, position - int(self._offsets[n])

    def owners(self, hits: Sequence[Hit]) -> dict[int, list[int]]:
        """Which of `hits` each shard holds: shard -> their indices in `hits`, in order."""
        slots: dict[int, list[int]] = {}
        for slot, hit in enumerate(hits):
            slots.setdefault(self.owner(hit.row)[0], []).append(slot)
        return slots

    def plan(self, text: str) -> QueryPlan:
        """What every shard needs to score `text` with BM25 (`LexicalIndex.query_ids`); only
        the terms not seen before are asked of the shards."""
        terms = list(dict.fromkeys(self._analyzer.terms(text)))
        known = self._maxima.get(terms)
        new = [t for t in terms if t not in known]
        if new:
            asked = self.each(lambda s: s.term_maxima(new, self.stats))
            found = {t: tuple(shard.get(t) for shard in asked) for t in new}
            self._maxima.put(found.items())
            known.update(found)
        maxima = [
            {t: m for t in terms if (m := known[t][n]) is not None}
            for n in range(len(self._shards))
        ]
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
        pool = k * DIVERSITY_POOL if diversity > 0 else k
        depth = search_depth(pool, self.passages)
        if depth == 0 or not queries:
            return [[] for _ in queries]
        plans: list[QueryPlan | None] = [
            None if mode == "dense" else self.plan(q.translation.query if q.translation else q.text)
            for q in queries
        ]
        vectors = np.vstack([q.vectors for q in queries]) if mode != "lexical" else None
        bounds = np.cumsum([0, *(len(q.vectors) for q in queries)]).tolist()
        found = self.each(lambda s: s.find(vectors, bounds, plans, self.stats, depth, filters))
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
            scored = [f[row].scored for f in found]
            hits = self._rank(list(candidates), scored, mode, pool, weight, dense_support)
            results.append(self._diversify(hits, k, diversity) if diversity > 0 else hits)
        return results

    def _diversify(self, hits: list[Hit], k: int, diversity: float) -> list[Hit]:
        """`Retriever`'s maximal marginal relevance, the hits' vectors fetched from their
        shards."""
        if len(hits) <= 1:
            return hits[:k]
        slots = self.owners(hits)
        vectors = np.empty((len(hits), self.dimension), dtype=np.float32)

        def fetch(n: int) -> Vectors:
            return self._shards[n].vectors([self.owner(hits[slot].row)[1] for slot in slots[n]])

        for n, found in zip(slots, self.each_of(fetch, slots), strict=True):
            vectors[slots[n]] = found
        return most_relevant_and_diverse(hits, vectors, k, diversity)

    def _rank(
        self,
        keys: list[Key],
        scored: Sequence[Scored],
        mode: Mode,
        k: int,
        coverage: float,
        dense_support: bool,
    ) -> list[Hit]:
        """The candidates at `keys`, ranked from the scores their shards sent with them
        (`scored`, one per shard)."""
        if not keys:
            return []
        where = [{i: j for j, i in enumerate(s.positions)} for s in scored]
        at = [where[n][i] for n, i in keys]
        passages = [scored[n].passages[j] for (n, _), j in zip(keys, at, strict=True)]
        dense = None if mode == "lexical" else _gather([s.dense for s in scored], keys, at)
        lex = None if mode == "dense" else _gather([s.lexical for s in scored], keys, at)
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
        return merge_overlaps(hits, k, self.catalogue.documents, self.catalogue.units)


def _gather(
    columns: Sequence[npt.NDArray[np.float64] | None], keys: Sequence[Key], at: Sequence[int]
) -> npt.NDArray[np.float64]:
    """The values of `keys` (shard, position) from their shards' `columns`, `at` their rows."""
    present = [c for c in columns if c is not None]
    if len(present) != len(columns):
        raise ValueError("a shard left out scores its mode needs")
    return np.array([present[n][j] for (n, _), j in zip(keys, at, strict=True)], dtype=np.float64)


class ShardedAnswers(BaseAnswerBuilder):
    """Answers whose sentences are chosen on the shards that hold them."""

    def __init__(self, retriever: ShardedRetriever) -> None:
        self._retriever = retriever

    def highlights(
        self, hits: Sequence[Hit], question_vectors: Vectors, asked: Asked
    ) -> list[Sentence | None]:
        slots = self._retriever.owners(hits)
        shards = self._retriever.shards

        def ask(n: int) -> list[Sentence | None]:
            passages = [hits[slot].passage for slot in slots[n]]
            return shards[n].sentences(passages, question_vectors, asked)

        found: list[Sentence | None] = [None] * len(hits)
        for n, sentences in zip(slots, self._retriever.each_of(ask, slots), strict=True):
            for slot, sentence in zip(slots[n], sentences, strict=True):
                found[slot] = sentence
        return found

    def sentence_around(self, hit: Hit, start: int, end: int) -> Sentence:
        passage = hit.passage
        shard = self._retriever.shards[self._retriever.owner(hit.row)[0]]
        _, units = shard.documents([passage.document_id])[0]
        return sentence_around(passage.start, units[passage.first_unit : passage.last_unit],
                               start, end)  # fmt: skip


class ShardCatalogue:
    """All the shards' documents (`service.Catalogue`), each fetched from its shard when asked
    for: a sharded collection's texts need not fit the coordinator's memory. Which shard holds
    which document, and its passage count, are known up front."""

    def __init__(self, retriever: ShardedRetriever) -> None:
        counts = retriever.each(lambda s: s.passage_counts())
        self._retriever = retriever
        self._counts = {doc: c for shard in counts for doc, c in shard.items()}
        self.owners = {doc: n for n, shard in enumerate(counts) for doc in shard}
        self._heads: Recent[str, DocumentHead] = Recent(HEADS_KEPT)
        self.documents: Mapping[str, Document] = _Fetched(self, lambda found: found[0])
        self.units: Mapping[str, Sequence[Span]] = _Fetched(self, lambda found: found[1])
        self.passages = range(retriever.passages)

    def passage_counts(self) -> dict[str, int]:
        return dict(self._counts)

    def fetch(self, ids: Iterable[str]) -> dict[str, tuple[Document, list[Span]]]:
        """The documents with these ids and their sentence units, one call per shard that holds
        some; ids no shard holds are left out."""
        return self._ask(ids, lambda shard, mine: shard.documents(mine))

    def heads(self, ids: Iterable[str]) -> dict[str, DocumentHead]:
        """`fetch`, of what citations name: a fraction of the whole texts, kept once fetched."""
        wanted = list(dict.fromkeys(ids))
        known = self._heads.get(wanted)
        new = [i for i in wanted if i not in known]
        if new:
            found = self._ask(new, lambda shard, mine: shard.heads(mine))
            self._heads.put(found.items())
            known.update(found)
        return {i: known[i] for i in wanted if i in known}

    def _ask(self, ids: Iterable[str], call: Callable[[Shard, list[str]], list[V]]) -> dict[str, V]:
        by_shard: dict[int, list[str]] = {}
        for doc_id in dict.fromkeys(ids):
            if (n := self.owners.get(doc_id)) is not None:
                by_shard.setdefault(n, []).append(doc_id)
        shards = self._retriever.shards
        found = self._retriever.each_of(lambda n: call(shards[n], by_shard[n]), by_shard)
        return {doc_id: item for n, items in zip(by_shard, found, strict=True)
                for doc_id, item in zip(by_shard[n], items, strict=True)}  # fmt: skip


class _Fetched(Mapping[str, V]):
    def __init__(
        self, catalogue: ShardCatalogue, pick: Callable[[tuple[Document, list[Span]]], V]
    ) -> None:
        self._catalogue = catalogue
        self._pick = pick

    def __getitem__(self, document_id: str) -> V:
        return self._pick(self._catalogue.fetch([document_id])[document_id])

    def __contains__(self, document_id: object) -> bool:
        return document_id in self._catalogue.owners

    def __iter__(self) -> Iterator[str]:
        return iter(self._catalogue.owners)

    def __len__(self) -> int:
        return len(self._catalogue.owners)
