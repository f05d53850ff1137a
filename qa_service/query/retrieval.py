"""Questions to ranked candidate passages: dense, lexical, or both fused.

Hybrid scores are `(1 - w) * dense + w * lexical`, both on absolute scales, computed exactly for
every candidate either retriever found. Absolute scores keep one abstention threshold meaningful
across questions, which rank-based fusion (RRF) would not. The lexical weight `w` is
`(1 - DENSE_WEIGHT) * coverage`, where coverage is the share of the question's words that the
English analyser recognises: stop words, and terms that occur in the index. BM25 can only judge
words it can read, so a question in another language than the documents' (hardly any of its
words are English stop words or indexed terms) is ranked by the embedding model alone, while an
English question keeps the hybrid gain, and an English question about something the documents
never mention (stop words, unknown terms) keeps its low lexical score as evidence.

The dense score of a passage is the cosine similarity of the question with the passage or with
its best sentence, whichever is higher (where sentence vectors exist, and for models where that
was measured to help: its profile in `models.py`): a passage is as relevant as the sentence that
answers. Where the index holds each passage read after the passage before it (for models that
gain from it, `models.py`), the passage's cosine is mixed with that reading's,
with the weight its manifest records, so that a passage which does not name its subject is
still found when the passage before it does.

For fusion, a model's cosine is rescaled from the level unrelated texts reach (its `floor`) to 1,
so that 0 means unrelated for both scores. The lexical score is BM25 as a share of the best
attainable (see `index/lexical.py`).

A question BM25 reads less than half of (one in another language, or English keywords mostly
absent from the documents) may come with a `Translation` (lexicon.py): the corpus words nearest to
its words, which BM25 searches instead, at the weight the translation sets.

Each hit also carries its `support`, the score abstention compares with the threshold: the score
itself, except in hybrid mode for a question BM25 reads less than half of. There the few words it
reads, or their translations, still order the candidates, but whether to answer is judged as
dense mode would judge it, on the best rescaled dense score among the candidates (every hit of
the question carries it): a stray or mistranslated word must not make an off-topic question look
answerable, nor a weak match an answerable one look off-topic.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from embeddings import Vectors
from qa_service.corpus.chunking import Passage, Span
from qa_service.corpus.documents import Document
from qa_service.corpus.words import STOPWORDS, WORD
from qa_service.index.lexical import Analyzer
from qa_service.index.store import IndexData
from qa_service.models import MODES, Mode, profile_for
from qa_service.query.lexicon import Translation

# Measured on SciFact train and the seed question sets (docs/evaluation.md).
DENSE_WEIGHT = 0.5


# Below this lexical coverage, lexical fusion orders the candidates but abstention is judged on
# the best dense score (measured on the seed sets in four languages, docs/evaluation.md).
LEXICAL_SUPPORT_COVERAGE = 0.5
# Candidates each retriever contributes per passage asked for: room for overlap removal.
CANDIDATE_FACTOR = 4
MIN_CANDIDATES = 40
# Overlapping windows merge into one passage of at most this many windows (measured: 4 keeps an
# answer one window after the sentence naming its subject; the median top passage stays ~700
# characters, docs/evaluation.md).
MAX_MERGED_WINDOWS = 4
# With diversity, the `k` results are chosen among this many times `k` of the best.
DIVERSITY_POOL = 3


@dataclass(frozen=True)
class SearchQuery:
    """What is searched for one question: its text, the vectors of its spellings
    (transliteration.py), the share of its words BM25 reads (`Retriever.lexical_coverage`; 1.0
    outside hybrid mode) and, for one BM25 barely reads, its translation (lexicon.py)."""

    text: str
    vectors: Vectors
    coverage: float
    translation: Translation | None = None


@dataclass(frozen=True)
class Hit:
    passage: Passage
    score: float  # the mode's score: cosine, lexical share, or their weighted sum
    support: float  # what abstention judges (of the first hit): the score, or see above
    dense_score: float | None = None
    lexical_score: float | None = None
    row: int = -1  # the passage's window in the index (the best one, for a merged passage)


@dataclass(frozen=True)
class Filters:
    """Restricts the search to some documents before ranking."""

    document_ids: frozenset[str] | None = None
    metadata: tuple[tuple[str, Any], ...] = ()  # field == value, all must hold
    date_from: str | None = None  # ISO dates, compared with the document's `date` metadata
    date_to: str | None = None

    def allows(self, document: Document) -> bool:
        if self.document_ids is not None and document.id not in self.document_ids:
            return False
        if any(document.metadata.get(k) != v for k, v in self.metadata):
            return False
        if self.date_from is not None or self.date_to is not None:
            date = document.metadata.get("date")
            if not isinstance(date, str):
                return False
            if self.date_from is not None and date < self.date_from:
                return False
            if self.date_to is not None and date > self.date_to:
                return False
        return True


def _overlaps(a: Passage, b: Passage) -> bool:
    return a.document_id == b.document_id and a.start < b.end and b.start < a.end


def merge_passages(passages: Sequence[Passage]) -> Passage:
    """One passage spanning overlapping windows of a document, so that text shared by
    neighbouring windows is returned once and nothing any of them held is lost.

    Their texts are the document's between their offsets and together cover the whole span,
    so the merged text is pieced from them: the document itself is not needed (on shards it
    lives elsewhere)."""
    first = min(passages, key=lambda p: p.ordinal)
    last_ordinal = max(p.ordinal + p.windows - 1 for p in passages)
    ordered = sorted(passages, key=lambda p: (p.start, -p.end))
    start, end = ordered[0].start, max(p.end for p in passages)
    pieces, reached = [ordered[0].text], ordered[0].end
    for passage in ordered[1:]:
        if passage.start > reached:
            raise ValueError("the windows to merge leave a gap")
        if passage.end > reached:
            pieces.append(passage.text[reached - passage.start :])
            reached = passage.end
    return Passage(
        id=f"{first.document_id}#{first.ordinal}-{last_ordinal}",
        document_id=first.document_id,
        ordinal=first.ordinal,
        start=start,
        end=end,
        text="".join(pieces),
        first_unit=min(p.first_unit for p in passages),
        last_unit=max(p.last_unit for p in passages),
        page=ordered[0].page,
        windows=last_ordinal - first.ordinal + 1,
    )


def trim_passage(
    passage: Passage, covered: Sequence[Passage], document: Document, units: Sequence[Span]
) -> Passage | None:
    """The passage without the sentences `covered` already returns, if what is left is one
    contiguous, non-empty run of sentences."""
    left = [
        u
        for u in range(passage.first_unit, passage.last_unit)
        if not any(c.first_unit <= u < c.last_unit for c in covered)
    ]
    if not left or left[-1] - left[0] + 1 != len(left):
        return None
    start, end = units[left[0]][0], units[left[-1]][1]
    return replace(
        passage,
        start=start,
        end=end,
        text=document.text[start:end],
        first_unit=left[0],
        last_unit=left[-1] + 1,
        page=document.page_at(start),
    )


class Retriever:
    def __init__(self, index: IndexData, dense_weight: float = DENSE_WEIGHT) -> None:
        if not 0.0 <= dense_weight <= 1.0:
            raise ValueError("dense_weight must lie in [0, 1]")
        self._index = index
        self.dense_weight = dense_weight
        self.profile = profile_for(index.manifest.model)
        self.context_weight = float(index.manifest.passage_settings.get("preceding_context", 0))
        self._analyzer = Analyzer()

    def lexical_coverage(self, question: str) -> float:
        """Share of the question's distinct words BM25 can read (module function)."""
        return lexical_coverage(
            question, self._analyzer, lambda q: len(self._index.lexical.query_ids(q)[0])
        )

    def allowed_ids(self, filters: Filters | None) -> npt.NDArray[np.int64] | None:
        if filters is None:
            return None
        documents = self._index.documents
        # Named documents need no pass over all of them.
        named = documents.keys() if filters.document_ids is None else filters.document_ids
        passage_ids = self._index.passage_ids
        ids = itertools.chain.from_iterable(
            passage_ids[d] for d in named if d in documents and filters.allows(documents[d])
        )
        return np.sort(np.fromiter(ids, dtype=np.int64))

    def retrieve(
        self,
        queries: Sequence[SearchQuery],
        k: int,
        mode: Mode = "hybrid",
        filters: Filters | None = None,
        diversity: float = 0.0,
    ) -> list[list[Hit]]:
        """The `k` best passages for each query, best first; overlapping windows of the same
        text are merged into one passage, ranked where the better of them ranked.

        A passage's dense score is its best cosine with any of the query's vectors. A query's
        translation, if given, is what BM25 searches for it.

        With `diversity` d > 0 the results are picked by maximal marginal relevance: each next
        one maximises (1 - d) × score - d × (its highest cosine with a passage already picked),
        so near-duplicates (the same text in two reports, or neighbouring passages saying the
        same) give way to other evidence. Scores are unchanged; only the order and choice are."""
        check_request(k, mode, diversity)
        allowed = self.allowed_ids(filters)
        pool = k * DIVERSITY_POOL if diversity > 0 else k
        depth = search_depth(pool, len(self._index.passages))
        if depth == 0 or (allowed is not None and len(allowed) == 0):
            return [[] for _ in queries]

        dense_ids: npt.NDArray[np.int64] | None = None
        if mode != "lexical":
            matrix = np.vstack([q.vectors for q in queries])
            _, dense_ids = self._index.vectors.search(matrix, depth, allowed)
        bounds = np.cumsum([0, *(len(q.vectors) for q in queries)])
        results = []
        for row, query in enumerate(queries):
            candidates: dict[int, None] = {}
            if dense_ids is not None:
                found = dense_ids[bounds[row] : bounds[row + 1]].ravel()
                candidates.update(dict.fromkeys(int(i) for i in found if i >= 0))
            translation = query.translation
            lexical = None
            if mode != "dense":
                searched = translation.query if translation else query.text
                lexical = self._index.lexical.scores(searched)
                if allowed is not None:
                    mask = np.zeros(len(lexical), dtype=bool)
                    mask[allowed] = True
                    lexical = np.where(mask, lexical, -1.0)
                top = best_positions(lexical, depth, self._index.passages)
                candidates.update(dict.fromkeys(top))
            coverage = query.coverage if mode == "hybrid" else 1.0
            weight = translation.coverage if translation else coverage
            dense_support = coverage < LEXICAL_SUPPORT_COVERAGE
            hits = self._rank(
                list(candidates), query.vectors, lexical, mode, pool, weight, dense_support
            )
            results.append(self._diversify(hits, k, diversity) if diversity > 0 else hits)
        return results

    def _rank(
        self,
        ids: list[int],
        vectors: Vectors,
        lexical: npt.NDArray[np.float32] | None,
        mode: Mode,
        k: int,
        coverage: float = 1.0,
        dense_support: bool = False,
    ) -> list[Hit]:
        if not ids:
            return []
        id_array = np.asarray(ids, dtype=np.int64)
        dense = self.dense_scores(id_array, vectors) if mode != "lexical" else None
        lex = lexical[id_array].astype(np.float64) if lexical is not None else None
        lexical_weight = (1 - self.dense_weight) * coverage
        scores, support = fused_scores(
            dense, lex, self.profile.floor, lexical_weight, dense_support
        )
        passages = [self._index.passages[i] for i in ids]
        # Best first; hits are made only as far as merging needs.
        hits = (
            Hit(
                passages[j],
                float(scores[j]),
                float(support[j]),
                None if dense is None else float(dense[j]),
                None if lex is None else float(lex[j]),
                ids[j],
            )
            for j in best_first(scores, passages)
        )
        return merge_overlaps(hits, k, self._index.documents, self._index.units)

    def dense_scores(self, ids: npt.NDArray[np.int64], vectors: Vectors) -> npt.NDArray[np.float64]:
        """Each passage's dense score: its best cosine with the query's vectors, mixed with its
        reading after the passage before it and raised to its best sentence's, as its model's
        profile says."""
        dense = (self._index.vectors.vectors(ids) @ vectors.T).max(axis=1)
        if self._index.context_vectors is not None and self.context_weight:
            in_context = (self._index.context_vectors[ids] @ vectors.T).max(axis=1)
            dense = (1 - self.context_weight) * dense + self.context_weight * in_context
        if self._index.unit_vectors is not None and self.profile.sentence_evidence:
            dense = np.maximum(dense, self._best_sentence_scores(ids.tolist(), vectors))
        scores: npt.NDArray[np.float64] = dense.astype(np.float64)
        return scores

    def _best_sentence_scores(self, ids: list[int], vectors: Vectors) -> npt.NDArray[np.float32]:
        """Each passage's best sentence cosine, from one product over all their sentences."""
        assert self._index.unit_vectors is not None
        rows = [self._index.unit_rows(self._index.passages[i]) for i in ids]
        starts = np.fromiter((r.start for r in rows), np.int64, len(rows))
        lengths = np.fromiter((len(r) for r in rows), np.int64, len(rows))
        firsts = np.cumsum(lengths) - lengths  # where each passage's sentences begin in `flat`
        flat = np.arange(lengths.sum()) + np.repeat(starts - firsts, lengths)
        cosines = (self._index.unit_vectors[flat] @ vectors.T).max(axis=1)
        best: npt.NDArray[np.float32] = np.maximum.reduceat(cosines, firsts)
        return best

    def _diversify(self, hits: list[Hit], k: int, diversity: float) -> list[Hit]:
        rows = np.asarray([h.row for h in hits], dtype=np.int64)
        return most_relevant_and_diverse(hits, self._index.vectors.vectors(rows), k, diversity)


