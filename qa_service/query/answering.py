"""Ranked passages to an answer: the sentence that best answers, and whether to answer at all.

Sentence vectors are computed when the index is built, so choosing the answer sentence costs a
few dot products at query time rather than another model call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from embeddings import Vectors
from embeddings.reader import Reading
from qa_service.corpus.chunking import Passage
from qa_service.index.lexical import Analyzer
from qa_service.index.store import IndexData
from qa_service.query.answer_kinds import AnswerKind, expected_kind, holds
from qa_service.query.retrieval import Hit

# Sentences come from the top passages only: lower ones rarely hold the answer and often mislead.
ANSWER_PASSAGES = 3
# Passages that get a highlight: as many as the API returns; deeper evaluation runs skip the rest.
HIGHLIGHTED_PASSAGES = 50
LEXICAL_WEIGHT = 0.6
# The answer sentence is the highlight with the best score + PASSAGE_WEIGHT × its passage's score.
# Sentences read in their passage's context score alike across passages, so the passage counts
# twice (SQuAD slice answer hit 0.7504 → 0.7523 from 1 to 2, 0.7505 at 3; docs/evaluation.md).
PASSAGE_WEIGHT = 2.0
# Added to a sentence that holds the kind of answer the question asks for (a number for "how
# many"). Answer sentence hit, 0 → 0.2, MiniLM / e5: SQuAD v1.1 slice 0.7523 → 0.7560 / 0.7493 →
# 0.7551, SQuAD 2.0 0.8116 → 0.8150 / 0.8150 → 0.8217, seed extra 17 → 18 / 15 → 16 of 22, no set
# worse; 0.1 and 0.3 measured within a few questions of 0.2 (docs/evaluation.md).
KIND_WEIGHT = 0.2


_ANALYZER = Analyzer()


def content_terms(text: str) -> set[str]:
    """Stemmed as BM25 reads them, so "trafficked" in a question meets "trafficking" in the
    answer (answer sentence hit, MiniLM: SQuAD v1.1 slice 0.7560 → 0.7635; docs/evaluation.md)."""
    return set(_ANALYZER.terms(text))


@dataclass(frozen=True)
class Asked:
    """What a sentence is matched on besides the question's vectors: the question's content words
    and the kind of answer it expects. Plain data, so a shard can score its own sentences."""

    terms: frozenset[str]
    kind: AnswerKind | None = None

    @classmethod
    def of(cls, question: str, translation: str | None = None) -> Asked:
        """`translation`: the corpus words a question in another language was searched by
        (query/lexicon.py), so that its sentences are matched on words they can hold."""
        terms = content_terms(question) | content_terms(translation or "")
        return cls(frozenset(terms), expected_kind(question))

    def score(self, text: str) -> float:
        """The sentence's score beyond its cosine with the question."""
        lexical = len(self.terms & content_terms(text)) / len(self.terms) if self.terms else 0.0
        kind = KIND_WEIGHT if self.kind is not None and holds(text, self.kind) else 0.0
        return LEXICAL_WEIGHT * lexical + kind


@dataclass(frozen=True)
class Sentence:
    start: int  # offsets inside the passage's text
    end: int
    score: float


@dataclass(frozen=True)
class RankedPassage:
    hit: Hit
    rank: int  # 1-based
    highlight: Sentence | None
    reading: Reading | None = None  # the reader's, where it read the passage


@dataclass(frozen=True)
class Answer:
    question: str
    answerable: bool
    passages: list[RankedPassage]
    answer_rank: int | None  # rank of the passage holding the answer sentence
    # The answer itself, as offsets inside the answer passage's text, where the reader read it
    # (query/reading.py); without it the answer sentence stands for the answer. Kept when the
    # service abstains: then it is what the first passage would have answered.
    span: tuple[int, int] | None = None
    # The reader's probability that the answer passage answers the question (None: not read).
    confidence: float | None = None

    @property
    def answer_text(self) -> str | None:
        """The answer: the reader's span, or else the answer sentence."""
        if self.answer_rank is None:
            return None
        if self.span is not None:
            return self.passages[self.answer_rank - 1].hit.passage.text[self.span[0] : self.span[1]]
        return self.sentence_text

    @property
    def candidate_text(self) -> str | None:
        """What the service answers or, where it abstained after reading, would have answered."""
        if self.answer_rank is None and self.span is not None and self.passages:
            return self.passages[0].hit.passage.text[self.span[0] : self.span[1]]
        return self.answer_text

    @property
    def sentence_text(self) -> str | None:
        """The answer sentence (the highlight of the answer passage)."""
        if self.answer_rank is None:
            return None
        ranked = self.passages[self.answer_rank - 1]
        assert ranked.highlight is not None
        return ranked.hit.passage.text[ranked.highlight.start : ranked.highlight.end]


