from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np
import pytest

from embeddings import Encoder, IndexFormatError, VectorIndex
from embeddings.index import IndexConfig
from tests.conftest import CORPUS


def _unit_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, d)).astype(np.float32)
    return cast(np.ndarray, v / np.linalg.norm(v, axis=1, keepdims=True))


def test_search_matches_brute_force() -> None:
    vectors = _unit_vectors(200, 16)
    queries = _unit_vectors(5, 16, seed=1)
    scores, ids = VectorIndex.build(vectors).search(queries, 10)
    expected = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ vectors.T, expected, 1), 1e-5)


def test_ids_are_the_callers() -> None:
    vectors = _unit_vectors(3, 8)
    index = VectorIndex.build(vectors, ids=np.array([10, 20, 30]))
    _, ids = index.search(vectors[1:2], 1)
    assert ids[0, 0] == 20


def test_k_larger_than_index_pads_with_minus_one() -> None:
    index = VectorIndex.build(_unit_vectors(2, 8))
    _, ids = index.search(_unit_vectors(1, 8, seed=3), 5)
    assert list(ids[0, 2:]) == [-1, -1, -1]


def test_save_load_round_trip(tmp_path: Path) -> None:
    vectors = _unit_vectors(50, 12)
    index = VectorIndex.build(vectors)
    index.save(tmp_path / "v.faiss")
    loaded = VectorIndex.load(tmp_path / "v.faiss", 12)
    assert len(loaded) == 50
    q = _unit_vectors(3, 12, seed=2)
    np.testing.assert_array_equal(index.search(q, 5)[1], loaded.search(q, 5)[1])


def test_load_rejects_wrong_dimension_and_garbage(tmp_path: Path) -> None:
    VectorIndex.build(_unit_vectors(4, 12)).save(tmp_path / "v.faiss")
    with pytest.raises(IndexFormatError, match="12-d"):
        VectorIndex.load(tmp_path / "v.faiss", 384)
    (tmp_path / "junk.faiss").write_bytes(b"not a faiss index")
    with pytest.raises(IndexFormatError):
        VectorIndex.load(tmp_path / "junk.faiss", 12)


def test_shape_errors_are_caught_before_faiss() -> None:
    index = VectorIndex(8)
    with pytest.raises(ValueError, match="shape"):
        index.add(_unit_vectors(2, 4), np.array([0, 1]))
    with pytest.raises(ValueError, match="ids"):
        index.add(_unit_vectors(2, 8), np.array([0]))


# Approximate search (HNSW) and the kind chosen by size.

HNSW = IndexConfig(ann_threshold=50)  # tiny threshold: HNSW from 50 vectors


def _realistic(encoder: Encoder, n: int, seed: int = 0) -> np.ndarray:
    """`n` perturbations of real sentence embeddings of the default corpus: clustered as real
    passages are, not uniform noise (on which recall would say little)."""
    sentences = [
        s.strip()
        for path in sorted(CORPUS.glob("*.txt"))[:3]
        for s in path.read_text().split(". ")
        if len(s.split()) >= 5
    ][:150]
    base = encoder.encode_passages(sentences)
    rng = np.random.default_rng(seed)
    picked = base[rng.integers(0, len(base), n)]
    noisy = picked + rng.normal(scale=0.03, size=picked.shape).astype(np.float32)
    return cast(
        np.ndarray, (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)
    )


@pytest.fixture(scope="module")
def realistic(encoder: Encoder) -> tuple[np.ndarray, np.ndarray]:
    vectors = _realistic(encoder, 3100)
    return vectors[:3000], vectors[3000:]  # corpus, queries


def test_kind_follows_the_threshold() -> None:
    assert VectorIndex.build(_unit_vectors(49, 8), config=HNSW).kind == "flat"
    index = VectorIndex.build(_unit_vectors(50, 8), config=HNSW)
    assert index.kind == "hnsw"
    assert index.params == {"kind": "hnsw", "m": 32, "ef_construction": 40}
    assert VectorIndex.build(_unit_vectors(50, 8), config=IndexConfig(kind="flat")).kind == "flat"
    assert HNSW.build_params(10) == {"kind": "flat"}
    with pytest.raises(ValueError, match="unknown vector index kind"):
        IndexConfig(kind="ivf")  # type: ignore[arg-type]


def test_hnsw_recall_and_scores_against_exact(
    realistic: tuple[np.ndarray, np.ndarray],
) -> None:
    corpus, queries = realistic
    exact = VectorIndex.build(corpus)
    approximate = VectorIndex.build(corpus, config=HNSW)
    assert (exact.kind, approximate.kind) == ("flat", "hnsw")
    _, truth = exact.search(queries, 10)
    scores, found = approximate.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
    assert recall >= 0.95
    # Scores are the exact cosines of the ids returned, so thresholds keep their meaning.
    cosines = np.take_along_axis(queries @ corpus.T, found, axis=1)
    np.testing.assert_allclose(scores, cosines, atol=1e-5)


