"""Retrieval over an index split into shards, ranking as one index over all their passages would
(issue 28; docs/scaling.md).

`retrieval.Retriever.retrieve`, cut where its work stops being per passage:

- per shard: the top `depth` passages by cosine for each of a query's vectors, the top `depth`
  by BM25 under the global statistics (`index/shard_lexical.py`), and each candidate's dense
  score (`Retriever.dense_scores`: its own cosine, its reading in context, its best sentence);
- global: `depth` from the total passage count, the merge of the shards' lists into the global
  top `depth` of each, their union, the fusion (`retrieval.fused_scores`), the ordering, and the
  merging of overlapping windows (`retrieval.merge_overlaps`), which must see the global order.

Cosines are comparable across shards, and BM25 scores are equal bit for bit to a single index's,
so the hits are the single index's: the same passages, scores and order (ties aside). Shards here
are in-process indexes; on Ray each becomes a deployment answering the per-shard steps.
"""

from __future__ import annotations

import heapq
import itertools
from collections import ChainMap
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from qa_service.index.lexical import Analyzer
from qa_service.index.shard_lexical import ShardedLexical, TermCounts
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


@dataclass(frozen=True)
class _Shard:
    index: IndexData
    retriever: Retriever  # its per-passage scoring and filters
    offset: int  # of its passages in the shards' order (`Hit.row`)