class BaseAnswerBuilder(ABC):
    """Whether to answer, and with which sentence, from ranked hits; where the passages' sentences
    and their vectors live (one index, or shards) is its subclasses' business."""

    @abstractmethod
    def highlights(
        self, hits: Sequence[Hit], question_vectors: Vectors, asked: Asked
    ) -> list[Sentence | None]:
        """Each hit's sentence that best matches the question (None: the index has no sentence
        vectors)."""

    @abstractmethod
    def sentence_around(self, hit: Hit, start: int, end: int) -> Sentence:
        """The passage's sentences that hold [start, end) (offsets inside the passage)."""

    def build(
        self,
        question: str,
        question_vectors: Vectors,
        hits: list[Hit],
        threshold: float,
        readings: list[Reading | None] | None = None,
        reader_threshold: float = 0.0,
        translation: str | None = None,
    ) -> Answer:
        """With `readings` (one per hit, the read ones first and best first), the first hit's
        reading decides with retrieval's score whether to answer, and its span is the answer.
        `translation`: see `Asked.of`."""
        answerable = bool(hits) and hits[0].support >= threshold
        first = readings[0] if readings else None
        if first is not None:
            answerable = answerable and first.probability >= reader_threshold
        asked = Asked.of(question, translation)
        shown = hits[:HIGHLIGHTED_PASSAGES]
        best = self.highlights(shown[1:] if first is not None else shown, question_vectors, asked)
        if first is not None:
            best.insert(0, None)
        ranked = []
        answer_rank, answer_score = None, -np.inf
        for rank, hit in enumerate(hits, start=1):
            sentence = None
            reading = readings[rank - 1] if readings else None
            if rank == 1 and first is not None:
                sentence = self.sentence_around(hit, first.start, first.end)
            elif rank <= HIGHLIGHTED_PASSAGES:
                sentence = best[rank - 1]
            ranked.append(RankedPassage(hit, rank, sentence, reading))
            # The answer weighs how well the sentence and its passage both match.
            if sentence is None or first is not None:
                continue
            combined = sentence.score + PASSAGE_WEIGHT * hit.score
            if answerable and rank <= ANSWER_PASSAGES and combined > answer_score:
                answer_rank, answer_score = rank, combined
        if first is not None:
            # The span is kept when the service abstains: what it would have answered.
            return Answer(
                question, answerable, ranked, 1 if answerable else None,
                (first.start, first.end), first.probability,
            )  # fmt: skip
        return Answer(question, answerable, ranked, answer_rank)


class AnswerBuilder(BaseAnswerBuilder):
    """Answers from one index in memory."""

    def __init__(self, index: IndexData) -> None:
        self._index = index

    def best_sentence(
        self, passage: Passage, question_vectors: Vectors, asked: Asked
    ) -> Sentence | None:
        if self._index.unit_vectors is None:
            return None
        rows = self._index.unit_rows(passage)
        # The question's spellings (one row each): a sentence scores with the best of them.
        dense = (self._index.unit_vectors[rows.start : rows.stop] @ question_vectors.T).max(axis=1)
        units = self._index.units[passage.document_id][passage.first_unit : passage.last_unit]
        best: Sentence | None = None
        for (start, end), cosine in zip(units, dense, strict=True):
            text = passage.text[start - passage.start : end - passage.start]
            score = float(cosine) + asked.score(text)
            if best is None or score > best.score:
                best = Sentence(start - passage.start, end - passage.start, score)
        assert best is not None, "a passage always has at least one sentence unit"
        return best

    def highlights(
        self, hits: Sequence[Hit], question_vectors: Vectors, asked: Asked
    ) -> list[Sentence | None]:
        return [self.best_sentence(hit.passage, question_vectors, asked) for hit in hits]

    def sentence_around(self, hit: Hit, start: int, end: int) -> Sentence:
        passage = hit.passage
        units = self._index.units[passage.document_id][passage.first_unit : passage.last_unit]
        return sentence_around(passage.start, units, start, end)


def sentence_around(
    passage_start: int, units: Sequence[tuple[int, int]], start: int, end: int
) -> Sentence:
    """The sentences (`units`, offsets in the document) that hold [start, end) (offsets inside
    the passage starting at `passage_start`)."""
    spans = [(a - passage_start, b - passage_start) for a, b in units]
    first = next((a for a, b in spans if a <= start < b), spans[0][0])
    last = next((b for a, b in reversed(spans) if a < end <= b), spans[-1][1])
    return Sentence(first, last, 0.0)
