"""Document writes: add, replace or remove documents in a live index without a rebuild.

The corpus folder stays the one source of truth. A write first encodes the document in memory
(nothing on disk changes if that fails), then stores its file in the corpus folder as
`<corpus>/<id><ext>` (written beside, fsynced, renamed into place, folder fsynced) and removes the
file(s) it replaces, then saves a new index generation with the corpus fingerprint updated for
exactly those files. Only then is the write acknowledged.

A crash before the corpus file is in place leaves the old state. A crash after it and before the
new generation is current leaves an index whose fingerprint no longer matches the corpus: the
start-up check rebuilds it from the corpus (re-encoding only the new document, see
`index/encode.EmbeddingCache`), which gives the new state. Either way, never a state in between, and
`qa index` rebuilds exactly what the writes produced.

Documents sent as JSON are kept as JSON documents (`corpus/documents.load_json`), so their title,
source and metadata survive a rebuild; an uploaded file is kept as it came.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from embeddings.files import fsync_dir, replace_file
from qa_service.corpus.documents import (
    LOADERS,
    METADATA_FILE,
    Document,
    DocumentLoadError,
    check_new_id,
    load_document,
    read_metadata,
)
from qa_service.corpus.fingerprint import MEMO_FILE, corpus_files, fingerprint_of
from qa_service.errors import (
    DocumentExistsError,
    DocumentNotFoundError,
    InvalidDocumentError,
    LastDocumentError,
    StorageError,
    UnsupportedDocumentTypeError,
)
from qa_service.index.build import IndexSpec, build_index
from qa_service.index.encode import EmbeddingCache, encode_documents
from qa_service.index.store import IndexData, save_index
from qa_service.index.update import TermCache, update_index

logger = logging.getLogger(__name__)

WriteMode = Literal["create", "upsert"]


@dataclass(frozen=True)
class NewDocument:
    """A document to write: the bytes kept in the corpus folder and their file type."""

    data: bytes
    suffix: str  # ".txt", ".md", ".html", ".pdf" or ".json"

    @classmethod
    def from_fields(
        cls,
        text: str,
        title: str | None = None,
        source: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> NewDocument:
        """A document given as fields (the API's JSON body), kept as a JSON document."""
        value: dict[str, Any] = {"text": text}
        value.update({k: v for k, v in (("title", title), ("source", source)) if v is not None})
        if metadata:
            value["metadata"] = dict(metadata)
        return cls(json.dumps(value, ensure_ascii=False, indent=1).encode(), ".json")


@dataclass(frozen=True)
class PreparedWrite:
    """Documents checked, loaded and encoded (`DocumentUpdater.prepare`), ready to commit."""

    items: list[tuple[str, NewDocument]]
    documents: list[Document]
    cache: EmbeddingCache  # their passages' and sentences' vectors


@dataclass(frozen=True)
class WriteResult:
    document: Document
    passages: int
    created: bool  # false when it replaced a document with its id


def document_files(corpus_dir: Path, doc_id: str) -> list[Path]:
    """The corpus files that load as document `doc_id` (normally one)."""
    relative = PurePosixPath(doc_id)
    folder = corpus_dir.joinpath(*relative.parent.parts)
    if not folder.is_dir():
        return []
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file()
        and not path.name.startswith(".")
        and path.with_suffix("").name == relative.name
        and path.relative_to(corpus_dir).as_posix() != METADATA_FILE
    )


def _make_folders(folder: Path) -> None:
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir()
        fsync_dir(path.parent)