def most_relevant_and_diverse(
    hits: Sequence[Hit], vectors: Vectors, k: int, diversity: float
) -> list[Hit]:
    """Maximal marginal relevance over `hits` (best first, `vectors` their passages'): the `k`
    to return, in order."""
    if len(hits) <= 1:
        return list(hits[:k])
    similarity = vectors @ vectors.T
    relevance = np.asarray([h.score for h in hits])
    picked = [0]
    closest = similarity[0].copy()  # each hit's highest cosine with a picked one
    while len(picked) < min(k, len(hits)):
        value = (1 - diversity) * relevance - diversity * closest
        value[picked] = -np.inf
        best = int(np.argmax(value))
        picked.append(best)
        closest = np.maximum(closest, similarity[best])
    return [hits[n] for n in picked]


def check_request(k: int, mode: Mode, diversity: float) -> None:
    if k < 1:
        raise ValueError("k must be at least 1")
    if not 0.0 <= diversity <= 1.0:
        raise ValueError("diversity must lie in [0, 1]")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def lexical_coverage(question: str, analyzer: Analyzer, known: Callable[[str], int]) -> float:
    """Share of the question's distinct words BM25 can read: English stop words, and the
    `known` number of its terms (stemmed as BM25 indexes them) that occur in the index."""
    stop = {w for w in WORD.findall(question.lower()) if w in STOPWORDS}
    terms = dict.fromkeys(analyzer.terms(question))
    if not stop and not terms:
        return 0.0
    return (len(stop) + known(question)) / (len(stop) + len(terms))