class ShardedRetriever:
    def __init__(
        self,
        shards: Sequence[IndexData],
        terms: Sequence[TermCounts],
        dense_weight: float = DENSE_WEIGHT,
    ) -> None:
        """`terms`: each shard's term counts, of the same passages in the same order."""
        if not shards or len(terms) != len(shards):
            raise ValueError("one term count per shard, and at least one shard")
        first = shards[0].manifest
        for n, (index, counts) in enumerate(zip(shards, terms, strict=True)):
            manifest = index.manifest
            built = (manifest.model, manifest.dimension, manifest.passage_settings)
            if built != (first.model, first.dimension, first.passage_settings):
                raise ValueError(f"shard {n} was built with another model or passage settings")
            if counts.size != len(index.passages):
                raise ValueError(f"shard {n}: term counts of {counts.size} passages, not "
                                 f"{len(index.passages)}")  # fmt: skip
        offsets = np.cumsum([0, *(len(s.passages) for s in shards)])
        self._shards = [
            _Shard(index, Retriever(index, dense_weight), int(offset))
            for index, offset in zip(shards, offsets, strict=False)
        ]
        self.lexical = ShardedLexical(terms)
        self.dense_weight = dense_weight
        self.profile = profile_for(first.model)
        self.passages = int(offsets[-1])
        self.documents = ChainMap(*(s.documents for s in shards))
        self.units = ChainMap(*(s.units for s in shards))
        self._analyzer = Analyzer()

    def lexical_coverage(self, question: str) -> float:
        """`Retriever.lexical_coverage`, a term counting as indexed if any shard holds it."""
        return lexical_coverage(question, self._analyzer, lambda q: len(self.lexical.plan(q).terms))

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
        allowed = [s.retriever.allowed_ids(filters) for s in self._shards]
        depth = search_depth(k, self.passages)
        if depth == 0 or all(a is not None and len(a) == 0 for a in allowed):
            return [[] for _ in queries]
        dense = self._dense_candidates(queries, depth, allowed) if mode != "lexical" else None
        results = []
        for row, query in enumerate(queries):
            candidates: dict[Key, None] = dict.fromkeys(dense[row] if dense else [])
            lexical = None
            if mode != "dense":
                searched = query.translation.query if query.translation else query.text
                lexical = self._lexical_scores(searched, allowed)
                candidates.update(dict.fromkeys(_top(lexical, depth, self._shards)))
            coverage = query.coverage if mode == "hybrid" else 1.0
            weight = query.translation.coverage if query.translation else coverage
            hits = self._rank(list(candidates), query, lexical, mode, k, weight,
                              coverage < LEXICAL_SUPPORT_COVERAGE)  # fmt: skip
            results.append(hits)
        return results

    def _dense_candidates(
        self,
        queries: Sequence[SearchQuery],
        depth: int,
        allowed: list[npt.NDArray[np.int64] | None],
    ) -> list[list[Key]]:
        """Per query, for each of its vectors in turn, the global top `depth` by cosine: the
        merge of every shard's own top `depth`."""
        matrix = np.vstack([q.vectors for q in queries])
        found: list[tuple[int, npt.NDArray[np.float32], npt.NDArray[np.int64]]] = []
        for n, shard in enumerate(self._shards):
            if allowed[n] is None or len(allowed[n]):  # type: ignore[arg-type]
                top = min(depth, len(shard.index.passages))
                found.append((n, *shard.index.vectors.search(matrix, top, allowed[n])))
        bounds = np.cumsum([0, *(len(q.vectors) for q in queries)])
        result = []
        for row in range(len(queries)):
            keys: list[Key] = []
            for vector in range(bounds[row], bounds[row + 1]):
                ranked = (
                    [(-float(c), n, int(i)) for c, i in zip(cos[vector], ids[vector], strict=True)
                     if i >= 0]
                    for n, cos, ids in found
                )  # fmt: skip
                keys.extend((n, i) for _, n, i in itertools.islice(heapq.merge(*ranked), depth))
            result.append(keys)
        return result

    def _lexical_scores(
        self, searched: str, allowed: list[npt.NDArray[np.int64] | None]
    ) -> list[npt.NDArray[np.float32]]:
        scores = self.lexical.shard_scores(searched)
        for n, permitted in enumerate(allowed):
            if permitted is not None:
                mask = np.zeros(len(scores[n]), dtype=bool)
                mask[permitted] = True
                scores[n] = np.where(mask, scores[n], np.float32(-1.0))
        return scores

    def _rank(
        self,
        keys: list[Key],
        query: SearchQuery,
        lexical: list[npt.NDArray[np.float32]] | None,
        mode: Mode,
        k: int,
        coverage: float,
        dense_support: bool,
    ) -> list[Hit]:
        if not keys:
            return []
        dense = self._dense_scores(keys, query) if mode != "lexical" else None
        lex = None
        if lexical is not None:
            lex = np.array([lexical[n][i] for n, i in keys], dtype=np.float32).astype(np.float64)
        weight = (1 - self.dense_weight) * coverage
        scores, support = fused_scores(dense, lex, self.profile.floor, weight, dense_support)
        passages = [self._shards[n].index.passages[i] for n, i in keys]
        hits = (
            Hit(
                passages[j],
                float(scores[j]),
                float(support[j]),
                None if dense is None else float(dense[j]),
                None if lex is None else float(lex[j]),
                self._shards[keys[j][0]].offset + keys[j][1],
            )
            for j in best_first(scores, passages)
        )
        return merge_overlaps(hits, k, self.documents, self.units)

    def _dense_scores(self, keys: list[Key], query: SearchQuery) -> npt.NDArray[np.float64]:
        """Each candidate's dense score, computed by its own shard."""
        out = np.empty(len(keys), dtype=np.float64)
        by_shard: dict[int, list[int]] = {}
        for j, (n, _) in enumerate(keys):
            by_shard.setdefault(n, []).append(j)
        for n, slots in by_shard.items():
            ids = np.asarray([keys[j][1] for j in slots], dtype=np.int64)
            out[slots] = self._shards[n].retriever.dense_scores(ids, query.vectors)
        return out


def _top(scores: list[npt.NDArray[np.float32]], depth: int, shards: list[_Shard]) -> list[Key]:
    """The global top `depth` passages by lexical score, of those that score at all: the merge
    of every shard's own top `depth`, ties in `tie_order` as in one index."""
    best: list[tuple[float, tuple[str, int], int, int]] = []
    for n, shard_scores in enumerate(scores):
        passages = shards[n].index.passages
        for i in best_positions(shard_scores, depth, passages):
            best.append((-float(shard_scores[i]), tie_order(passages[i]), n, i))
    best.sort()
    return [(n, i) for _, _, n, i in best[:depth]]
