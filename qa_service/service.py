"""The question-answering service that the API and the CLI both drive."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from embeddings import Encoder, load_encoder
from embeddings.batching import QueryBatcher
from qa_service.answering import Answer, AnswerBuilder, min_score_for
from qa_service.chunking import PassageSplitter
from qa_service.config import Settings
from qa_service.documents import Document
from qa_service.errors import DocumentNotFoundError, IndexNotFoundError, IndexStaleError
from qa_service.indexing import ProgressFactory, build_index, stale_reasons
from qa_service.retrieval import DENSE_WEIGHT, Filters, Mode, Retriever
from qa_service.store import IndexData, load_index, read_manifest

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TimedAnswer:
    answer: Answer
    took_ms: float


def make_splitter(settings: Settings, encoder: Encoder) -> PassageSplitter:
    return PassageSplitter(
        encoder, settings.passage_tokens, settings.passage_overlap, settings.title_context
    )


def ensure_index(
    settings: Settings, encoder: Encoder, progress: ProgressFactory | None = None
) -> IndexData:
    """Load the index, building it first when there is none or it no longer fits the settings."""
    splitter = make_splitter(settings, encoder)

    def rebuild() -> IndexData:
        return build_index(
            settings.corpus_dir, settings.index_dir, encoder, splitter, settings.batch_size,
            progress,
        )[0]  # fmt: skip

    try:
        manifest = read_manifest(settings.index_dir)
    except IndexNotFoundError:
        logger.info("no index in %s yet: building it from %s", settings.index_dir,
                    settings.corpus_dir)  # fmt: skip
        return rebuild()
    reasons = stale_reasons(manifest, encoder, splitter, settings.corpus_dir)
    if reasons:
        if not settings.rebuild_stale_index:
            raise IndexStaleError(
                f"the index in {settings.index_dir} is out of date: {'; '.join(reasons)}. "
                "Run `qa index` to rebuild it."
            )
        logger.warning("rebuilding the index: %s", "; ".join(reasons))
        return rebuild()
    return load_index(settings.index_dir)


class QAService:
    def __init__(
        self,
        encoder: Encoder,
        index: IndexData,
        min_score: float | None,
        top_k: int,
        mode: Mode = "hybrid",
        dense_weight: float = DENSE_WEIGHT,
    ) -> None:
        """`min_score` None means the threshold calibrated for the model and each mode."""
        if index.manifest.model != encoder.name:
            raise IndexStaleError(
                f"index built with {index.manifest.model} cannot be queried with {encoder.name}"
            )
        self.encoder = encoder
        self.index = index
        # Seconds it took `from_settings` to load the model and the index ("model", "index").
        self.load_seconds: dict[str, float] = {}
        self.top_k = top_k
        self.mode: Mode = mode
        self._min_score = min_score
        # Concurrent requests share model calls (embeddings/batching.py).
        self._queries = QueryBatcher(encoder.encode_queries)
        self._retriever = Retriever(index, dense_weight)
        self._answers = AnswerBuilder(index)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        encoder: Encoder | None = None,
        progress: ProgressFactory | None = None,
    ) -> QAService:
        started = time.perf_counter()
        loaded = encoder or load_encoder(settings.model)
        model_seconds = time.perf_counter() - started
        index = ensure_index(settings, loaded, progress)
        service = cls(
            loaded, index, settings.min_score, settings.top_k, settings.mode, settings.dense_weight
        )
        if encoder is None:
            service.load_seconds["model"] = model_seconds
        service.load_seconds["index"] = time.perf_counter() - started - model_seconds
        return service

    @property
    def min_score(self) -> float:
        """The abstention threshold of the default mode."""
        return self.threshold()

    def threshold(self, mode: Mode | None = None) -> float:
        if self._min_score is not None:
            return self._min_score
        return min_score_for(self.encoder.name, mode or self.mode)

    def ask(
        self,
        question: str,
        top_k: int | None = None,
        min_score: float | None = None,
        mode: Mode | None = None,
        filters: Filters | None = None,
        query: str | None = None,
    ) -> TimedAnswer:
        queries = None if query is None or query == question else [query]
        return self.ask_many([question], top_k, min_score, mode, filters, queries)[0]

    def ask_many(
        self,
        questions: Sequence[str],
        top_k: int | None = None,
        min_score: float | None = None,
        mode: Mode | None = None,
        filters: Filters | None = None,
        queries: Sequence[str] | None = None,
    ) -> list[TimedAnswer]:
        """Answer several questions with one model call; `took_ms` is each one's share.

        `queries`, when given, is what to search for each question (a follow-up together with
        the questions before it); the answer sentence is still chosen for the question itself.
        """
        started = time.perf_counter()
        mode = mode or self.mode
        threshold = self.threshold(mode) if min_score is None else min_score
        if queries is None:
            queries = questions
            vectors = query_vectors = self._queries.encode(questions)
        else:
            if len(queries) != len(questions):
                raise ValueError("one query per question")
            both = self._queries.encode([*questions, *queries])
            vectors, query_vectors = both[: len(questions)], both[len(questions) :]
        hits = self._retriever.retrieve(queries, query_vectors, top_k or self.top_k, mode, filters)
        answers = [
            self._answers.build(q, v, h, threshold)
            for q, v, h in zip(questions, vectors, hits, strict=True)
        ]
        took_ms = (time.perf_counter() - started) * 1000 / max(len(questions), 1)
        return [TimedAnswer(a, took_ms) for a in answers]

    def documents(self) -> list[Document]:
        return list(self.index.documents.values())

    def document(self, document_id: str) -> Document:
        try:
            return self.index.documents[document_id]
        except KeyError:
            raise DocumentNotFoundError(document_id) from None

    def passage_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.index.documents, 0)
        for passage in self.index.passages:
            counts[passage.document_id] += 1
        return counts
