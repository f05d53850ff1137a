"""The question-answering service that the API and the CLI both drive: a thin facade over the
query pipeline and the document writer.

Its live state is one immutable `QueryPipeline` over one index generation, replaced by a single
reference assignment once a write's new generation is durable. A question reads it once, so it
sees the index wholly before or wholly after a write.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from embeddings import Encoder, EncoderBackend, Vectors, load_encoder
from embeddings.batching import QueryBatcher, QueueTimeoutError
from embeddings.factory import recorded_backend
from embeddings.reader import Reader
from qa_service.config import DEFAULT_MODEL, Settings
from qa_service.corpus.chunking import PassageSplitter, Span
from qa_service.corpus.documents import Document, DocumentHead
from qa_service.errors import (
    DocumentNotFoundError,
    IndexBusyError,
    IndexCorruptError,
    IndexNotFoundError,
    IndexReplacedError,
    IndexStaleError,
    QAError,
    ReadOnlyError,
    ServiceBusyError,
)
from qa_service.index.build import IndexSpec
from qa_service.index.encode import ProgressFactory
from qa_service.index.staleness import ensure_index, settings_reasons
from qa_service.index.store import (
    IndexData,
    current_generation_name,
    index_lock,
    load_index,
    read_manifest,
)
from qa_service.index.writes import DocumentUpdater, NewDocument, WriteMode, WriteResult
from qa_service.models import Mode, profile_for
from qa_service.query.answering import Answer
from qa_service.query.lexicon import cache_path, read_cached, save_cached
from qa_service.query.pipeline import AskOptions, Encode, QueryPipeline
from qa_service.query.reading import PassageReader
from qa_service.query.retrieval import DENSE_WEIGHT

logger = logging.getLogger(__name__)


# How long a write waits for another writer (another request, `qa add`, `qa index`).
WRITE_LOCK_TIMEOUT = 60.0


class FairLock:
    """A lock granted in the order it was asked for (`threading.Lock` promises no order), so
    that a write is never overtaken by later ones until its wait runs out."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._queue: deque[object] = deque()
        self._held = False

    def acquire(self, timeout: float) -> bool:
        ticket = object()
        with self._changed:
            self._queue.append(ticket)
            if not self._changed.wait_for(
                lambda: not self._held and self._queue[0] is ticket, timeout
            ):
                self._queue.remove(ticket)
                self._changed.notify_all()  # the next in line may be free to go now
                return False
            self._queue.popleft()
            self._held = True
            return True

    def release(self) -> None:
        with self._changed:
            self._held = False
            self._changed.notify_all()


@dataclass(frozen=True)
class Snapshot:
    """What a question reads: an index generation and the pipeline over it."""

    index: IndexData
    pipeline: QueryPipeline


@dataclass(frozen=True)
class TimedAnswer:
    answer: Answer
    took_ms: float
    # Documents the answer cites (at least), of the index it came from: a write after it
    # cannot remove them.
    documents: Mapping[str, DocumentHead]


def configured_model(settings: Settings) -> tuple[str, EncoderBackend]:
    """The model to load and its backend: QA_MODEL when set; otherwise the model the index was
    built with, so that every command reads an index with the model that wrote it; otherwise,
    for a new index, the product's default."""
    if settings.model is not None:
        return settings.model, settings.encoder_backend
    try:
        recorded = read_manifest(settings.index_dir).model
    except (IndexNotFoundError, IndexCorruptError):
        return DEFAULT_MODEL, settings.encoder_backend
    model, backend = recorded_backend(recorded)
    return model, backend or settings.encoder_backend


def load_configured_encoder(settings: Settings) -> Encoder:
    """The configured model (`configured_model`); an ONNX export is cached beside the index, in
    `<index_dir>/models`."""
    model, backend = configured_model(settings)
    return load_encoder(model, backend, settings.index_dir / "models")


def load_configured_reader(settings: Settings) -> PassageReader | None:
    """The reader the settings ask for (None when QA_READER is off); a missing or damaged model
    raises `ModelNotAvailableError` with the fix."""
    if not settings.reader:
        return None
    reader = Reader(settings.reader_dir) if settings.reader_dir else Reader()
    return PassageReader(reader, settings.reader_passages, settings.reader_min_score)