def tie_order(passage: Passage) -> tuple[str, int]:
    """What orders passages of equal score: their document and place in it, not where an index
    happens to hold them, so that shards break ties as one index does."""
    return passage.document_id, passage.ordinal


def best_first(scores: npt.NDArray[np.float64], passages: Sequence[Passage]) -> list[int]:
    """Positions of `scores` best first, ties in `tie_order`."""
    return sorted(range(len(scores)), key=lambda j: (-scores[j], tie_order(passages[j])))


def best_positions(
    scores: npt.NDArray[np.float32], depth: int, passages: Sequence[Passage]
) -> list[int]:
    """The positions of the `depth` best scores above 0, best first, ties in `tie_order` (of
    `passages`, the passages at those positions). Equal scores are common in BM25 (short passages
    matching one word), and which of them make the cut must not depend on the index's layout."""
    if depth < len(scores):
        cut = np.partition(scores, len(scores) - depth)[len(scores) - depth]
        found = np.flatnonzero((scores >= cut) & (scores > 0))
    else:
        found = np.flatnonzero(scores > 0)
    ranked = sorted(found.tolist(), key=lambda i: (-scores[i], tie_order(passages[i])))
    return ranked[:depth]


def search_depth(pool: int, passages: int) -> int:
    """Candidates each retriever contributes for `pool` results out of `passages`."""
    return min(max(pool * CANDIDATE_FACTOR, MIN_CANDIDATES), passages)


