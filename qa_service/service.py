"""The question-answering service that the API and the CLI both drive.

Its live state (the index, the retriever and the answer builder over it) is one immutable
`_State`, replaced by a single reference assignment once a write's new generation is durable.
A question reads the state once, so it sees the index wholly before or wholly after a write.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embeddings import Encoder, Vectors, load_encoder
from embeddings.batching import QueryBatcher, QueueTimeoutError
from qa_service.acronyms import Acronyms
from qa_service.answering import Answer, AnswerBuilder, min_score_for
from qa_service.chunking import PassageSplitter
from qa_service.config import Settings
from qa_service.documents import Document
from qa_service.errors import (
    DocumentNotFoundError,
    IndexBusyError,
    IndexNotFoundError,
    IndexStaleError,
    QAError,
    ServiceBusyError,
    WritesDisabledError,
)
from qa_service.indexing import ProgressFactory, build_index, stale_reasons
from qa_service.lexicon import MODELS as LEXICON_MODELS
from qa_service.lexicon import Lexicon, words_of
from qa_service.retrieval import (
    DENSE_WEIGHT,
    LEXICAL_SUPPORT_COVERAGE,
    Filters,
    Mode,
    Retriever,
)
from qa_service.store import (
    IndexData,
    current_generation_name,
    index_lock,
    load_index,
    read_manifest,
)
from qa_service.transliteration import spellings
from qa_service.updates import DocumentUpdater, NewDocument, WriteMode, WriteResult

logger = logging.getLogger(__name__)


# How long a write waits for another writer (another request, `qa add`, `qa index`).
WRITE_LOCK_TIMEOUT = 60.0


@dataclass(frozen=True)
class TimedAnswer:
    answer: Answer
    took_ms: float
    # The documents of the index the answer came from: a write after it cannot remove them.
    documents: dict[str, Document]


@dataclass(frozen=True)
class _State:
    index: IndexData
    retriever: Retriever
    answers: AnswerBuilder
    acronyms: Acronyms
    lexicon: Lexicon | None  # for multilingual models (lexicon.py)


def load_configured_encoder(settings: Settings) -> Encoder:
    """The configured model on the configured backend; an ONNX export is cached beside the
    index, in `<index_dir>/models`."""
    return load_encoder(settings.model, settings.encoder_backend, settings.index_dir / "models")


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
            progress, settings.index_config(),
        )[0]  # fmt: skip

    # Under the lock: no write lands between the check and the load, and no writer deletes
    # the generation being read.
    with index_lock(settings.index_dir):
        try:
            manifest = read_manifest(settings.index_dir)
        except IndexNotFoundError:
            logger.info("no index in %s yet: building it from %s", settings.index_dir,
                        settings.corpus_dir)  # fmt: skip
            return rebuild()
        reasons = stale_reasons(
            manifest, encoder, splitter, settings.corpus_dir, settings.index_config(),
            settings.index_dir,
        )  # fmt: skip
        if reasons:
            if not settings.rebuild_stale_index:
                raise IndexStaleError(
                    f"the index in {settings.index_dir} is out of date: {'; '.join(reasons)}. "
                    "Run `qa index` to rebuild it."
                )
            logger.warning("rebuilding the index: %s", "; ".join(reasons))
            return rebuild()
        return load_index(settings.index_dir, settings.index_config())


class QAService:
    def __init__(
        self,
        encoder: Encoder,
        index: IndexData,
        min_score: float | None,
        top_k: int,
        mode: Mode = "hybrid",
        dense_weight: float = DENSE_WEIGHT,
        updater: DocumentUpdater | None = None,
        max_wait: float | None = None,
    ) -> None:
        """`min_score` None means the threshold calibrated for the model and each mode.

        Without an `updater` (an index folder to write to), document writes are refused.
        `max_wait` bounds a question's wait for the model (None: no bound).
        """
        self.encoder = encoder
        self.dense_weight = dense_weight
        self._state = self._new_state(index)
        # Seconds it took `from_settings` to load the model and the index ("model", "index").
        self.load_seconds: dict[str, float] = {}
        self.top_k = top_k
        self.mode: Mode = mode
        self._min_score = min_score
        # Concurrent requests share model calls (embeddings/batching.py).
        self.queries = QueryBatcher(encoder.encode_queries, max_wait=max_wait)
        self._updater = updater
        self._write_lock = threading.Lock()  # in-process writers; `index_lock` across processes

    def _new_state(self, index: IndexData, previous: _State | None = None) -> _State:
        if index.manifest.model != self.encoder.name:
            raise IndexStaleError(
                f"index built with {index.manifest.model} cannot be queried with "
                f"{self.encoder.name}"
            )
        lexicon = None
        if self.encoder.name in LEXICON_MODELS:
            started = time.perf_counter()
            known = previous.lexicon if previous is not None else None
            lexicon = Lexicon.build(index.documents.values(), self.encoder.encode_queries, known)
            logger.info(
                "lexicon of %d words ready in %.1f s",
                len(lexicon.words), time.perf_counter() - started,
            )  # fmt: skip
        return _State(
            index,
            Retriever(index, self.dense_weight),
            AnswerBuilder(index),
            Acronyms.from_definitions(index.acronyms.values()),
            lexicon,
        )

    @property
    def index(self) -> IndexData:
        """The live index; read it once per use, as a write may replace it at any time."""
        return self._state.index

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        encoder: Encoder | None = None,
        progress: ProgressFactory | None = None,
    ) -> QAService:
        started = time.perf_counter()
        loaded = encoder or load_configured_encoder(settings)
        model_seconds = time.perf_counter() - started
        index = ensure_index(settings, loaded, progress)
        updater = DocumentUpdater(
            settings.corpus_dir, settings.index_dir, loaded, make_splitter(settings, loaded),
            settings.batch_size, settings.index_config(),
        )  # fmt: skip
        service = cls(
            loaded, index, settings.min_score, settings.top_k, settings.mode,
            settings.dense_weight, updater, settings.max_wait_seconds,
        )  # fmt: skip
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
        diversity: float = 0.0,
    ) -> TimedAnswer:
        queries = None if query is None or query == question else [query]
        return self.ask_many([question], top_k, min_score, mode, filters, queries, diversity)[0]

    def ask_many(
        self,
        questions: Sequence[str],
        top_k: int | None = None,
        min_score: float | None = None,
        mode: Mode | None = None,
        filters: Filters | None = None,
        queries: Sequence[str] | None = None,
        diversity: float = 0.0,
    ) -> list[TimedAnswer]:
        """Answer several questions with one model call; `took_ms` is each one's share.

        `queries`, when given, is what to search for each question (a follow-up together with
        the questions before it); the answer sentence is still chosen for the question itself.
        """
        started = time.perf_counter()
        state = self._state  # one snapshot for the whole call
        mode = mode or self.mode
        threshold = self.threshold(mode) if min_score is None else min_score
        # What is searched: the question (or the follow-up's query) with the acronyms it uses
        # spelled out; the answer sentence is chosen for the question as asked.
        searched = [state.acronyms.expand(q) for q in (queries or questions)]
        if len(searched) != len(questions):
            raise ValueError("one query per question")
        texts = list(dict.fromkeys([*questions, *searched]))
        # Questions BM25 barely reads are also searched by their words' translations: the
        # words are encoded in the same model call.
        translated: list[str] = []
        if state.lexicon is not None and mode == "hybrid":
            coverage = state.retriever.lexical_coverage
            translated = [
                q for q in dict.fromkeys(searched) if coverage(q) < LEXICAL_SUPPORT_COVERAGE
            ]
        groups = [*(spellings(t) for t in texts), *(words_of(q) for q in translated)]
        encoded = self._encode_groups(groups)
        by_text = dict(zip(texts, encoded[: len(texts)], strict=True))
        vectors = [by_text[q] for q in questions]
        query_vectors = [by_text[q] for q in searched]
        translations = None
        if state.lexicon is not None and translated:
            words = encoded[len(texts) :]
            lexicon = state.lexicon
            found = {q: lexicon.translate(q, v) for q, v in zip(translated, words, strict=True)}
            translations = [found.get(q) for q in searched]
        k = top_k or self.top_k
        hits = state.retriever.retrieve(
            searched, query_vectors, k, mode, filters, diversity, translations
        )
        answers = [
            state.answers.build(q, v, h, threshold)
            for q, v, h in zip(questions, vectors, hits, strict=True)
        ]
        took_ms = (time.perf_counter() - started) * 1000 / max(len(questions), 1)
        return [TimedAnswer(a, took_ms, state.index.documents) for a in answers]

    def _encode_groups(self, groups: Sequence[Sequence[str]]) -> list[Vectors]:
        """One matrix per group of texts (a question's spellings, transliteration.py, or its
        words), all encoded in one model call."""
        flat = self._encode([t for group in groups for t in group])
        bounds = np.cumsum([0, *(len(group) for group in groups)])
        return [flat[a:b] for a, b in itertools.pairwise(bounds)]

    def _encode(self, texts: Sequence[str]) -> Vectors:
        try:
            return self.queries.encode(texts)
        except QueueTimeoutError as exc:
            raise ServiceBusyError(f"the model is busy: {exc}; try again shortly") from exc

    def documents(self, index: IndexData | None = None) -> list[Document]:
        """The documents of `index` (a snapshot taken with `self.index`), or of the live one."""
        return list((index or self.index).documents.values())

    # Writes. Each holds the in-process lock and the index folder's lock, first takes up a
    # generation another process (`qa add`, `qa index`) made current, and swaps the state only
    # once the new generation is durable.

    def add_documents(
        self, items: Sequence[tuple[str, NewDocument]], mode: WriteMode = "create"
    ) -> list[WriteResult]:
        """Add documents (`create`), or add or replace them (`upsert`)."""
        updater = self._require_updater()
        with self._writing():
            data, results = updater.write(self._state.index, items, mode)
            self._state = self._new_state(data, self._state)
        return results

    def remove_documents(self, ids: Sequence[str]) -> None:
        updater = self._require_updater()
        with self._writing():
            data = updater.remove(self._state.index, ids)
            self._state = self._new_state(data, self._state)

    def refresh(self) -> bool:
        """Take up a generation another process made current; true if there was one.

        Cheap when nothing changed (one readlink), so the server polls it.
        """
        if self._updater is None:
            return False
        index_dir = self._updater.index_dir
        if current_generation_name(index_dir) in (None, self._state.index.generation):
            return False
        try:
            with self._writing(timeout=0.5):
                pass  # `_writing` reloads
        except IndexBusyError:
            return False  # a writer is at work; the next check or write takes its result up
        return True

    def _require_updater(self) -> DocumentUpdater:
        if self._updater is None:
            raise WritesDisabledError("this service has no index folder to write to")
        return self._updater

    @contextmanager
    def _writing(self, timeout: float = WRITE_LOCK_TIMEOUT) -> Iterator[None]:
        updater = self._require_updater()
        if not self._write_lock.acquire(timeout=timeout):
            raise IndexBusyError("another write is in progress; try again shortly")
        try:
            with index_lock(updater.index_dir, timeout=timeout):
                self._reload_if_replaced(updater.index_dir)
                yield
        finally:
            self._write_lock.release()

    def _reload_if_replaced(self, index_dir: Path) -> None:
        current = current_generation_name(index_dir)
        if current is None or current == self._state.index.generation:
            return
        try:
            config = self._updater.index_config if self._updater else None
            state = self._new_state(load_index(index_dir, config), self._state)
        except QAError as exc:
            logger.error("not taking up the index generation %s: %s", current, exc)
            raise
        logger.info("took up index generation %s, written by another process", current)
        self._state = state

    def document(self, document_id: str) -> Document:
        try:
            return self.index.documents[document_id]
        except KeyError:
            raise DocumentNotFoundError(document_id) from None