def make_splitter(settings: Settings, encoder: Encoder) -> PassageSplitter:
    return PassageSplitter(
        encoder, settings.passage_tokens, settings.passage_overlap, settings.title_context
    )


def index_spec(settings: Settings, encoder: Encoder) -> IndexSpec:
    return IndexSpec(
        settings.corpus_dir, settings.index_dir, encoder, make_splitter(settings, encoder),
        settings.batch_size, settings.index_config(),
    )  # fmt: skip


def ensure_configured_index(
    settings: Settings,
    encoder: Encoder,
    progress: ProgressFactory | None = None,
    owner: bool = True,
) -> IndexData:
    """The configured index, built first if there is none, rebuilt (or refused, with
    QA_REBUILD_STALE_INDEX=false) if it no longer fits the settings.

    Only its `owner` (`qa serve`) rebuilds it for another model or other settings; other
    commands refuse with the fix (`index/staleness.ensure_index`)."""
    spec = index_spec(settings, encoder)
    return ensure_index(spec, settings.rebuild_stale_index, progress, rebuild_for_settings=owner)


class Catalogue(Protocol):
    """What the API reads of the collection being served: an `IndexData`, or the shards'
    (`distributed/service.py`)."""

    @property
    def documents(self) -> Mapping[str, Document]: ...
    @property
    def units(self) -> Mapping[str, Sequence[Span]]: ...
    @property
    def passages(self) -> Sized: ...
    def passage_counts(self) -> dict[str, int]: ...
    def heads(self, ids: Iterable[str]) -> Mapping[str, DocumentHead]: ...


class AnsweringService(ABC):
    """What the API and the CLI drive: questions answered from a catalogue by a query pipeline.
    `QAService` serves one index and writes to it; the sharded service serves shards."""

    # Why writes are refused, where a subclass does not take them.
    read_only_reason = "this service does not take writes"

    def __init__(
        self,
        model: str,
        encode: Encode,
        min_score: float | None,
        top_k: int,
        mode: Mode,
        max_wait: float | None,
        reader: PassageReader | None,
    ) -> None:
        self.model = model
        self.top_k = top_k
        self.mode: Mode = mode
        self._min_score = min_score
        # Concurrent requests share model calls (embeddings/batching.py).
        self.queries = QueryBatcher(encode, max_wait=max_wait)
        self.reader = reader
        # Seconds it took to load the model and the index ("model", "index").
        self.load_seconds: dict[str, float] = {}
        # Why the collection served is not the one on disk (None: it is).
        self.index_problem: str | None = None

    @property
    @abstractmethod
    def index(self) -> Catalogue:
        """The live collection; read it once per use, as a write may replace it at any time."""

    @abstractmethod
    def _snapshot(self) -> tuple[Catalogue, QueryPipeline]:
        """What one call answers from, taken once: it sees the collection before or after a
        write, never a mix."""

    def _cited(self, catalogue: Catalogue, answers: Sequence[Answer]) -> Mapping[str, DocumentHead]:
        """What the answers' citations name of their documents (over shards, one call to each
        shard that holds some)."""
        return catalogue.heads(p.hit.passage.document_id for a in answers for p in a.passages)

    @property
    def min_score(self) -> float:
        """The abstention threshold of the default mode."""
        return self.threshold()

    def threshold(self, mode: Mode | None = None) -> float:
        if self._min_score is not None:
            return self._min_score
        return profile_for(self.model).min_score[mode or self.mode]

    def ask(
        self, question: str, options: AskOptions | None = None, query: str | None = None
    ) -> TimedAnswer:
        """Answer one question; `query`, when given, is what to search for it (a follow-up
        together with the questions before it)."""
        return self.ask_many([question], options, None if query is None else [query])[0]

    def ask_many(
        self,
        questions: Sequence[str],
        options: AskOptions | None = None,
        queries: Sequence[str] | None = None,
    ) -> list[TimedAnswer]:
        """Answer several questions with one model call; `took_ms` is each one's share."""
        started = time.perf_counter()
        options = options or AskOptions()
        catalogue, pipeline = self._snapshot()
        mode = options.mode or self.mode
        answers = pipeline.run(
            questions,
            questions if queries is None else queries,
            self._encode,
            k=options.top_k or self.top_k,
            mode=mode,
            threshold=self.threshold(mode) if options.min_score is None else options.min_score,
            filters=options.filters,
            diversity=options.diversity,
            reader=self.reader,
        )
        documents = self._cited(catalogue, answers)
        took_ms = (time.perf_counter() - started) * 1000 / max(len(questions), 1)
        return [TimedAnswer(a, took_ms, documents) for a in answers]

    def _encode(self, texts: Sequence[str]) -> Vectors:
        try:
            return self.queries.encode(texts)
        except QueueTimeoutError as exc:
            raise ServiceBusyError(f"the model is busy: {exc}; try again shortly") from exc

    def document(self, document_id: str) -> Document:
        try:
            return self.index.documents[document_id]
        except KeyError:
            raise DocumentNotFoundError(document_id) from None

    def add_documents(
        self, items: Sequence[tuple[str, NewDocument]], mode: WriteMode = "create"
    ) -> list[WriteResult]:
        """Add documents (`create`), or add or replace them (`upsert`)."""
        raise ReadOnlyError(self.read_only_reason)

    def remove_documents(self, ids: Sequence[str]) -> None:
        raise ReadOnlyError(self.read_only_reason)

    def refresh(self) -> bool:
        """Take up a collection another process wrote; true if there was one."""
        return False


