"""Passages to vectors: each passage encoded once, its sentences' vectors read off that same
forward pass (late chunking), so a sentence carries its passage's context.

Vectors are looked up before anything is encoded (`EmbeddingCache`): a rebuild takes them from
the index it replaces, so that `qa index` after a few files changed, or the rebuild at start-up
after a crash, re-encodes only the passages whose text is new or that hold a sentence read in a
changed passage.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np

from embeddings import Encoder
from qa_service.corpus.chunking import ChunkedDocument, Passage, PassageSplitter, Span, Splitter
from qa_service.errors import IndexCorruptError, IndexNotFoundError
from qa_service.index.store import (
    IndexData,
    load_index,
)

logger = logging.getLogger(__name__)

Progress = Callable[[int], None]
ProgressFactory = Callable[[str, int], Progress]

SENTENCE_VECTORS = "in passage context"


def _text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:16]


@dataclass(frozen=True)
class Window:
    """A passage as the model reads it: the text encoded for it, and the sentences (units,
    numbered across the documents being encoded) it holds, as spans of that text."""

    text: str
    units: range
    spans: list[Span]


def document_windows(
    chunked: ChunkedDocument, texts: Sequence[str], first_unit: int = 0
) -> list[Window]:
    """The windows of a document's passages, `texts` being what is encoded for each."""
    result = []
    for passage, text in zip(chunked.passages, texts, strict=True):
        shift = len(text) - len(passage.text) - passage.start  # after the title, if any
        units = chunked.units[passage.first_unit : passage.last_unit]
        numbers = range(first_unit + passage.first_unit, first_unit + passage.last_unit)
        result.append(Window(text, numbers, [(a + shift, b + shift) for a, b in units]))
    return result


def context_texts(chunked: ChunkedDocument, texts: Sequence[str]) -> list[str | None]:
    """What is encoded for each passage read after the one before it: the text from that one's
    start to this one's end (after the title, if `texts` have it); None for the first."""
    result: list[str | None] = [None] if chunked.passages else []
    for (before, passage), text in zip(pairwise(chunked.passages), texts[1:], strict=True):
        title = text[: len(text) - len(passage.text)]
        result.append(title + chunked.document.text[before.start : passage.end])
    return result


def all_windows(chunked: Sequence[ChunkedDocument], splitter: Splitter) -> list[Window]:
    """The windows of several documents, their units numbered in document order."""
    result: list[Window] = []
    first = 0
    for c in chunked:
        result.extend(document_windows(c, splitter.indexed_texts(c), first))
        first += len(c.units)
    return result


def _unit_keys(windows: Sequence[Window], unit_texts: Sequence[str]) -> list[bytes]:
    """Cache keys of the units' vectors: one names every window a unit is read in (and where),
    so that it changes with any of them; a unit no window holds is keyed by its text."""
    parts: list[list[bytes]] = [[] for _ in unit_texts]
    for window in windows:
        key = _text_key(window.text)
        for unit, (a, b) in zip(window.units, window.spans, strict=True):
            parts[unit].append(key + a.to_bytes(4, "little") + b.to_bytes(4, "little"))
    return [
        hashlib.sha256(b"".join(p)).digest()[:16] if p else _text_key(text)
        for p, text in zip(parts, unit_texts, strict=True)
    ]


