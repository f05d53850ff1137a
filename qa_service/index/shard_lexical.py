"""BM25 over an index split into shards, scoring exactly as one `LexicalIndex` over all passages.

bm25s precomputes every passage's term scores from its own corpus statistics (number of
passages, average passage length, document frequency of each term), so scores of separately
built shards are not comparable. Here each shard keeps its raw term counts instead, and a
search runs in explicit steps with plain data in and out, so that a shard can later live in
another process:

1. shard: `TermCounts.stats()`; coordinator: `TermStatistics.combine` sums them into the
   global statistics (once per change of any shard, not per question);
2. shard: `TermCounts.highest_weight(stats)`; coordinator: `unknown_weight` takes the highest
   (the weight `LexicalIndex` gives a question term found in no passage);
3. per question, shard: `TermCounts.term_maxima(terms, stats)`; coordinator: `plan_query`
   takes each term's best over the shards and sums the bound;
4. per question, shard: `TermCounts.scores(plan, stats)`, its passages' normalised scores.

Every number is computed as bm25s computes it ("lucene" idf and term-frequency component,
k1 = 1.5, b = 0.75, the same float dtypes and the same order of float32 additions), so the
concatenated shard scores equal the single index's bit for bit, not just approximately.
`ShardedLexical` runs the steps in process.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp  # type: ignore[import-untyped]

from qa_service.errors import IndexCorruptError
from qa_service.index.lexical import Analyzer, Scores

# bm25s.BM25()'s defaults, which `LexicalIndex` uses.
K1 = 1.5
B = 0.75

COUNTS_FILE = "term_counts.npz"
VOCABULARY_FILE = "term_vocabulary.json"
FORMAT_VERSION = 1

Int64s = npt.NDArray[np.int64]
Int32s = npt.NDArray[np.int32]

# The dtype bm25s computes a term-frequency component in: it adds a float64 scalar (the length
# normalisation) to a float32 array of counts, which is float64 under NumPy 2's promotion rules
# and float32 under NumPy 1's value-based casting. Probing keeps the two bit-identical on both.
_TFC_DTYPE = (np.float64(K1) + np.ones(1, dtype=np.float32)).dtype


def _idf(df: int, passages: int) -> float:
    """bm25s's lucene idf (`bm25s.scoring._score_idf_lucene`), in Python floats like bm25s."""
    return math.log(1 + (passages - df + 0.5) / (df + 0.5))


@dataclass(frozen=True)
class TermStatistics:
    """What BM25 needs of a corpus: one shard's, or the sum over all shards (global)."""

    passages: int
    total_length: int  # number of terms over all passages, repeats included
    document_frequency: Mapping[str, int]  # term -> number of passages holding it

    @property
    def average_length(self) -> float:
        # bm25s takes numpy's mean of the int lengths: their float64 sum over the count, the
        # same correctly rounded quotient as this (sums are exact below 2**53 terms).
        return self.total_length / self.passages if self.passages else 0.0

    @classmethod
    def combine(cls, parts: Iterable[TermStatistics]) -> TermStatistics:
        """The statistics of the union of disjoint shards."""
        passages = total_length = 0
        frequency: Counter[str] = Counter()
        for part in parts:
            passages += part.passages
            total_length += part.total_length
            frequency.update(part.document_frequency)
        return cls(passages, total_length, dict(frequency))


@dataclass(frozen=True)
class QueryPlan:
    """What every shard needs to score a question: its terms known in some shard (distinct, in
    the question's order, which is the order bm25s adds them in) and the normalising bound."""

    terms: tuple[str, ...]
    bound: float


@dataclass(frozen=True)
class _Weights:
    """A shard's BM25 score of every (passage, term) under one set of statistics."""

    stats: TermStatistics
    data: npt.NDArray[np.float32]  # aligned with the CSC count matrix's data
    term_max: npt.NDArray[np.float32]  # per column


