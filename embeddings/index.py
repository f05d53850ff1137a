"""Inner-product search over normalised vectors with FAISS, keyed by integer ids.

Two kinds, chosen from the number of vectors (`IndexConfig.kind_for`):

- `flat`: exact search, a scan of every vector: about 1 ms a question at 10k vectors, 10 ms at
  50k (the default threshold), 170 ms at 1M on one core.
- `hnsw`: an HNSW graph over the same float32 vectors (`IndexHNSWFlat`). Search is approximate,
  but the scores it returns are exact inner products of the stored vectors, so they stay cosine
  similarities and the abstention thresholds keep their meaning.

Both keep the raw vectors in a FAISS flat storage, which `vectors(ids)` reads directly (a numpy
view, no copy), and both load by memory map (`IO_FLAG_MMAP_IFC`): the vectors and the graph are
paged in from the file on first use instead of being read at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
import numpy.typing as npt

from embeddings.base import Vectors

Ids = npt.NDArray[np.int64]
Kind = Literal["flat", "hnsw"]
KINDS: tuple[Kind, ...] = ("flat", "hnsw")

# Measured with benchmarks/ann.py on 384-d vectors (one search thread): exact search takes
# 0.9 ms at 10k, 10.5 ms at 50k, 16.5 ms at 100k; HNSW 0.3-0.5 ms at recall@10 >= 0.99.
# Below it, exact search needs no graph (which costs build time, memory and a little recall).
DEFAULT_ANN_THRESHOLD = 50_000
# Searches run on one OpenMP thread: the service answers requests concurrently anyway, and on
# busy cores a parallel region waits for a descheduled thread (measured: HNSW p50 0.2 ms on one
# thread, 24 ms on two, with the machine shared). Builds use every core. The setting is per
# calling thread in OpenMP, so each call sets it.
_BUILD_THREADS = faiss.omp_get_max_threads()
# Tombstones (removed vectors still in an HNSW graph) beyond this share trigger a rebuild.
_MAX_DELETED_SHARE = 0.2
_NO_ID = -1


class IndexFormatError(RuntimeError):
    """A saved index cannot be read or does not fit what was expected."""


@dataclass(frozen=True)
class IndexConfig:
    """How to build and search a vector index.

    `kind` "auto" picks flat below `ann_threshold` vectors and HNSW from it on. `m` and
    `ef_construction` shape the HNSW graph (fixed at build); `ef_search` is the search-time
    breadth (more: better recall, slower) and can change without a rebuild. A filtered search
    whose allowed set has at most `exact_filter_limit` ids is exact: scanning those vectors is
    faster than the graph and never misses.
    """

    kind: Literal["auto", "flat", "hnsw"] = "auto"
    ann_threshold: int = DEFAULT_ANN_THRESHOLD
    m: int = 32
    ef_construction: int = 40
    ef_search: int = 256
    exact_filter_limit: int = 20_000

    def __post_init__(self) -> None:
        if self.kind not in ("auto", *KINDS):
            raise ValueError(f"unknown vector index kind {self.kind!r}; expected auto, flat, hnsw")
        for name in ("ann_threshold", "m", "ef_construction", "ef_search"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")

    def kind_for(self, count: int) -> Kind:
        if self.kind != "auto":
            return self.kind
        return "hnsw" if count >= self.ann_threshold else "flat"

    def build_params(self, count: int) -> dict[str, Any]:
        """What a manifest records: the kind for `count` vectors and its build parameters."""
        kind = self.kind_for(count)
        if kind == "hnsw":
            return {"kind": kind, "m": self.m, "ef_construction": self.ef_construction}
        return {"kind": kind}


def check_params(params: dict[str, Any]) -> Kind:
    """The kind named by recorded build parameters; IndexFormatError for one this version
    cannot read (an index written by a newer version, or a damaged manifest)."""
    kind: Kind = params.get("kind", "flat")
    if kind not in KINDS:
        raise IndexFormatError(
            f"unknown vector index kind {kind!r}; this version reads {', '.join(KINDS)}"
        )
    if kind == "hnsw" and not all(isinstance(params.get(k), int) for k in ("m", "ef_construction")):
        raise IndexFormatError(f"HNSW index parameters incomplete: {params}")
    return kind


class VectorIndex:
    """Vectors keyed by the caller's ids (passage numbers), searched by inner product."""

    def __init__(self, dimension: int, config: IndexConfig | None = None, kind: Kind = "flat"):
        if dimension <= 0:
            raise ValueError(f"dimension must be positive, got {dimension}")
        self.dimension = dimension
        self.config = config or IndexConfig()
        self.kind: Kind = kind
        if kind == "hnsw":
            inner: Any = faiss.IndexHNSWFlat(dimension, self.config.m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = self.config.ef_construction
        else:
            inner = faiss.IndexFlatIP(dimension)
        self._set(faiss.IndexIDMap2(inner))

    def _set(self, index: Any) -> None:  # a faiss.IndexIDMap2
        self._index = index
        inner: Any = faiss.downcast_index(index.index)
        self._inner = inner
        self._storage: Any = faiss.downcast_index(inner.storage) if self.kind == "hnsw" else inner
        id_map = faiss.vector_to_array(index.id_map)
        self._deleted = int((id_map == _NO_ID).sum())
        self._rows: npt.NDArray[np.int64] | None = None  # id -> row, built when first needed
        self._sorted: tuple[Ids, Ids] | None = None  # (ids, rows) by id, for sparse ids
        self._mapped = False  # data viewed from a memory-mapped file: read-only

    @property
    def params(self) -> dict[str, Any]:
        """The build parameters of this index, as a manifest records them."""
        if self.kind == "hnsw":
            return {
                "kind": "hnsw",
                "m": self.config.m,
                "ef_construction": self.config.ef_construction,
            }
        return {"kind": "flat"}

    @classmethod
    def build(
        cls, vectors: Vectors, ids: Ids | None = None, config: IndexConfig | None = None
    ) -> VectorIndex:
        config = config or IndexConfig()
        index = cls(vectors.shape[1], config, config.kind_for(len(vectors)))
        index.add(vectors, np.arange(len(vectors), dtype=np.int64) if ids is None else ids)
        return index

    def __len__(self) -> int:
        return int(self._index.ntotal) - self._deleted

    def add(self, vectors: Vectors, ids: Ids) -> None:
        if vectors.ndim != 2 or vectors.shape[1] != self.dimension:
            raise ValueError(
                f"expected vectors of shape (n, {self.dimension}), got {vectors.shape}"
            )
        if len(vectors) != len(ids):
            raise ValueError(f"{len(vectors)} vectors but {len(ids)} ids")
        if self._mapped:  # FAISS aborts the process on a write to a mapped index
            self._set(_owned_copy(self._index))
        faiss.omp_set_num_threads(_BUILD_THREADS)
        self._index.add_with_ids(
            np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64)
        )
        self._rows = self._sorted = None

    def _raw(self) -> Vectors:
        """Every stored vector, in storage order (a view: no copy, works on a memory map)."""
        total = int(self._storage.ntotal)
        if total == 0:
            return np.empty((0, self.dimension), dtype=np.float32)
        pointer = faiss.rev_swig_ptr(self._storage.get_xb(), total * self.dimension)
        raw: Vectors = np.asarray(pointer).reshape(total, self.dimension)
        raw.flags.writeable = False  # it may be a read-only memory map
        return raw

    def _row_of(self, ids: Ids) -> Ids:
        """Storage rows of `ids` (-1 for an id not in the index)."""
        ids = np.asarray(ids, dtype=np.int64)
        if self._rows is None and self._sorted is None:
            id_map = faiss.vector_to_array(self._index.id_map)
            live = np.nonzero(id_map != _NO_ID)[0]
            size = int(id_map[live].max()) + 1 if len(live) else 0
            if size <= 4 * len(id_map) + 1024:  # dense ids (passage positions): a table
                self._rows = np.full(size, _NO_ID, dtype=np.int64)
                self._rows[id_map[live]] = live
            else:
                order = np.argsort(id_map[live])
                self._sorted = (id_map[live][order], live[order])
        if self._rows is not None:
            inside = (ids >= 0) & (ids < len(self._rows))
            return np.where(inside, self._rows[np.where(inside, ids, 0)], _NO_ID)
        assert self._sorted is not None
        keys, rows = self._sorted
        at = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
        return np.where(keys[at] == ids, rows[at], _NO_ID)

    def search(
        self, queries: Vectors, k: int, allowed: Ids | None = None
    ) -> tuple[npt.NDArray[np.float32], Ids]:
        """Best `k` ids per query, best first, among `allowed` ids if given; rows are padded
        with id -1 when fewer than `k` qualify. With HNSW, a filtered search still returns `k`
        ids whenever `k` allowed ids exist (exact over the allowed vectors where needed)."""
        if queries.ndim != 2 or queries.shape[1] != self.dimension:
            raise ValueError(
                f"expected queries of shape (n, {self.dimension}), got {queries.shape}"
            )
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        faiss.omp_set_num_threads(1)
        if self.kind == "flat":
            params = None
            if allowed is not None:
                params = faiss.SearchParameters()
                params.sel = faiss.IDSelectorBatch(np.asarray(allowed, dtype=np.int64))
            scores, ids = self._index.search(queries, k, params=params)
            return scores, ids
        if allowed is not None and len(allowed) <= self.config.exact_filter_limit:
            return self._exact(queries, k, np.asarray(allowed, dtype=np.int64))
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
        params.efSearch = max(self.config.ef_search, k)
        if allowed is not None:
            params.sel = faiss.IDSelectorBatch(np.asarray(allowed, dtype=np.int64))
        elif self._deleted:
            params.sel = faiss.IDSelectorRange(0, np.iinfo(np.int64).max)  # skips tombstones
        scores, ids = self._index.search(queries, k, params=params)
        available = len(self) if allowed is None else len(allowed)
        short = np.nonzero((ids == _NO_ID).sum(axis=1) > max(k - available, 0))[0]
        if len(short):  # the graph walk found too few allowed vectors: exact for those rows
            candidates = self._live_ids() if allowed is None else allowed
            scores[short], ids[short] = self._exact(queries[short], k, candidates)
        return scores, ids

    def _live_ids(self) -> Ids:
        id_map: Ids = faiss.vector_to_array(self._index.id_map)
        live: Ids = id_map[id_map != _NO_ID]
        return live

    def _exact(self, queries: Vectors, k: int, allowed: Ids) -> tuple[npt.NDArray[np.float32], Ids]:
        allowed = np.unique(allowed)
        rows = self._row_of(allowed)
        allowed, rows = allowed[rows != _NO_ID], rows[rows != _NO_ID]
        scores = np.full((len(queries), k), -np.finfo(np.float32).max, dtype=np.float32)
        ids = np.full((len(queries), k), _NO_ID, dtype=np.int64)
        if len(rows) == 0:
            return scores, ids
        similarity = queries @ self._raw()[rows].T
        top = min(k, len(rows))
        best = np.argpartition(-similarity, top - 1, axis=1)[:, :top]
        best_scores = np.take_along_axis(similarity, best, axis=1)
        order = np.argsort(-best_scores, axis=1, kind="stable")
        scores[:, :top] = np.take_along_axis(best_scores, order, axis=1)
        ids[:, :top] = allowed[np.take_along_axis(best, order, axis=1)]
        return scores, ids

    def vectors(self, ids: Ids) -> Vectors:
        """The stored vectors of `ids`, to score candidates that another retriever found."""
        if len(ids) == 0:
            return np.empty((0, self.dimension), dtype=np.float32)
        rows = self._row_of(np.asarray(ids, dtype=np.int64))
        if (rows == _NO_ID).any():
            missing = np.asarray(ids)[rows == _NO_ID][:5].tolist()
            raise KeyError(f"ids not in the index: {missing}")
        found: Vectors = self._raw()[rows]
        return found

    def updated(
        self, keep: Ids, vectors: Vectors, config: IndexConfig | None = None
    ) -> VectorIndex:
        """A new index: the vectors of ids `keep`, renumbered 0..len(keep)-1 in that order, then
        `vectors` numbered on from there; its kind follows `config` (default: this index's).
        This index is not changed.

        Flat is rebuilt by copying. HNSW keeps its graph: the new vectors are inserted, and
        removed ones stay as tombstones that searches skip until they pass a fifth of the graph
        (then it is rebuilt), so a write does not cost a graph build. Only a change of kind or
        build parameters (crossing the threshold) builds a new graph.
        """
        config = config or self.config
        keep = np.asarray(keep, dtype=np.int64)
        total = len(keep) + len(vectors)
        rows = self._row_of(keep)
        if (rows == _NO_ID).any():
            raise KeyError("ids to keep that are not in the index")
        tombstones = int(self._index.ntotal) - len(keep)
        if (
            config.build_params(total) != self.params
            or self.kind == "flat"
            or tombstones > _MAX_DELETED_SHARE * total
        ):
            kept = self._raw()[rows]
            return VectorIndex.build(np.concatenate([kept, vectors]), config=config)
        copy = _owned_copy(self._index)
        id_map = np.full(int(self._index.ntotal), _NO_ID, dtype=np.int64)
        id_map[rows] = np.arange(len(keep), dtype=np.int64)
        faiss.copy_array_to_vector(id_map, copy.id_map)
        copy.construct_rev_map()
        result = VectorIndex.__new__(VectorIndex)
        result.dimension, result.config, result.kind = self.dimension, config, "hnsw"
        result._set(copy)
        result.add(vectors, np.arange(len(keep), total, dtype=np.int64))
        return result

    def save(self, path: Path) -> None:
        faiss.write_index(self._index, str(path))

    @classmethod
    def load(
        cls,
        path: Path,
        dimension: int,
        params: dict[str, Any] | None = None,
        config: IndexConfig | None = None,
        mmap: bool = True,
    ) -> VectorIndex:
        """Read an index saved by `save`; `params` are its recorded build parameters (none:
        flat, as indexes written before ANN support). With `mmap`, vectors and graph stay in
        the file and are paged in on use; the file must not be rewritten in place meanwhile
        (generations never are). Search-time settings come from `config`."""
        params = params or {"kind": "flat"}
        kind = check_params(params)
        try:
            raw = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC if mmap else 0)
        except RuntimeError as exc:
            raise IndexFormatError(f"cannot read FAISS index {path}: {exc}") from exc
        if raw.d != dimension:
            raise IndexFormatError(f"{path} holds {raw.d}-d vectors, expected {dimension}-d")
        expected = faiss.IndexHNSWFlat if kind == "hnsw" else faiss.IndexFlatIP
        if not isinstance(raw, faiss.IndexIDMap2) or not isinstance(
            faiss.downcast_index(raw.index), expected
        ):
            raise IndexFormatError(f"{path} is not the {kind} index its manifest says")
        config = config or IndexConfig()
        if kind == "hnsw":
            # The graph was built with these; keep them so that an update inserts alike.
            config = IndexConfig(
                kind=config.kind, ann_threshold=config.ann_threshold, m=int(params["m"]),
                ef_construction=int(params["ef_construction"]), ef_search=config.ef_search,
                exact_filter_limit=config.exact_filter_limit,
            )  # fmt: skip
        index = cls.__new__(cls)
        index.dimension, index.config, index.kind = dimension, config, kind
        index._set(raw)
        index._mapped = mmap
        return index


def _owned_copy(index: Any) -> Any:
    """A copy that owns its memory (`clone_index` would keep viewing a memory map)."""
    return faiss.deserialize_index(faiss.serialize_index(index))
