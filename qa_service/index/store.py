"""The index folder: vectors, passage table and manifest, written atomically and verified on load.

Layout: `<index_dir>/generations/<name>/` holds one complete index; `<index_dir>/current` is a
symlink to the live generation. A build writes a new generation and then swaps the symlink with
one atomic rename, so a crash at any moment leaves the previous index (or none) in place, never a
half-written one.

Writers (a build, `qa index`, a document write through the API or `qa add`) hold `index_lock`:
a lock per index folder within the process and a file lock on `<index_dir>/.lock` across
processes, so that no two writers interleave and no reader loads a generation being deleted.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from embeddings import IndexFormatError, VectorIndex, Vectors
from embeddings.files import file_sha256, fsync_dir, locked
from embeddings.index import IndexConfig, check_params
from qa_service.corpus.acronyms import Definition, definitions
from qa_service.corpus.chunking import Passage, Span
from qa_service.corpus.documents import Document, DocumentHead
from qa_service.errors import IndexBusyError, IndexCorruptError, IndexNotFoundError
from qa_service.index.lexical import LexicalIndex
from qa_service.index.shard_lexical import TermCounts

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
_DOCUMENTS = "documents.jsonl"
_PASSAGES = "passages.jsonl"
_VECTORS = "passages.faiss"
_UNIT_VECTORS = "units.npy"
_CONTEXT_VECTORS = "contexts.npy"
_LEXICAL = "bm25"
_TERM_COUNTS = "terms"
_CURRENT = "current"
_GENERATIONS = "generations"
_LOCK = ".lock"


@dataclass(frozen=True)
class Manifest:
    format_version: int
    model: str
    dimension: int
    corpus_fingerprint: str
    passage_settings: dict[str, Any]
    created_at: str
    documents: int
    passages: int
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    # Corpus file (path below the corpus folder) -> sha256, as indexed; `corpus_fingerprint` is
    # their digest. Kept so that a document write can update the fingerprint without hashing
    # the whole corpus. Empty in indexes written before live updates.
    corpus_files: dict[str, str] = field(default_factory=dict)
    # The passage vector index: its kind and build parameters (`VectorIndex.params`). Indexes
    # written before approximate search have none: they are flat.
    vector_index: dict[str, Any] = field(default_factory=lambda: {"kind": "flat"})

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class IndexData:
    """A whole index in memory: what `save_index` writes and `load_index` returns."""

    documents: dict[str, Document]
    # Sentence units per document; unit vectors are stored in the same order, document by document.
    units: dict[str, list[Span]]
    acronyms: dict[str, list[Definition]]  # the acronyms each document defines (acronyms.py)
    passages: list[Passage]  # a passage's position is its id in the vector index
    vectors: VectorIndex
    lexical: LexicalIndex
    unit_vectors: Vectors | None  # None when built without sentence vectors (benchmarks)
    manifest: Manifest
    generation: str | None = None  # name of the generation folder it was loaded from or saved as
    # Each passage's vector read after the passage before it, for models that gain from it
    # (their profile in models.py); None otherwise.
    context_vectors: Vectors | None = None
    # A shard's raw BM25 term counts, for scoring with the whole collection's statistics
    # (shard_lexical.py); None in an index that is not a shard.
    term_counts: TermCounts | None = None
    unit_offsets: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.unit_offsets = {}
        offset = 0
        for doc_id in self.documents:
            self.unit_offsets[doc_id] = offset
            offset += len(self.units[doc_id])
        if self.unit_vectors is not None and offset != len(self.unit_vectors):
            raise IndexCorruptError(f"{offset} sentence units but {len(self.unit_vectors)} vectors")
        for vectors in (self.vectors, self.context_vectors):
            if vectors is not None and len(self.passages) != len(vectors):
                raise IndexCorruptError(f"{len(self.passages)} passages but {len(vectors)} vectors")

    @cached_property
    def passage_ids(self) -> dict[str, list[int]]:
        """Each document's passage ids (positions in the vector index), in order, made on first
        use: a filter or a count then costs a pass over documents, not over every passage."""
        with gc_paused():
            ids: dict[str, list[int]] = {doc_id: [] for doc_id in self.documents}
            for i, passage in enumerate(self.passages):
                ids[passage.document_id].append(i)
        return ids

    def passage_counts(self) -> dict[str, int]:
        return {doc_id: len(ids) for doc_id, ids in self.passage_ids.items()}

    def heads(self, ids: Iterable[str]) -> dict[str, DocumentHead]:
        """What a listing or a citation names of these documents; ids not held are left out."""
        return {i: self.documents[i].head for i in ids if i in self.documents}

    def unit_rows(self, passage: Passage) -> range:
        offset = self.unit_offsets[passage.document_id]
        return range(offset + passage.first_unit, offset + passage.last_unit)


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector paused while many objects without cycles are made: each of
    its passes would scan the whole growing heap (loading 200k passages: 4.2 -> 3.0 s)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# orjson: parsing the passage and document tables is most of loading a large index, and it
# parses them about 2.5 times as fast as the standard library.
def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("wb") as f:
        for row in rows:
            f.write(orjson.dumps(row) + b"\n")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open("rb") as f:
        return [orjson.loads(line) for line in f if line.strip()]


def save_index(index_dir: Path, data: IndexData) -> Path:
    """Write `data` as a new generation and make it current; returns the generation folder.

    When it returns, the new generation is on disk (files, folders and the `current` link
    fsynced): a crash from then on cannot lose it.
    """
    with index_lock(index_dir):
        return _save_index(index_dir, data)


def _save_index(index_dir: Path, data: IndexData) -> Path:
    generations = index_dir / _GENERATIONS
    generations.mkdir(parents=True, exist_ok=True)
    name = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    staging = generations / f".{name}.partial"
    staging.mkdir()

    _write_jsonl(
        staging / _DOCUMENTS,
        [
            {
                "id": d.id,
                "title": d.title,
                "source": d.source,
                "metadata": d.metadata,
                "page_starts": list(d.page_starts),
                "units": data.units[d.id],
                "acronyms": data.acronyms[d.id],
                "text": d.text,
            }
            for d in data.documents.values()
        ],
    )
    _write_jsonl(
        staging / _PASSAGES,
        [{k: v for k, v in asdict(p).items() if k != "text"} for p in data.passages],
    )
    data.vectors.save(staging / _VECTORS)
    if data.unit_vectors is not None:
        np.save(staging / _UNIT_VECTORS, data.unit_vectors)
    if data.context_vectors is not None:
        np.save(staging / _CONTEXT_VECTORS, data.context_vectors)
    (staging / _LEXICAL).mkdir()
    data.lexical.save(staging / _LEXICAL)
    if data.term_counts is not None:
        data.term_counts.save(staging / _TERM_COUNTS)

    files = {
        path.relative_to(staging).as_posix(): file_sha256(path)
        for path in sorted(staging.rglob("*"))
        if path.is_file()
    }
    manifest = Manifest(
        **{**asdict(data.manifest), "files": files, "vector_index": data.vectors.params}
    )
    (staging / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2), encoding="utf-8")
    for path in staging.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    fsync_dir(staging / _LEXICAL)
    if data.term_counts is not None:
        fsync_dir(staging / _TERM_COUNTS)
    fsync_dir(staging)

    final = generations / name
    staging.rename(final)
    fsync_dir(generations)  # the rename is durable before `current` can point to it
    link = index_dir / f".{_CURRENT}.{uuid.uuid4().hex[:8]}"
    link.symlink_to(Path(_GENERATIONS) / name)
    link.replace(index_dir / _CURRENT)  # the atomic step
    fsync_dir(index_dir)
    data.manifest = manifest
    data.generation = name
    _remove_old_generations(generations, keep=name)
    return final


def _remove_old_generations(generations: Path, keep: str) -> None:
    for path in generations.iterdir():
        if path.name != keep:
            shutil.rmtree(path, ignore_errors=True)


class _IndexLock:
    """Re-entrant within a thread; the file lock is taken by the outermost holder only (two
    fcntl locks of one process on the same file would block each other)."""

    def __init__(self) -> None:
        self.thread_lock = threading.RLock()
        self.depth = 0


_LOCKS: dict[Path, _IndexLock] = {}
_LOCKS_GUARD = threading.Lock()


@contextmanager
def index_lock(index_dir: Path, timeout: float | None = None) -> Iterator[None]:
    """Hold the index folder's writer lock; IndexBusyError after `timeout` seconds (None: wait)."""
    index_dir.mkdir(parents=True, exist_ok=True)
    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault(index_dir.resolve(), _IndexLock())
    deadline = None if timeout is None else time.monotonic() + timeout
    busy = f"another process or request is writing the index in {index_dir}; try again shortly"
    if not lock.thread_lock.acquire(timeout=-1 if timeout is None else timeout):
        raise IndexBusyError(busy)
    try:
        with ExitStack() as held:
            if lock.depth == 0:
                left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                try:
                    held.enter_context(locked(index_dir / _LOCK, left))
                except TimeoutError:
                    raise IndexBusyError(busy) from None
            lock.depth += 1
            try:
                yield
            finally:
                lock.depth -= 1
    finally:
        lock.thread_lock.release()


