"""The question path: questions → searched texts → vectors → ranked hits → answers.

A `QueryPipeline` serves one index snapshot and never changes: a write builds a new one, so a
question sees the collection wholly before or wholly after it. The model is called once per
batch of questions, for every text the batch needs (each question, what is searched for it, its
other spellings, and the words of those to translate).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from embeddings import Vectors
from embeddings.base import normalised
from qa_service.corpus.acronyms import Acronyms
from qa_service.index.store import IndexData
from qa_service.models import Mode, profile_for
from qa_service.query.answering import Answer, AnswerBuilder, BaseAnswerBuilder
from qa_service.query.lexicon import Lexicon, word_counts, words_of
from qa_service.query.reading import PassageReader, ReadHits
from qa_service.query.recent import Recent
from qa_service.query.retrieval import (
    DENSE_WEIGHT,
    LEXICAL_SUPPORT_COVERAGE,
    Filters,
    Hit,
    Retriever,
    SearchQuery,
)
from qa_service.query.transliteration import spellings

logger = logging.getLogger(__name__)

Encode = Callable[[Sequence[str]], Vectors]

# A follow-up is searched together with the questions before it, which name its subject; in one
# vector, though, its own words weigh no more than theirs, and the passage that answers it, which
# need not name the subject, ranks below the one that does. So the follow-up's own vector is
# added to the joined one (BM25 reads the joined text as before). Synthetic follow-ups from
# SQuAD v1.1, answer sentence hit at 0 → 1 (benchmarks/follow_ups.py, docs/evaluation.md):
# MiniLM 0.635 → 0.704 where the earlier question came from another paragraph, 0.797 → 0.778
# where it came from the same one; e5 0.645 → 0.715 and 0.785 → 0.788.
FOLLOW_UP_WEIGHT = 1.0
# Question words whose vectors are kept (the lexicon translates them, query/lexicon.py).
WORDS_KEPT = 20_000


def follow_up_vectors(searched: Vectors, asked: Vectors) -> Vectors:
    """What a follow-up is searched with: each spelling of the joined questions, plus the
    follow-up as asked (its first spelling)."""
    return normalised(searched + FOLLOW_UP_WEIGHT * asked[:1])


@dataclass(frozen=True)
class AskOptions:
    """What one request may choose; None takes the service's default."""

    top_k: int | None = None
    min_score: float | None = None
    mode: Mode | None = None
    filters: Filters | None = None
    diversity: float = 0.0  # maximal marginal relevance, 0..1 (retrieval.py)


class Searcher(Protocol):
    """What ranks passages: `Retriever` over one index, `ShardedRetriever` over shards."""

    def retrieve(
        self,
        queries: Sequence[SearchQuery],
        k: int,
        mode: Mode = "hybrid",
        filters: Filters | None = None,
        diversity: float = 0.0,
    ) -> list[list[Hit]]: ...

    def lexical_coverage(self, question: str) -> float: ...


