"""The incremental update: a new in-memory index with documents added, replaced or removed,
encoding only what is new."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from embeddings import Encoder
from embeddings.index import IndexConfig
from qa_service.corpus.acronyms import definitions
from qa_service.corpus.chunking import ChunkedDocument, Splitter
from qa_service.corpus.documents import Document
from qa_service.corpus.fingerprint import (
    fingerprint_of,
)
from qa_service.index.encode import EmbeddingCache, encode_documents
from qa_service.index.lexical import Analyzer, LexicalIndex
from qa_service.index.shard_lexical import TermCounts
from qa_service.index.store import (
    IndexData,
    new_manifest,
)

logger = logging.getLogger(__name__)


@dataclass
class TermCache:
    """BM25 terms of passage texts already analysed, so that an update re-analyses only new
    passages; entries not used by the latest update are dropped."""

    terms: dict[str, list[str]] = field(default_factory=dict)
    _analyzer: Analyzer = field(default_factory=Analyzer)

    def analyse(self, texts: Sequence[str]) -> list[list[str]]:
        result = [self.terms.get(t) or self._analyzer.terms(t) for t in texts]
        self.terms = dict(zip(texts, result, strict=True))
        return result


def indexed_texts(data: IndexData, splitter: Splitter) -> list[str]:
    """What each passage of `data` was encoded and BM25-indexed as, in passage order."""
    if not splitter.title_context:
        return [p.text for p in data.passages]
    texts: list[str] = []
    start = 0
    while start < len(data.passages):
        doc_id = data.passages[start].document_id
        end = start
        while end < len(data.passages) and data.passages[end].document_id == doc_id:
            end += 1
        chunked = ChunkedDocument(data.documents[doc_id], data.units[doc_id],
                                  data.passages[start:end])  # fmt: skip
        texts.extend(splitter.indexed_texts(chunked))
        start = end
    return texts


def update_index(
    data: IndexData,
    encoder: Encoder,
    splitter: Splitter,
    remove: Collection[str] = (),
    add: Sequence[Document] = (),
    files: Mapping[str, str] | None = None,
    terms: TermCache | None = None,
    batch_size: int = 32,
    index_config: IndexConfig | None = None,
    cache: EmbeddingCache | None = None,
) -> IndexData:
    """A new in-memory index: `data` without the documents `remove`, plus `add` (an added
    document replaces one with its id). `data` itself is not changed.

    Costs the encoding of the added documents' passages (fewer when a replaced version shares
    passages with them); the rest is copying: the kept vectors, and BM25 rebuilt over the
    cached terms of every passage.
    """
    gone = set(remove) | {d.id for d in add}
    kept_ids = [doc_id for doc_id in data.documents if doc_id not in gone]
    kept = [i for i, p in enumerate(data.passages) if p.document_id not in gone]
    cache = cache or EmbeddingCache(encoder.name)  # vectors encoded already (writes.prepare)
    cache.add_index(data, encoder, only=gone & data.documents.keys())  # a replaced version
    chunked = [splitter.split(d) for d in add]
    new_passages = [p for c in chunked for p in c.passages]
    new = encode_documents(
        chunked, splitter, encoder, cache, data.unit_vectors is not None,
        data.context_vectors is not None, batch_size,
    )  # fmt: skip
    unit_vectors = None
    if data.unit_vectors is not None and new.unit_vectors is not None:
        unit_parts = []
        for doc_id in kept_ids:
            start = data.unit_offsets[doc_id]
            unit_parts.append(data.unit_vectors[start : start + len(data.units[doc_id])])
        unit_vectors = np.concatenate([*unit_parts, new.unit_vectors])
    context_vectors = None
    if data.context_vectors is not None and new.context_vectors is not None:
        context_vectors = np.concatenate([data.context_vectors[kept], new.context_vectors])

    passages = [data.passages[i] for i in kept] + new_passages
    documents = {doc_id: data.documents[doc_id] for doc_id in kept_ids}
    documents.update((c.document.id, c.document) for c in chunked)
    units = {doc_id: data.units[doc_id] for doc_id in kept_ids}
    units.update((c.document.id, c.units) for c in chunked)
    acronyms = {doc_id: data.acronyms[doc_id] for doc_id in kept_ids}
    acronyms.update((c.document.id, definitions(c.document.text)) for c in chunked)
    old_texts = indexed_texts(data, splitter)
    texts = [old_texts[i] for i in kept] + new.texts
    analysed = (terms or TermCache()).analyse(texts)
    manifest = data.manifest
    fingerprint = manifest.corpus_fingerprint if files is None else fingerprint_of(files)
    return IndexData(
        documents=documents,
        units=units,
        acronyms=acronyms,
        passages=passages,
        vectors=data.vectors.updated(np.asarray(kept, dtype=np.int64), new.vectors, index_config),
        lexical=LexicalIndex.from_terms(analysed),
        unit_vectors=unit_vectors,
        manifest=new_manifest(
            model=manifest.model,
            dimension=manifest.dimension,
            corpus_fingerprint=fingerprint,
            passage_settings=manifest.passage_settings,
            documents=len(documents),
            passages=len(passages),
            corpus_files=manifest.corpus_files if files is None else dict(files),
        ),
        context_vectors=context_vectors,
        # A shard keeps its raw term counts, for the whole collection's BM25 (shard_lexical.py).
        term_counts=None if data.term_counts is None else TermCounts.from_terms(analysed),
    )
