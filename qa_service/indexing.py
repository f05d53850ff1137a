"""Corpus folder to saved index: load, split, encode, save; and whether a saved index is stale."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embeddings import Encoder, VectorIndex
from qa_service.chunking import ChunkedDocument, Splitter
from qa_service.documents import Document, SkippedFile, load_corpus
from qa_service.lexical import LexicalIndex
from qa_service.store import IndexData, Manifest, file_sha256, new_manifest, save_index

logger = logging.getLogger(__name__)

Progress = Callable[[int], None]
ProgressFactory = Callable[[str, int], Progress]


@dataclass(frozen=True)
class BuildReport:
    index_dir: Path
    documents: int
    passages: int
    skipped: list[SkippedFile]
    seconds: float


def passage_settings(splitter: Splitter) -> dict[str, Any]:
    return {
        "splitter": type(splitter).__name__,
        "target_tokens": splitter.target_tokens,
        "overlap": splitter.overlap,
        "title_context": splitter.title_context,
    }


def corpus_fingerprint(corpus_dir: Path) -> str:
    """Changes whenever a file below the corpus folder is added, removed, renamed or edited."""
    digest = hashlib.sha256()
    for path in sorted(p for p in corpus_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(corpus_dir).as_posix()
        if any(part.startswith(".") for part in Path(relative).parts):
            continue
        digest.update(relative.encode() + b"\0")
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def stale_reasons(
    manifest: Manifest, encoder: Encoder, splitter: Splitter, corpus_dir: Path
) -> list[str]:
    """Why a saved index no longer matches the configuration; empty when it does."""
    reasons = []
    if manifest.model != encoder.name or manifest.dimension != encoder.dimension:
        reasons.append(f"built with model {manifest.model}, configured {encoder.name}")
    if manifest.passage_settings != passage_settings(splitter):
        reasons.append(
            f"built with passage settings {manifest.passage_settings}, "
            f"configured {passage_settings(splitter)}"
        )
    if corpus_dir.is_dir() and manifest.corpus_fingerprint != corpus_fingerprint(corpus_dir):
        reasons.append(f"the files in {corpus_dir} changed since it was built")
    return reasons


def index_documents(
    documents: Sequence[Document],
    encoder: Encoder,
    splitter: Splitter,
    fingerprint: str,
    batch_size: int = 32,
    progress: ProgressFactory | None = None,
    sentence_vectors: bool = True,
) -> IndexData:
    """Split and encode documents into an in-memory index (nothing is written).

    Sentence vectors serve ranking (a passage scores as well as its best sentence) and the
    answer sentence; only the whole-document benchmark protocol (plain dense, as MTEB) skips them.
    """
    chunked: list[ChunkedDocument] = [splitter.split(d) for d in documents]
    passages = [p for c in chunked for p in c.passages]
    unit_texts = [c.document.text[a:b] for c in chunked for a, b in c.units]

    def encode(label: str, texts: list[str]) -> np.ndarray:
        on_batch = progress(label, len(texts)) if progress else None
        return encoder.encode_passages(texts, batch_size=batch_size, on_batch=on_batch)

    indexed_texts = [t for c in chunked for t in splitter.indexed_texts(c)]
    passage_vectors = encode("passages", indexed_texts)
    unit_vectors = encode("sentences", unit_texts) if sentence_vectors else None
    manifest = new_manifest(
        model=encoder.name,
        dimension=encoder.dimension,
        corpus_fingerprint=fingerprint,
        passage_settings=passage_settings(splitter),
        documents=len(chunked),
        passages=len(passages),
    )
    return IndexData(
        documents={c.document.id: c.document for c in chunked},
        units={c.document.id: c.units for c in chunked},
        passages=passages,
        vectors=VectorIndex.build(passage_vectors),
        lexical=LexicalIndex.build(indexed_texts),
        unit_vectors=unit_vectors,
        manifest=manifest,
    )


def build_index(
    corpus_dir: Path,
    index_dir: Path,
    encoder: Encoder,
    splitter: Splitter,
    batch_size: int = 32,
    progress: ProgressFactory | None = None,
) -> tuple[IndexData, BuildReport]:
    """Index every readable file below `corpus_dir` into `index_dir`, replacing what was there."""
    started = time.perf_counter()
    fingerprint = corpus_fingerprint(corpus_dir)
    loaded = load_corpus(corpus_dir)
    if not loaded.documents:
        raise ValueError(f"no readable documents in {corpus_dir}; nothing to index")
    data = index_documents(loaded.documents, encoder, splitter, fingerprint, batch_size, progress)
    save_index(index_dir, data)
    report = BuildReport(
        index_dir=index_dir,
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