class QueryPipeline:
    def __init__(
        self,
        retriever: Searcher,
        answers: BaseAnswerBuilder,
        acronyms: Acronyms,
        model: str,
        words: Callable[[], Counter[str]],
        encode: Encode,
        previous: QueryPipeline | None = None,
        known: Lexicon | None = None,
    ) -> None:
        """`words` counts the collection's words, for the lexicon of a `model` that has one,
        which `encode` builds; its words already in `previous`'s lexicon, or else in `known` (one
        an earlier process saved), are not encoded again."""
        self.retriever = retriever
        self.answers = answers
        self.acronyms = acronyms
        self.lexicon: Lexicon | None = None
        # Question words' vectors outlive a snapshot: they depend on the model only.
        self.words: Recent[str, npt.NDArray[np.float32]] = (
            previous.words if previous is not None else Recent(WORDS_KEPT)
        )
        if profile_for(model).lexicon:
            started = time.perf_counter()
            if previous is not None:
                known = previous.lexicon
            self.lexicon = Lexicon.from_counts(words(), encode, known)
            logger.info(
                "lexicon of %d words ready in %.1f s",
                len(self.lexicon.words), time.perf_counter() - started,
            )  # fmt: skip

    @classmethod
    def over_index(
        cls,
        index: IndexData,
        encode: Encode,
        dense_weight: float = DENSE_WEIGHT,
        previous: QueryPipeline | None = None,
        known: Lexicon | None = None,
    ) -> QueryPipeline:
        """The pipeline over one index in memory."""
        return cls(
            Retriever(index, dense_weight), AnswerBuilder(index),
            Acronyms.from_definitions(index.acronyms.values()), index.manifest.model,
            lambda: word_counts(index.documents.values()), encode, previous, known,
        )  # fmt: skip

    def run(
        self,
        questions: Sequence[str],
        queries: Sequence[str],
        encode: Encode,
        *,
        k: int,
        mode: Mode,
        threshold: float,
        filters: Filters | None = None,
        diversity: float = 0.0,
        reader: PassageReader | None = None,
    ) -> list[Answer]:
        """Answer each question from what is searched for it, its query (a follow-up together
        with the questions before it, or the question itself); the answer sentence is chosen,
        and the `reader` reads, for the question as asked (read with the earlier questions of a
        follow-up, it answers the first of them)."""
        if len(queries) != len(questions):
            raise ValueError("one query per question")
        # Searched with the acronyms it uses spelled out.
        searched = [self.acronyms.expand(q) for q in queries]
        texts = list(dict.fromkeys([*questions, *searched]))
        coverage = (
            {q: self.retriever.lexical_coverage(q) for q in dict.fromkeys(searched)}
            if mode == "hybrid"
            else {}
        )
        # Questions BM25 barely reads are also searched by their words' translations: the words
        # are encoded in the same model call.
        translated = (
            [q for q, c in coverage.items() if c < LEXICAL_SUPPORT_COVERAGE]
            if self.lexicon is not None
            else []
        )
        question_words = {q: words_of(q) for q in translated}
        known = self.words.get([w for ws in question_words.values() for w in ws])
        new = list(dict.fromkeys(w for ws in question_words.values() for w in ws if w not in known))
        encoded = _encode_groups([*(spellings(t) for t in texts), new], encode)
        by_text = dict(zip(texts, encoded[: len(texts)], strict=True))
        translations = {}
        if self.lexicon is not None and translated:
            self.words.put(zip(new, encoded[-1], strict=True))
            known.update(zip(new, encoded[-1], strict=True))
            translations = {
                q: self.lexicon.translate(q, _stack([known[w] for w in ws], encoded[-1]))
                for q, ws in question_words.items()
            }
        search = [
            SearchQuery(
                text,
                by_text[text] if query == question
                else follow_up_vectors(by_text[text], by_text[question]),
                coverage.get(text, 1.0),
                translations.get(text),
            )
            for text, query, question in zip(searched, queries, questions, strict=True)
        ]  # fmt: skip
        hits = self.retriever.retrieve(search, k, mode, filters, diversity)
        read: dict[int, ReadHits] = {}
        if reader is not None:
            # Questions in another language than the documents' are left unread (reading.py).
            readable = {
                q: coverage[q] if q in coverage else self.retriever.lexical_coverage(q)
                for q in dict.fromkeys(searched)
            }
            chosen = [n for n, q in enumerate(searched) if reader.reads(readable[q])]
            texts_read = [questions[n] for n in chosen]
            read = dict(zip(chosen, reader.run(texts_read, [hits[n] for n in chosen]), strict=True))
        answers = []
        for n, (question, found) in enumerate(zip(questions, hits, strict=True)):
            vectors = by_text[question]
            if n in read and reader is not None:
                r = read[n]
                answers.append(self.answers.build(
                    question, vectors, r.hits, threshold, r.readings, reader.threshold
                ))  # fmt: skip
            else:
                # A standalone question's translation also picks its answer sentence; a
                # follow-up's would bring the earlier questions' words.
                translation = translations.get(searched[n]) if queries[n] == question else None
                answers.append(self.answers.build(
                    question, vectors, found, threshold,
                    translation=translation.query if translation else None,
                ))  # fmt: skip
        return answers


def _stack(vectors: list[Vectors], like: Vectors) -> Vectors:
    return np.vstack(vectors) if vectors else like[:0]


def _encode_groups(groups: Sequence[Sequence[str]], encode: Encode) -> list[Vectors]:
    """One matrix per group of texts (a question's spellings, or its words), all encoded in one
    model call."""
    flat = encode([t for group in groups for t in group])
    bounds = np.cumsum([0, *(len(group) for group in groups)])
    return [flat[a:b] for a, b in itertools.pairwise(bounds)]