class QAService(AnsweringService):
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
        reader: PassageReader | None = None,
        lexicon_cache: Path | None = None,
    ) -> None:
        """`min_score` None means the threshold calibrated for the model and each mode.
        `lexicon_cache` keeps the model's lexicon (query/lexicon.py) between loads.

        Without an `updater` (an index folder to write to), document writes are refused.
        `max_wait` bounds a question's wait for the model (None: no bound).
        """
        super().__init__(
            encoder.name, encoder.encode_queries, min_score, top_k, mode, max_wait, reader
        )
        self.encoder = encoder
        self.dense_weight = dense_weight
        self._lexicon_cache = lexicon_cache
        self._live = self._new_snapshot(index)
        self._updater = updater
        self._write_lock = FairLock()  # in-process writers; `index_lock` across processes
        # The generation another process made current that this one cannot serve, so that it
        # is reported once (`index_problem`), not at every check.
        self._refused_generation: str | None = None

    def _new_snapshot(self, index: IndexData, previous: QueryPipeline | None = None) -> Snapshot:
        if index.manifest.model != self.encoder.name:
            raise IndexStaleError(
                f"index built with {index.manifest.model} cannot be queried with "
                f"{self.encoder.name}"
            )
        path, known = self._lexicon_cache, None
        if previous is None and path is not None:
            known = read_cached(path, self.encoder.name)
        pipeline = QueryPipeline.over_index(
            index, self.encoder.encode_queries, self.dense_weight, previous, known
        )
        before = previous.lexicon if previous is not None else known
        if (
            path is not None
            and pipeline.lexicon is not None
            and (before is None or set(pipeline.lexicon.words) != set(before.words))
        ):
            try:
                save_cached(path, self.encoder.name, pipeline.lexicon)
            except OSError as exc:  # a cache: the next load builds it again
                logger.warning("cannot save the lexicon to %s: %s", path, exc)
        return Snapshot(index, pipeline)

    @property
    def index(self) -> IndexData:
        return self._live.index

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        encoder: Encoder | None = None,
        progress: ProgressFactory | None = None,
        owner: bool = True,
    ) -> QAService:
        """The service over the configured index; see `ensure_configured_index` for `owner`."""
        started = time.perf_counter()
        loaded = encoder or load_configured_encoder(settings)
        reader = load_configured_reader(settings)
        model_seconds = time.perf_counter() - started
        index = ensure_configured_index(settings, loaded, progress, owner)
        updater = DocumentUpdater(index_spec(settings, loaded))
        service = cls(
            loaded, index, settings.min_score, settings.top_k, settings.mode,
            settings.dense_weight, updater, settings.max_wait_seconds, reader,
            cache_path(settings.index_dir / "models", loaded.name),
        )  # fmt: skip
        if encoder is None:
            service.load_seconds["model"] = model_seconds
        service.load_seconds["index"] = time.perf_counter() - started - model_seconds
        return service

    def _snapshot(self) -> tuple[IndexData, QueryPipeline]:
        live = self._live
        return live.index, live.pipeline

    # Writes. Each holds the in-process lock and the index folder's lock, first takes up a
    # generation another process (`qa add`, `qa index`) made current, and swaps the state only
    # once the new generation is durable.

    def add_documents(
        self, items: Sequence[tuple[str, NewDocument]], mode: WriteMode = "create"
    ) -> list[WriteResult]:
        """Add documents (`create`), or add or replace them (`upsert`)."""
        updater = self._require_updater()
        # Encoded before the locks: a large document does not hold up the writes queued behind.
        prepared = updater.prepare(self.index, items, mode)
        with self._writing():
            data, results = updater.commit(self.index, prepared, mode)
            self._live = self._new_snapshot(data, self._live.pipeline)
        return results

    def remove_documents(self, ids: Sequence[str]) -> None:
        updater = self._require_updater()
        with self._writing():
            data = updater.remove(self.index, ids)
            self._live = self._new_snapshot(data, self._live.pipeline)

    def refresh(self) -> bool:
        """Take up a generation another process made current; true if there was one.

        Cheap when nothing changed (one readlink), so the server polls it.
        """
        if self._updater is None:
            return False
        index_dir = self._updater.spec.index_dir
        current = current_generation_name(index_dir)
        if current in (None, self.index.generation, self._refused_generation):
            return False
        try:
            with self._writing(timeout=0.5):
                pass  # `_writing` reloads
        except IndexBusyError:
            return False  # a writer is at work; the next check or write takes its result up
        except IndexReplacedError:
            return False  # logged once and kept in `index_problem`
        return True

    def _require_updater(self) -> DocumentUpdater:
        if self._updater is None:
            raise ReadOnlyError("this service has no index folder to write to")
        return self._updater

    @contextmanager
    def _writing(self, timeout: float = WRITE_LOCK_TIMEOUT) -> Iterator[None]:
        updater = self._require_updater()
        if not self._write_lock.acquire(timeout=timeout):
            raise IndexBusyError("another write is in progress; try again shortly")
        try:
            with index_lock(updater.spec.index_dir, timeout=timeout):
                self._reload_if_replaced(updater.spec)
                yield
        finally:
            self._write_lock.release()

    def _reload_if_replaced(self, spec: IndexSpec) -> None:
        """Take up the generation another process made current. One this service cannot serve
        (another model, other settings, damage) is refused: questions go on being answered from
        the generation it has, and writes, which would overwrite the other, are refused."""
        current = current_generation_name(spec.index_dir)
        if current is None or current == self.index.generation:
            return
        if current != self._refused_generation:
            try:
                data = load_index(spec.index_dir, spec.index_config)
                if problems := settings_reasons(data.manifest, spec):
                    raise IndexStaleError("; ".join(problems))
                live = self._new_snapshot(data, self._live.pipeline)
            except QAError as exc:
                self._refused_generation = current
                self.index_problem = (
                    f"another process made index generation {current} current, which this "
                    f"server cannot serve ({exc}); it answers from generation "
                    f"{self.index.generation} and refuses writes. Restart it with the settings "
                    "that index was built with, or rebuild the index with this server's "
                    "settings (`qa index`)."
                )
                logger.error("%s", self.index_problem)
            else:
                self._refused_generation = self.index_problem = None
                logger.info("took up index generation %s, written by another process", current)
                self._live = live
                return
        assert self.index_problem is not None
        raise IndexReplacedError(self.index_problem)
