from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embeddings import IndexFormatError, VectorIndex


def _unit_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


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