@dataclass
class EmbeddingCache:
    """Vectors already encoded by one model: a passage's by a hash of its text, a sentence's by
    a hash of the windows it was read in.

    Vectors taken from an index (`add_index`) wait in `previous` until a text asks for them, so
    that `reused` counts exactly the vectors a build did not have to encode again."""

    model: str
    vectors: dict[bytes, np.ndarray] = field(default_factory=dict)
    previous: dict[bytes, np.ndarray] = field(default_factory=dict)
    reused: int = 0  # vectors of `previous` used
    encoded: int = 0  # texts run through the model

    def encode(
        self,
        texts: Sequence[str],
        encoder: Encoder,
        batch_size: int = 32,
        on_batch: Progress | None = None,
    ) -> np.ndarray:
        """Vectors of `texts`, encoding only the ones not cached yet."""
        self._check(encoder)
        keys = [_text_key(t) for t in texts]
        self._take_previous(keys)
        missing = list(dict.fromkeys(k for k in keys if k not in self.vectors))
        if missing:
            wanted = set(missing)
            first = {k: t for k, t in zip(keys, texts, strict=True) if k in wanted}
            encoded = encoder.encode_passages(
                [first[k] for k in missing], batch_size=batch_size, on_batch=on_batch
            )
            self.vectors.update(zip(missing, encoded, strict=True))
        self.encoded += len(missing)
        return self._stack(keys, encoder)

    def encode_windows(
        self,
        windows: Sequence[Window],
        unit_texts: Sequence[str],
        encoder: Encoder,
        batch_size: int = 32,
        progress: Callable[[int], Progress] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The passage vector of each window, and each unit's vector as read in its windows
        (late chunking: the mean over the windows holding it, normalised), from one forward
        pass per window. Only windows whose text, or one of whose units, is new are encoded;
        `progress` is told how many before they are."""
        self._check(encoder)
        passage_keys = [_text_key(w.text) for w in windows]
        unit_keys = _unit_keys(windows, unit_texts)
        self._take_previous([*passage_keys, *unit_keys])
        missing = {k for k in unit_keys if k not in self.vectors}
        needed = [
            i for i, w in enumerate(windows)
            if passage_keys[i] not in self.vectors or any(unit_keys[u] in missing for u in w.units)
        ]  # fmt: skip
        reads: dict[tuple[bytes, tuple[Span, ...]], int] = {}  # identical windows read once
        for i in needed:
            reads.setdefault((passage_keys[i], tuple(windows[i].spans)), i)
        rows = {read: row for row, read in enumerate(reads)}
        encoded, in_context = encoder.encode_in_context(
            [windows[i].text for i in reads.values()],
            [windows[i].spans for i in reads.values()],
            batch_size=batch_size,
            on_batch=progress(len(reads)) if progress else None,
        )
        sums: dict[bytes, np.ndarray] = {}
        for i in needed:
            row = rows[passage_keys[i], tuple(windows[i].spans)]
            self.vectors[passage_keys[i]] = encoded[row]
            for unit, vector in zip(windows[i].units, in_context[row], strict=True):
                key = unit_keys[unit]
                if key in missing and vector.any():  # zero: cut off by the input limit
                    sums[key] = sums[key] + vector if key in sums else vector.copy()
        for key, total in sums.items():
            self.vectors[key] = total / max(float(np.linalg.norm(total)), 1e-12)
        # A unit read in no window is encoded on its own.
        alone = {k: t for k, t in zip(unit_keys, unit_texts, strict=True)
                 if k in missing and k not in sums}  # fmt: skip
        if alone:
            vectors = encoder.encode_passages(list(alone.values()), batch_size=batch_size)
            self.vectors.update(zip(alone, vectors, strict=True))
        self.encoded += len(reads) + len(alone)
        return self._stack(passage_keys, encoder), self._stack(unit_keys, encoder)

    def _take_previous(self, keys: Iterable[bytes]) -> None:
        for key in keys:
            if key not in self.vectors and key in self.previous:
                self.vectors[key] = self.previous.pop(key)
                self.reused += 1

    def _check(self, encoder: Encoder) -> None:
        if encoder.name != self.model:
            raise ValueError(f"cache of {self.model} used with {encoder.name}")

    def _stack(self, keys: Sequence[bytes], encoder: Encoder) -> np.ndarray:
        if not keys:
            return np.empty((0, encoder.dimension), dtype=np.float32)
        return np.stack([self.vectors[k] for k in keys]).astype(np.float32, copy=False)

    def add_index(
        self, data: IndexData, encoder: Encoder, only: Collection[str] | None = None
    ) -> None:
        """Take the vectors of an index built with the same model (of `only` those documents)."""
        if data.manifest.model != self.model or data.manifest.dimension != encoder.dimension:
            return
        title_context = bool(data.manifest.passage_settings.get("title_context"))
        spanner = PassageSplitter(encoder, 16, 0, title_context) if title_context else None
        wanted = set(data.documents if only is None else only)
        by_document = _positions_by_document(data.passages, wanted)
        in_context = data.manifest.passage_settings.get("sentence_vectors") == SENTENCE_VECTORS
        for doc_id in wanted & data.documents.keys():
            document, units = data.documents[doc_id], data.units[doc_id]
            positions = by_document.get(doc_id, [])
            passages = [data.passages[i] for i in positions]
            chunked = ChunkedDocument(document, units, passages)
            texts = spanner.indexed_texts(chunked) if spanner else [p.text for p in passages]
            if positions:
                vectors = data.vectors.vectors(np.asarray(positions, dtype=np.int64))
                self.previous.update(zip(map(_text_key, texts), vectors, strict=True))
            if positions and data.context_vectors is not None:
                contexts = context_texts(chunked, texts)
                self.previous.update(
                    (_text_key(text), data.context_vectors[i])
                    for i, text in zip(positions, contexts, strict=True)
                    if text is not None
                )
            if data.unit_vectors is not None and in_context:
                unit_texts = [document.text[a:b] for a, b in units]
                keys = _unit_keys(document_windows(chunked, texts), unit_texts)
                offset = data.unit_offsets[doc_id]
                vectors = data.unit_vectors[offset : offset + len(units)]
                self.previous.update(zip(keys, vectors, strict=True))


def _positions_by_document(
    passages: Sequence[Passage], wanted: Collection[str]
) -> dict[str, list[int]]:
    positions: dict[str, list[int]] = {}
    for i, passage in enumerate(passages):
        if passage.document_id in wanted:
            positions.setdefault(passage.document_id, []).append(i)
    return positions


def previous_index_cache(
    index_dir: Path, encoder: Encoder, cache: EmbeddingCache | None = None
) -> EmbeddingCache:
    """`cache` (or a new one) with the vectors of the index in `index_dir`, if there is one,
    it is readable and built with this model."""
    cache = cache or EmbeddingCache(encoder.name)
    try:
        cache.add_index(load_index(index_dir), encoder)
    except IndexNotFoundError:
        pass  # a first build: nothing to reuse, nothing to say
    except IndexCorruptError as exc:
        logger.warning("no vectors to reuse from %s: %s", index_dir, exc)
    return cache


@dataclass(frozen=True)
class EncodedPassages:
    texts: list[str]  # what was encoded and BM25-indexed for each passage
    vectors: np.ndarray
    unit_vectors: np.ndarray | None  # each sentence's, read in its passages
    context_vectors: np.ndarray | None  # each passage's, read after the one before it

    def split(self, chunked: Sequence[ChunkedDocument]) -> list[EncodedPassages]:
        """Per document of `chunked` (what was encoded, in order): the parts `concatenate`
        joins again."""
        parts = []
        passage = unit = 0
        for c in chunked:
            rows = slice(passage, passage + len(c.passages))
            units = slice(unit, unit + len(c.units))
            parts.append(EncodedPassages(
                self.texts[rows],
                self.vectors[rows],
                None if self.unit_vectors is None else self.unit_vectors[units],
                None if self.context_vectors is None else self.context_vectors[rows],
            ))  # fmt: skip
            passage, unit = rows.stop, units.stop
        return parts

    @classmethod
    def concatenate(cls, parts: Sequence[EncodedPassages]) -> EncodedPassages:
        """Parts encoded separately (whole documents each), in order: what encoding their
        documents together gives, since no vector depends on another document."""
        if not parts:
            raise ValueError("nothing to concatenate")

        def stacked(arrays: list[np.ndarray | None]) -> np.ndarray | None:
            present = [a for a in arrays if a is not None]
            if len(present) not in (0, len(arrays)):
                raise ValueError("parts encoded with different settings")
            return np.concatenate(present) if present else None

        vectors = stacked([p.vectors for p in parts])
        assert vectors is not None
        return cls(
            [t for p in parts for t in p.texts],
            vectors,
            stacked([p.unit_vectors for p in parts]),
            stacked([p.context_vectors for p in parts]),
        )


def encode_documents(
    chunked: Sequence[ChunkedDocument],
    splitter: Splitter,
    encoder: Encoder,
    cache: EmbeddingCache,
    sentence_vectors: bool = True,
    context: bool = False,
    batch_size: int = 32,
    progress: ProgressFactory | None = None,
) -> EncodedPassages:
    """The passages' vectors, in document order, with (as asked) each sentence's vector read in
    its passages and each passage's read after the one before it (its own for a document's
    first)."""
    windows = all_windows(chunked, splitter)
    texts = [w.text for w in windows]
    unit_vectors = None
    if sentence_vectors:
        unit_texts = [c.document.text[a:b] for c in chunked for a, b in c.units]
        started = (lambda total: progress("passages", total)) if progress else None
        vectors, unit_vectors = cache.encode_windows(
            windows, unit_texts, encoder, batch_size, started
        )
    else:
        vectors = _encode_texts(texts, "passages", cache, encoder, batch_size, progress)
    context_vectors = None
    if context:
        contexts = [t for c in chunked for t in context_texts(c, splitter.indexed_texts(c))]
        rows = [i for i, text in enumerate(contexts) if text is not None]
        context_vectors = vectors.copy()
        if rows:
            wanted = [text for text in contexts if text is not None]
            context_vectors[rows] = _encode_texts(
                wanted, "contexts", cache, encoder, batch_size, progress
            )
    return EncodedPassages(texts, vectors, unit_vectors, context_vectors)


def _encode_texts(
    texts: list[str],
    name: str,
    cache: EmbeddingCache,
    encoder: Encoder,
    batch_size: int,
    progress: ProgressFactory | None,
) -> np.ndarray:
    missing = len({_text_key(t) for t in texts} - cache.vectors.keys())
    return cache.encode(texts, encoder, batch_size, progress(name, missing) if progress else None)
