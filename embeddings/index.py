"""Exact inner-product search over normalised vectors with FAISS, keyed by integer ids."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import numpy.typing as npt

from embeddings.encoder import Vectors

Ids = npt.NDArray[np.int64]


class IndexFormatError(RuntimeError):
    """A saved index cannot be read or does not fit what was expected."""


class VectorIndex:
    """A FAISS flat inner-product index; ids are the caller's passage numbers."""

    def __init__(self, dimension: int) -> None:
        if dimension <= 0:
            raise ValueError(f"dimension must be positive, got {dimension}")
        self.dimension = dimension
        self._index: faiss.Index = faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))

    @classmethod
    def build(cls, vectors: Vectors, ids: Ids | None = None) -> VectorIndex:
        index = cls(vectors.shape[1])
        index.add(vectors, np.arange(len(vectors), dtype=np.int64) if ids is None else ids)
        return index

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(self, vectors: Vectors, ids: Ids) -> None:
        if vectors.ndim != 2 or vectors.shape[1] != self.dimension:
            raise ValueError(
                f"expected vectors of shape (n, {self.dimension}), got {vectors.shape}"
            )
        if len(vectors) != len(ids):
            raise ValueError(f"{len(vectors)} vectors but {len(ids)} ids")
        self._index.add_with_ids(
            np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64)
        )

    def search(
        self, queries: Vectors, k: int, allowed: Ids | None = None
    ) -> tuple[npt.NDArray[np.float32], Ids]:
        """Best `k` ids per query, best first, among `allowed` ids if given; rows are padded
        with id -1 when fewer than `k` qualify."""
        if queries.ndim != 2 or queries.shape[1] != self.dimension:
            raise ValueError(
                f"expected queries of shape (n, {self.dimension}), got {queries.shape}"
            )
        params = None
        if allowed is not None:
            params = faiss.SearchParameters()
            params.sel = faiss.IDSelectorBatch(allowed.astype(np.int64))
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        scores, ids = self._index.search(queries, k, params=params)
        return scores, ids

    def vectors(self, ids: Ids) -> Vectors:
        """The stored vectors of `ids`, to score candidates that another retriever found."""
        if len(ids) == 0:
            return np.empty((0, self.dimension), dtype=np.float32)
        found: Vectors = self._index.reconstruct_batch(np.asarray(ids, dtype=np.int64))
        return found

    def save(self, path: Path) -> None:
        faiss.write_index(self._index, str(path))

    @classmethod
    def load(cls, path: Path, dimension: int) -> VectorIndex:
        try:
            raw = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise IndexFormatError(f"cannot read FAISS index {path}: {exc}") from exc
        if raw.d != dimension:
            raise IndexFormatError(f"{path} holds {raw.d}-d vectors, expected {dimension}-d")
        index = cls(dimension)
        index._index = raw
        return index