@pytest.mark.parametrize("limit", [10_000, 10])  # exact over the allowed ids, or the graph
def test_filtered_hnsw_search_keeps_top_k_full(
    realistic: tuple[np.ndarray, np.ndarray], limit: int
) -> None:
    corpus, queries = realistic
    config = IndexConfig(ann_threshold=50, exact_filter_limit=limit)
    index = VectorIndex.build(corpus, config=config)
    allowed = np.random.default_rng(1).choice(len(corpus), 40, replace=False)
    scores, ids = index.search(queries, 10, allowed=allowed)
    assert np.isin(ids, allowed).all()  # full: no -1 padding
    expected = np.sort(queries @ corpus[allowed].T, axis=1)[:, ::-1][:, :10]
    if limit > len(allowed):  # exact
        np.testing.assert_allclose(scores, expected, atol=1e-5)
    few = allowed[:3]
    _, ids = index.search(queries[:2], 10, allowed=few)
    assert (np.sort(ids[:, :3], axis=1) == np.sort(few)).all()
    assert (ids[:, 3:] == -1).all()


def test_hnsw_save_load_by_memory_map(tmp_path: Path) -> None:
    vectors = _unit_vectors(300, 16)
    index = VectorIndex.build(vectors, config=HNSW)
    index.save(tmp_path / "v.faiss")
    before = (tmp_path / "v.faiss").read_bytes()
    loaded = VectorIndex.load(tmp_path / "v.faiss", 16, index.params, IndexConfig(ef_search=300))
    assert (loaded.kind, len(loaded), loaded.config.ef_search) == ("hnsw", 300, 300)
    q = _unit_vectors(5, 16, seed=2)
    np.testing.assert_array_equal(index.search(q, 5)[1], loaded.search(q, 5)[1])
    ids = np.array([7, 0, 299])
    np.testing.assert_array_equal(loaded.vectors(ids), vectors[ids])
    # A write to a mapped index works on a private copy; the file is never changed.
    loaded.add(_unit_vectors(1, 16, seed=5), np.array([300]))
    assert loaded.search(_unit_vectors(1, 16, seed=5), 1)[1][0, 0] == 300
    assert (tmp_path / "v.faiss").read_bytes() == before


def test_load_checks_the_recorded_kind(tmp_path: Path) -> None:
    VectorIndex.build(_unit_vectors(60, 8), config=HNSW).save(tmp_path / "h.faiss")
    VectorIndex.build(_unit_vectors(10, 8)).save(tmp_path / "f.faiss")
    with pytest.raises(IndexFormatError, match="not the flat index"):
        VectorIndex.load(tmp_path / "h.faiss", 8)  # no parameters: flat, as old indexes
    with pytest.raises(IndexFormatError, match="not the hnsw index"):
        VectorIndex.load(tmp_path / "f.faiss", 8, {"kind": "hnsw", "m": 32, "ef_construction": 40})
    with pytest.raises(IndexFormatError, match="unknown vector index kind 'ivf'"):
        VectorIndex.load(tmp_path / "f.faiss", 8, {"kind": "ivf"})


def test_hnsw_update_keeps_the_graph_and_renumbers() -> None:
    vectors = _unit_vectors(300, 16)
    index = VectorIndex.build(vectors, config=HNSW)
    keep = np.setdiff1d(np.arange(300), np.arange(10, 20))
    new = _unit_vectors(5, 16, seed=9)
    updated = index.updated(keep, new)
    assert (updated.kind, len(updated), len(index)) == ("hnsw", 295, 300)
    expected = np.concatenate([vectors[keep], new])
    np.testing.assert_array_equal(updated.vectors(np.arange(295)), expected)
    _, ids = updated.search(expected, 1)  # every vector finds itself under its new id
    assert (ids[:, 0] == np.arange(295)).mean() >= 0.99
    _, ids = updated.search(vectors[10:20], 295)  # removed vectors are never returned
    assert ids.min() >= 0 and len(np.unique(ids[0])) == 295
    assert updated._index.ntotal == 305  # tombstones kept, not a rebuild
    # Past a fifth of tombstones, or below the threshold, the index is rebuilt.
    assert updated.updated(np.arange(200), new)._index.ntotal == 205
    assert updated.updated(np.arange(40), new[:1]).kind == "flat"
    grown = VectorIndex.build(vectors[:48], config=HNSW).updated(np.arange(48), new)
    assert (grown.kind, len(grown)) == ("hnsw", 53)