def fused_scores(
    dense: npt.NDArray[np.float64] | None,
    lexical: npt.NDArray[np.float64] | None,
    floor: float,
    lexical_weight: float,
    dense_support: bool,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The candidates' scores in their mode (whichever of the two is given, or both fused) and
    what abstention judges of each (module docstring)."""
    if dense is None:
        assert lexical is not None
        return lexical, lexical
    if lexical is None:
        return dense, dense
    rescaled = (dense - floor) / (1 - floor)
    scores = (1 - lexical_weight) * rescaled + lexical_weight * lexical
    # Judged as dense mode would judge it: on its best dense score among the candidates.
    support = np.full_like(scores, rescaled.max()) if dense_support else scores
    return scores, support


def merge_overlaps(
    hits: Iterable[Hit],
    k: int,
    documents: Mapping[str, Document],
    units: Mapping[str, Sequence[Span]],
) -> list[Hit]:
    """Best-first hits with overlapping windows merged, so no text is returned twice.

    A merged passage spans at most MAX_MERGED_WINDOWS windows; a window that would make it
    longer keeps only its sentences not already returned."""
    kept: list[Hit] = []
    merged_away: set[int] = set()
    by_document: dict[str, list[int]] = {}  # slots in `kept`, compared for overlaps
    for hit in hits:
        slots = by_document.setdefault(hit.passage.document_id, [])
        overlapping = [n for n in slots if _overlaps(hit.passage, kept[n].passage)]
        if overlapping:
            others = [kept[n].passage for n in overlapping]
            merged = merge_passages([hit.passage, *others])
            if merged.windows <= MAX_MERGED_WINDOWS:
                kept[overlapping[0]] = replace(kept[overlapping[0]], passage=merged)
                for n in overlapping[1:]:
                    merged_away.add(n)
                    slots.remove(n)
                continue
            document = documents[hit.passage.document_id]  # rarely needed: fetched here
            trimmed = trim_passage(hit.passage, others, document, units[document.id])
            if trimmed is None:
                continue
            hit = replace(hit, passage=trimmed)
        if len(kept) - len(merged_away) == k:
            break
        slots.append(len(kept))
        kept.append(hit)
    return [hit for n, hit in enumerate(kept) if n not in merged_away]