def write_durably(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically: written beside it, fsynced, renamed, folder fsynced.
    The temporary file is hidden, so a crash leaves nothing the corpus loader would read."""
    _make_folders(path.parent)
    replace_file(path, data)


class _CorpusChange:
    """File changes in the corpus folder that can be undone if saving the index fails."""

    def __init__(self, corpus_dir: Path) -> None:
        self.corpus_dir = corpus_dir
        self._undo: list[tuple[Path, bytes | None]] = []  # path, bytes before (None: absent)

    def write(self, path: Path, data: bytes) -> None:
        self._undo.append((path, path.read_bytes() if path.exists() else None))
        write_durably(path, data)

    def remove(self, path: Path) -> None:
        self._undo.append((path, path.read_bytes()))
        path.unlink()
        fsync_dir(path.parent)

    def rollback(self) -> None:
        for path, before in reversed(self._undo):
            try:
                if before is None:
                    path.unlink(missing_ok=True)
                    fsync_dir(path.parent)
                else:
                    write_durably(path, before)
            except OSError:
                logger.exception("could not undo the change of %s", path)


class DocumentUpdater:
    """Applies document writes to one corpus folder and its index folder.

    The caller holds the index lock (`store.index_lock`) around each call, with `base` the
    current generation; every method returns the new index, already saved and current.
    """

    def __init__(self, spec: IndexSpec) -> None:
        self.spec = spec
        self._terms = TermCache()

    def prepare(
        self, base: IndexData, items: Sequence[tuple[str, NewDocument]], mode: WriteMode
    ) -> PreparedWrite:
        """Check, load and encode documents to add (`create`: an id in use is refused) or to
        add or replace (`upsert`), with nothing written. The caller need not hold the index
        lock: this is the slow part of a write, and other writes go on meanwhile.

        Every item is checked before anything is encoded: one bad item refuses them all.
        """
        documents = self._load(base, items, mode)
        spec = self.spec
        cache = EmbeddingCache(spec.encoder.name)
        # A replaced version's vectors serve the sentences it shares with the new one.
        cache.add_index(base, spec.encoder, only={d.id for d in documents} & base.documents.keys())
        chunked = [spec.splitter.split(d) for d in documents]
        encode_documents(
            chunked, spec.splitter, spec.encoder, cache, base.unit_vectors is not None,
            base.context_vectors is not None, spec.batch_size,
        )  # fmt: skip
        return PreparedWrite(list(items), documents, cache)

    def commit(
        self, base: IndexData, prepared: PreparedWrite, mode: WriteMode
    ) -> tuple[IndexData, list[WriteResult]]:
        """Write what `prepare` made, on `base`, the current generation (the caller holds the
        index lock): the corpus files, then a new generation. What changed since `prepare` (an
        id taken meanwhile, another document replaced) is checked again; what is not encoded
        yet is encoded now."""
        items, documents = prepared.items, prepared.documents
        ids = [doc_id for doc_id, _ in items]
        corpus_dir = self.spec.corpus_dir
        self._check_ids(base, ids, mode)
        targets = [corpus_dir / f"{doc_id}{new.suffix.lower()}" for doc_id, new in items]
        replaced = {doc_id: document_files(corpus_dir, doc_id) for doc_id in ids}
        files = self._files(base)
        data = None
        if files is not None:
            for paths in replaced.values():
                for path in paths:
                    files.pop(path.relative_to(corpus_dir).as_posix(), None)
            for (_, new), target in zip(items, targets, strict=True):
                digest = hashlib.sha256(new.data).hexdigest()
                files[target.relative_to(corpus_dir).as_posix()] = digest
            data = self._updated(base, files, add=documents, cache=prepared.cache)

        change = _CorpusChange(corpus_dir)
        try:
            for (doc_id, new), target in zip(items, targets, strict=True):
                change.write(target, new.data)
                for path in replaced[doc_id]:
                    if path != target:
                        change.remove(path)
            data = self._save(data, prepared.cache)
        except BaseException as exc:
            change.rollback()
            _raise_storage_error(exc)
            raise
        counts = data.passage_counts()
        results = [
            WriteResult(d, counts[d.id], created=d.id not in base.documents) for d in documents
        ]
        return data, results

    def remove(self, base: IndexData, ids: Sequence[str]) -> IndexData:
        """Remove documents and their files; every id must exist, or nothing changes."""
        for doc_id in ids:
            if doc_id not in base.documents:
                raise DocumentNotFoundError(doc_id)
        if not set(base.documents) - set(ids):
            raise LastDocumentError(
                "cannot remove every document: an index needs at least one; add another first"
            )
        corpus_dir = self.spec.corpus_dir
        paths = [
            path for doc_id in dict.fromkeys(ids) for path in document_files(corpus_dir, doc_id)
        ]
        files = self._files(base)
        data = None
        if files is not None:
            for path in paths:
                files.pop(path.relative_to(corpus_dir).as_posix(), None)
            data = self._updated(base, files, remove=set(ids))
        change = _CorpusChange(corpus_dir)
        try:
            for path in paths:
                change.remove(path)
            return self._save(data)
        except BaseException as exc:
            change.rollback()
            _raise_storage_error(exc)
            raise

    def _files(self, base: IndexData) -> dict[str, str] | None:
        """The corpus files the index was built from, or None when that is unknown: an index
        from before live updates whose corpus has changed since (then the write rebuilds)."""
        if base.manifest.corpus_files:
            return dict(base.manifest.corpus_files)
        spec = self.spec
        files = corpus_files(spec.corpus_dir, spec.index_dir / MEMO_FILE)
        return files if fingerprint_of(files) == base.manifest.corpus_fingerprint else None

    def _load(
        self, base: IndexData, items: Sequence[tuple[str, NewDocument]], mode: WriteMode
    ) -> list[Document]:
        ids = [doc_id for doc_id, _ in items]
        if len(set(ids)) != len(ids):
            raise InvalidDocumentError("the same document id is given twice")
        self._check_ids(base, ids, mode)
        corpus_dir = self.spec.corpus_dir
        metadata = read_metadata(corpus_dir) if (corpus_dir / METADATA_FILE).exists() else {}
        documents: list[Document] = []
        for doc_id, new in items:
            suffix = new.suffix.lower()
            if suffix not in LOADERS:
                raise UnsupportedDocumentTypeError(
                    f"unsupported file type {new.suffix or '(none)'!r}; supported: "
                    f"{', '.join(LOADERS)}"
                )
            relative = f"{doc_id}{suffix}"
            try:
                document = load_document(
                    new.data, suffix, doc_id, source=relative, metadata=metadata.get(doc_id)
                )
            except DocumentLoadError as exc:
                raise InvalidDocumentError(f"document {doc_id!r} cannot be read: {exc}") from exc
            documents.append(document)
        return documents

    def _check_ids(self, base: IndexData, ids: Sequence[str], mode: WriteMode) -> None:
        for doc_id in ids:
            exists = doc_id in base.documents
            if not exists and (problem := check_new_id(doc_id)) is not None:
                raise InvalidDocumentError(problem)
            if mode == "create" and (exists or document_files(self.spec.corpus_dir, doc_id)):
                raise DocumentExistsError(f"a document with id {doc_id!r} exists already")

    def _updated(
        self,
        base: IndexData,
        files: dict[str, str],
        add: Sequence[Document] = (),
        remove: set[str] | None = None,
        cache: EmbeddingCache | None = None,
    ) -> IndexData:
        spec = self.spec
        return update_index(
            base, spec.encoder, spec.splitter, remove=remove or set(), add=add, files=files,
            terms=self._terms, batch_size=spec.batch_size, index_config=spec.index_config,
            cache=cache,
        )  # fmt: skip

    def _save(self, data: IndexData | None, cache: EmbeddingCache | None = None) -> IndexData:
        """Save the updated index; None (its corpus files were unknown): rebuild the index from
        the corpus folder, which holds the change by now (with `cache`, the vectors encoded
        for it already)."""
        if data is None:
            logger.warning("the corpus changed since the index was built: rebuilding it")
            return build_index(self.spec, cache=cache)[0]
        save_index(self.spec.index_dir, data)
        return data


def _raise_storage_error(exc: BaseException) -> None:
    """An OSError while writing becomes a StorageError that says what could not be written."""
    if isinstance(exc, OSError) and not isinstance(exc, StorageError):
        where = f" {exc.filename}" if exc.filename else ""
        raise StorageError(
            f"the document could not be stored, nothing was changed: cannot write{where}: "
            f"{exc.strerror or exc}"
        ) from exc