def current_generation_name(index_dir: Path) -> str | None:
    """Name of the live generation (one readlink: cheap enough to poll), None without an index."""
    try:
        return Path(os.readlink(index_dir / _CURRENT)).name
    except OSError:
        return None


def current_generation(index_dir: Path) -> Path:
    current = index_dir / _CURRENT
    if not current.exists():
        raise IndexNotFoundError(f"no index in {index_dir}: build one with `qa index`")
    return current.resolve()


def read_manifest(index_dir: Path) -> Manifest:
    path = current_generation(index_dir) / MANIFEST
    try:
        return Manifest.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise IndexCorruptError(f"unreadable manifest {path}: {exc}") from exc


def load_index(index_dir: Path, config: IndexConfig | None = None) -> IndexData:
    """Load and verify the current index; any damage raises IndexCorruptError.

    The vectors are memory-mapped (paged in on use); `config` gives the search-time settings
    (HNSW's ef_search), which need no rebuild.
    """
    manifest = read_manifest(index_dir)
    folder = current_generation(index_dir)
    if manifest.format_version != FORMAT_VERSION:
        raise IndexCorruptError(
            f"index format {manifest.format_version} in {folder}; this version reads "
            f"{FORMAT_VERSION}"
        )
    try:
        check_params(manifest.vector_index)
    except IndexFormatError as exc:
        raise IndexCorruptError(f"cannot read the index in {folder}: {exc}") from exc
    for name, expected in manifest.files.items():
        path = folder / name
        if not path.exists() or file_sha256(path) != expected:
            raise IndexCorruptError(f"{path} is missing or does not match its checksum")
    try:
        with gc_paused():  # hundreds of thousands of passages: no cycles among them
            documents: dict[str, Document] = {}
            units: dict[str, list[Span]] = {}
            acronyms: dict[str, list[Definition]] = {}
            for row in _read_jsonl(folder / _DOCUMENTS):
                units[row["id"]] = [(int(a), int(b)) for a, b in row.pop("units")]
                found = row.pop("acronyms", None)  # None: saved before acronyms were kept
                acronyms[row["id"]] = (
                    definitions(row["text"]) if found is None else [(s, f) for s, f in found]
                )
                row["page_starts"] = tuple(row["page_starts"])
                documents[row["id"]] = Document(**row)
            passages = []
            for row in _read_jsonl(folder / _PASSAGES):
                text = documents[row["document_id"]].text[row["start"] : row["end"]]
                passages.append(Passage(text=text, **row))
        vectors = VectorIndex.load(
            folder / _VECTORS, manifest.dimension, manifest.vector_index, config
        )
        lexical = LexicalIndex.load(folder / _LEXICAL)
        unit_vectors = _mapped(folder / _UNIT_VECTORS)
        context_vectors = _mapped(folder / _CONTEXT_VECTORS)
        terms = folder / _TERM_COUNTS
        term_counts = TermCounts.load(terms) if terms.is_dir() else None
    except (OSError, ValueError, TypeError, KeyError, IndexFormatError) as exc:
        raise IndexCorruptError(f"cannot read the index in {folder}: {exc}") from exc
    return IndexData(
        documents, units, acronyms, passages, vectors, lexical, unit_vectors, manifest, folder.name,
        context_vectors, term_counts,
    )  # fmt: skip


def _mapped(path: Path) -> Vectors | None:
    """The array saved at `path`, memory-mapped like the passage vectors; None if there is none.

    A generation's files are never rewritten in place (a write makes a new generation, and
    removing the old one keeps mapped pages readable until unmapped). A plain ndarray view of
    the map: every slice of a `np.memmap` runs Python hooks.
    """
    return np.load(path, mmap_mode="r").view(np.ndarray) if path.exists() else None


def new_manifest(
    model: str, dimension: int, corpus_fingerprint: str, passage_settings: dict[str, Any],
    documents: int, passages: int, corpus_files: dict[str, str] | None = None,
) -> Manifest:  # fmt: skip
    return Manifest(
        format_version=FORMAT_VERSION,
        model=model,
        dimension=dimension,
        corpus_fingerprint=corpus_fingerprint,
        passage_settings=passage_settings,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        documents=documents,
        passages=passages,
        corpus_files=dict(corpus_files or {}),
    )