class TermCounts:
    """One shard's raw term counts: the part of a BM25 index that does not depend on the rest
    of the corpus."""

    def __init__(self, vocabulary: Sequence[str], counts: Any, lengths: Int64s) -> None:
        """`counts`: scipy CSC matrix, passage x term (column i is `vocabulary[i]`), with sorted
        rows; `lengths`: each passage's number of terms, as bm25s counts them."""
        self.vocabulary: dict[str, int] = {term: i for i, term in enumerate(vocabulary)}
        self.counts = counts
        self.lengths = lengths
        self._data: Int32s = np.asarray(counts.data, dtype=np.int32)
        self._indices: Int64s = np.asarray(counts.indices, dtype=np.int64)
        self._indptr: Int64s = np.asarray(counts.indptr, dtype=np.int64)
        self._weights: _Weights | None = None  # for the last statistics seen

    @property
    def size(self) -> int:
        """Number of passages."""
        return len(self.lengths)

    @classmethod
    def from_terms(cls, terms: Sequence[Sequence[str]]) -> TermCounts:
        """From each passage's analysed terms (`Analyzer.terms`), as `LexicalIndex.from_terms`."""
        vocabulary: dict[str, int] = {}
        rows: list[int] = []
        columns: list[int] = []
        values: list[int] = []
        for row, passage in enumerate(terms):
            for term, count in Counter(passage).items():
                rows.append(row)
                columns.append(vocabulary.setdefault(term, len(vocabulary)))
                values.append(count)
        counts = sp.csc_array(
            (
                np.array(values, dtype=np.int32),
                (np.array(rows, dtype=np.int64), np.array(columns, dtype=np.int64)),
            ),
            shape=(len(terms), len(vocabulary)),
            dtype=np.int32,
        )
        counts.sort_indices()
        # bm25s's passage length is len(token ids): every occurrence, repeats included.
        lengths = np.array([len(passage) for passage in terms], dtype=np.int64)
        return cls(list(vocabulary), counts, lengths)

    # Shard steps: plain data in and out.

    def stats(self) -> TermStatistics:
        frequency = np.diff(self._indptr).tolist()
        return TermStatistics(
            passages=self.size,
            total_length=int(self.lengths.sum()),
            document_frequency=dict(zip(self.vocabulary, frequency, strict=True)),
        )

    def highest_weight(self, stats: TermStatistics) -> float | None:
        """The best score any term reaches in this shard under `stats` (None: no terms)."""
        term_max = self._weights_for(stats).term_max
        return float(term_max.max()) if term_max.size else None

    def term_maxima(self, terms: Iterable[str], stats: TermStatistics) -> dict[str, float]:
        """The best score each of `terms` that this shard holds reaches in it under `stats`."""
        term_max = self._weights_for(stats).term_max
        found: dict[str, float] = {}
        for term in terms:
            column = self.vocabulary.get(term)
            if column is not None:
                found[term] = float(term_max[column])
        return found

    def raw_scores(self, terms: Iterable[str], stats: TermStatistics) -> Scores:
        """BM25 of every passage for distinct `terms` under `stats`, summed in float32 in the
        order of `terms`, as bm25s sums them."""
        data = self._weights_for(stats).data
        scores = np.zeros(self.size, dtype=np.float32)
        for term in terms:
            column = self.vocabulary.get(term)
            if column is not None:
                start, end = self._indptr[column], self._indptr[column + 1]
                scores[self._indices[start:end]] += data[start:end]  # rows unique per column
        return scores

    def scores(self, plan: QueryPlan, stats: TermStatistics) -> Scores:
        """Normalised score of every passage, as `LexicalIndex.scores` computes it."""
        if not plan.terms or plan.bound <= 0:
            return np.zeros(self.size, dtype=np.float32)
        raw = self.raw_scores(plan.terms, stats)
        return np.asarray(raw / plan.bound, dtype=np.float32)

    def _weights_for(self, stats: TermStatistics) -> _Weights:
        """All this shard's term scores under `stats`, O(non-zeros); kept for the last
        statistics (by identity: comparing them would cost as much as the vocabulary)."""
        cached = self._weights  # read once: another thread may replace it meanwhile
        if cached is not None and cached.stats is stats:
            return cached
        frequency = stats.document_frequency
        try:
            df = np.array([frequency[term] for term in self.vocabulary], dtype=np.int64)
        except KeyError as exc:
            raise ValueError(f"the statistics lack term {exc.args[0]!r} of this shard") from exc
        if stats.passages < self.size or (df < np.diff(self._indptr)).any():
            raise ValueError("the statistics do not include this shard's passages")
        if not self._data.size:  # no terms (and maybe an average length of 0)
            empty = np.zeros(0, dtype=np.float32)
            self._weights = weights = _Weights(stats, empty, empty)
            return weights
        # idf depends on df alone: one math.log per distinct df, as bm25s computes it.
        distinct, inverse = np.unique(df, return_inverse=True)
        idf_distinct = [_idf(int(d), stats.passages) for d in distinct.tolist()]
        idf = np.array(idf_distinct, dtype=np.float32)[inverse]
        # bm25s: tf / (k1 * ((1 - b) + b * l_d / l_avg) + tf), its length part in float64.
        norm = K1 * ((1 - B) + B * self.lengths.astype(np.float64) / stats.average_length)
        tf = self._data.astype(np.float32).astype(_TFC_DTYPE)
        tfc = tf / (norm[self._indices].astype(_TFC_DTYPE) + tf)
        columns = np.repeat(np.arange(len(self.vocabulary)), np.diff(self._indptr))
        data = (idf[columns].astype(_TFC_DTYPE) * tfc).astype(np.float32)
        # Every column holds at least one passage (`load` checks it), as reduceat needs.
        term_max = np.maximum.reduceat(data, self._indptr[:-1])
        self._weights = weights = _Weights(stats, data, term_max)
        return weights

    # Storage.

    def save(self, folder: Path) -> None:
        """Write the counts into `folder` (the caller makes it durable, as for the index)."""
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / COUNTS_FILE).open("wb") as f:
            np.savez(
                f, data=self._data, indices=self._indices, indptr=self._indptr, lengths=self.lengths
            )
        meta = {"format_version": FORMAT_VERSION, "vocabulary": list(self.vocabulary)}
        (folder / VOCABULARY_FILE).write_text(json.dumps(meta, ensure_ascii=False), "utf-8")

    @classmethod
    def load(cls, folder: Path) -> TermCounts:
        """Read and verify saved counts; a missing or damaged file raises IndexCorruptError."""
        try:
            meta = json.loads((folder / VOCABULARY_FILE).read_text("utf-8"))
            with np.load(folder / COUNTS_FILE, allow_pickle=False) as saved:
                arrays = {k: np.asarray(saved[k]) for k in ("data", "indices", "indptr", "lengths")}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            raise IndexCorruptError(f"cannot read the term counts in {folder}: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            raise IndexCorruptError(
                f"{folder / VOCABULARY_FILE} is not term counts version {FORMAT_VERSION}"
            )
        vocabulary = meta.get("vocabulary")
        if not isinstance(vocabulary, list) or not all(isinstance(t, str) for t in vocabulary):
            raise IndexCorruptError(f"{folder / VOCABULARY_FILE} holds no list of terms")
        problem = _check_counts(vocabulary, **arrays)
        if problem:
            raise IndexCorruptError(f"damaged term counts in {folder}: {problem}")
        data, indices, indptr = arrays["data"], arrays["indices"], arrays["indptr"]
        lengths = arrays["lengths"].astype(np.int64)
        counts = sp.csc_array(
            (data.astype(np.int32), indices.astype(np.int64), indptr.astype(np.int64)),
            shape=(len(lengths), len(vocabulary)),
        )
        return cls(vocabulary, counts, lengths)


