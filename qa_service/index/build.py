"""Documents to an index: split, encode and save a corpus folder as a new generation."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embeddings import Encoder, VectorIndex
from embeddings.index import IndexConfig
from qa_service.corpus.acronyms import definitions
from qa_service.corpus.chunking import ChunkedDocument, PassageSplitter, Splitter
from qa_service.corpus.documents import Document, SkippedFile, load_corpus
from qa_service.corpus.fingerprint import (
    MEMO_FILE,
    corpus_files,
    fingerprint_of,
)
from qa_service.index.encode import (
    SENTENCE_VECTORS,
    EmbeddingCache,
    EncodedPassages,
    ProgressFactory,
    encode_documents,
    previous_index_cache,
)
from qa_service.index.lexical import Analyzer, LexicalIndex
from qa_service.index.shard_lexical import TermCounts
from qa_service.index.store import (
    IndexData,
    index_lock,
    new_manifest,
    save_index,
)
from qa_service.models import profile_for

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexSpec:
    """One index and how it is made: the corpus it is built from, where it lives, the model and
    splitting, and the vector index's settings. Every build, update and staleness check reads
    the same six."""

    corpus_dir: Path
    index_dir: Path
    encoder: Encoder
    splitter: Splitter
    batch_size: int = 32
    index_config: IndexConfig = field(default_factory=IndexConfig)


@dataclass(frozen=True)
class BuildReport:
    index_dir: Path
    documents: int
    passages: int
    skipped: list[SkippedFile]
    seconds: float


def context_weight(splitter: Splitter, model: str) -> float:
    """The weight of a passage read after the one before it; 0 when the model does not gain from
    it, or two passages would not fit one model input."""
    if not isinstance(splitter, PassageSplitter) or 2 * splitter.target_tokens > splitter.room:
        return 0.0
    return profile_for(model).preceding_context


def passage_settings(splitter: Splitter, model: str) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "splitter": type(splitter).__name__,
        "target_tokens": splitter.target_tokens,
        "overlap": splitter.overlap,
        "title_context": splitter.title_context,
        "sentence_vectors": SENTENCE_VECTORS,
    }
    weight = context_weight(splitter, model)
    if weight:  # otherwise absent, as in the indexes written before it existed
        settings["preceding_context"] = weight
    return settings


def index_documents(
    documents: Sequence[Document],
    encoder: Encoder,
    splitter: Splitter,
    fingerprint: str,
    batch_size: int = 32,
    progress: ProgressFactory | None = None,
    sentence_vectors: bool = True,
    cache: EmbeddingCache | None = None,
    files: Mapping[str, str] | None = None,
    index_config: IndexConfig | None = None,
) -> IndexData:
    """Split and encode documents into an in-memory index (nothing is written).

    Sentence vectors serve ranking (a passage scores as well as its best sentence) and the
    answer sentence; only the whole-document benchmark protocol (plain dense, as MTEB) skips them.
    """
    chunked: list[ChunkedDocument] = [splitter.split(d) for d in documents]
    settings = passage_settings(splitter, encoder.name)
    encoded = encode_documents(
        chunked, splitter, encoder, cache or EmbeddingCache(encoder.name), sentence_vectors,
        "preceding_context" in settings, batch_size, progress,
    )  # fmt: skip
    return assemble_index(
        chunked, encoded, encoder.name, encoder.dimension, settings, fingerprint, files,
        index_config,
    )  # fmt: skip


def assemble_index(
    chunked: Sequence[ChunkedDocument],
    encoded: EncodedPassages,
    model: str,
    dimension: int,
    settings: dict[str, Any],
    fingerprint: str,
    files: Mapping[str, str] | None = None,
    index_config: IndexConfig | None = None,
    shard: bool = False,
) -> IndexData:
    """The index of documents already split and encoded (in the same order), with `model`'s
    vectors and its `passage_settings`: a build encodes and assembles in one process, a
    distributed build encodes on many and assembles each `shard` on one (which also keeps its
    raw term counts)."""
    passages = [p for c in chunked for p in c.passages]
    analyzer = Analyzer()
    terms = [analyzer.terms(text) for text in encoded.texts]
    manifest = new_manifest(
        model=model,
        dimension=dimension,
        corpus_fingerprint=fingerprint,
        passage_settings=settings,
        documents=len(chunked),
        passages=len(passages),
        corpus_files=dict(files or {}),
    )
    return IndexData(
        documents={c.document.id: c.document for c in chunked},
        units={c.document.id: c.units for c in chunked},
        acronyms={c.document.id: definitions(c.document.text) for c in chunked},
        passages=passages,
        vectors=VectorIndex.build(encoded.vectors, config=index_config),
        lexical=LexicalIndex.from_terms(terms),
        unit_vectors=encoded.unit_vectors,
        manifest=manifest,
        context_vectors=encoded.context_vectors,
        term_counts=TermCounts.from_terms(terms) if shard else None,
    )


def build_index(
    spec: IndexSpec, progress: ProgressFactory | None = None, cache: EmbeddingCache | None = None
) -> tuple[IndexData, BuildReport]:
    """Index every readable file below the corpus folder into the index folder, replacing what
    was there.

    Holds the index lock throughout, so that no document write lands in between reading the
    corpus and saving; vectors of unchanged texts are taken from the index being replaced, and
    from `cache` (a write's documents, encoded already).
    """
    started = time.perf_counter()
    with index_lock(spec.index_dir):
        files = corpus_files(spec.corpus_dir, spec.index_dir / MEMO_FILE)
        loaded = load_corpus(spec.corpus_dir)
        if not loaded.documents:
            raise ValueError(f"no readable documents in {spec.corpus_dir}; nothing to index")
        cache = previous_index_cache(spec.index_dir, spec.encoder, cache)
        data = index_documents(
            loaded.documents, spec.encoder, spec.splitter, fingerprint_of(files), spec.batch_size,
            progress, cache=cache, files=files, index_config=spec.index_config,
        )  # fmt: skip
        save_index(spec.index_dir, data)
    if cache.reused:
        logger.info("reused %d vectors of the previous index; encoded %d texts",
                    cache.reused, cache.encoded)  # fmt: skip
    report = BuildReport(
        index_dir=spec.index_dir,
        documents=len(data.documents),
        passages=len(data.passages),
        skipped=loaded.skipped,
        seconds=time.perf_counter() - started,
    )
    logger.info(
        "indexed %d documents (%d passages) in %.1fs; skipped %d files",
        report.documents, report.passages, report.seconds, len(report.skipped),
    )  # fmt: skip
    return data, report