def _check_counts(
    vocabulary: list[str],
    data: npt.NDArray[Any],
    indices: npt.NDArray[Any],
    indptr: npt.NDArray[Any],
    lengths: npt.NDArray[Any],
) -> str | None:
    """What is wrong with saved counts, if anything: every invariant `from_terms` builds."""
    for name, array in [("data", data), ("indices", indices), ("indptr", indptr)]:
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
            return f"{name} is not a vector of integers"
    if lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer):
        return "lengths is not a vector of integers"
    if len(set(vocabulary)) != len(vocabulary):
        return "repeated terms in the vocabulary"
    if len(indptr) != len(vocabulary) + 1:
        return f"{len(vocabulary)} terms but {len(indptr) - 1} columns"
    if indptr[0] != 0 or indptr[-1] != len(data) or len(indices) != len(data):
        return "column pointers do not match the counts"
    if (np.diff(indptr) <= 0).any():
        return "a term without passages"
    if data.size and ((data <= 0).any() or (indices < 0).any() or indices.max() >= len(lengths)):
        return "counts or passage numbers out of range"
    columns = np.repeat(np.arange(len(vocabulary)), np.diff(indptr))
    # Within each column, passages strictly increase: a new column restarts them.
    if (np.diff(indices)[columns[1:] == columns[:-1]] <= 0).any():
        return "passages unsorted or repeated within a term"
    row_sums = np.bincount(indices, weights=data, minlength=len(lengths))
    if not np.array_equal(row_sums, lengths):
        return "passage lengths do not equal their term counts"
    return None


# Coordinator steps.


def unknown_weight(highest_weights: Iterable[float | None]) -> float:
    """The weight of a question term no shard holds: the highest term weight of any shard (1 if
    no shard holds any term, as `LexicalIndex` of an empty vocabulary)."""
    known = [w for w in highest_weights if w is not None]
    return max(known) if known else 1.0


def plan_query(
    terms: Sequence[str], term_maxima: Sequence[Mapping[str, float]], unknown: float
) -> QueryPlan:
    """The question's known terms and bound from every shard's `term_maxima`, as
    `LexicalIndex.query_ids` sums it (same order, so the same float)."""
    known: list[str] = []
    bound = 0.0
    for term in dict.fromkeys(terms):
        found = [maxima[term] for maxima in term_maxima if term in maxima]
        if found:
            known.append(term)
            bound += max(found)
        else:
            bound += unknown
    return QueryPlan(tuple(known), bound)


class ShardedLexical:
    """The steps run in one process over several shards: scores equal to one `LexicalIndex` of
    all their passages, shard 0's first."""

    def __init__(self, shards: Sequence[TermCounts]) -> None:
        self.shards = list(shards)
        self.stats = TermStatistics.combine(shard.stats() for shard in self.shards)
        self.unknown_weight = unknown_weight(s.highest_weight(self.stats) for s in self.shards)
        self.size = sum(shard.size for shard in self.shards)
        self._analyzer = Analyzer()

    def plan(self, question: str) -> QueryPlan:
        """Known terms of the question and its bound (`LexicalIndex.query_ids`'s counterpart)."""
        terms = list(dict.fromkeys(self._analyzer.terms(question)))
        maxima = [shard.term_maxima(terms, self.stats) for shard in self.shards]
        return plan_query(terms, maxima, self.unknown_weight)

    def shard_scores(self, question: str) -> list[Scores]:
        plan = self.plan(question)
        return [shard.scores(plan, self.stats) for shard in self.shards]

    def scores(self, question: str) -> Scores:
        """Normalised score of every passage of every shard, in shard order."""
        parts = self.shard_scores(question)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
