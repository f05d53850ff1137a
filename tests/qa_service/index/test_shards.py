"""Which shard holds a document, and the layout file that names the shards (no Ray needed)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from embeddings import Encoder
from qa_service.corpus.chunking import PassageSplitter
from qa_service.corpus.documents import Document
from qa_service.errors import ClusterError, IndexNotFoundError
from qa_service.index.build import assemble_index, index_documents, passage_settings
from qa_service.index.encode import EmbeddingCache, encode_documents
from qa_service.index.shard_lexical import ShardedLexical
from qa_service.index.shards import SHARDS_FILE, ShardLayout, shard_of
from qa_service.index.store import load_index, save_index


def test_a_document_always_goes_to_the_same_shard_and_shards_fill_evenly() -> None:
    ids = [f"reports/{n:04d}" for n in range(2000)]
    assignment = [shard_of(i, 4) for i in ids]
    # The same in another interpreter: not Python's per-process salted hash.
    script = "from qa_service.index.shards import shard_of; print([shard_of(f'reports/{n:04d}', 4) for n in range(2000)])"  # noqa: E501
    again = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert again.stdout.strip() == str(assignment)
    counts = Counter(assignment)
    assert set(counts) == {0, 1, 2, 3}
    assert all(400 <= c <= 600 for c in counts.values())  # 500 each, give or take
    assert {shard_of(i, 1) for i in ids} == {0}
    assert shard_of("Ђорђе/č", 3) in range(3)  # any id the corpus allows
    with pytest.raises(ValueError):
        shard_of("a", 0)


def _layout(tmp_path: Path, encoder: Encoder, count: int = 2) -> ShardLayout:
    splitter = PassageSplitter(encoder, 48, 0)
    settings = passage_settings(splitter, encoder.name)
    layout = ShardLayout(count, encoder.name, settings, "f" * 64, "shards/build-1")
    for n, folder in enumerate(layout.folders(tmp_path)):
        text = f"Shard {n} holds this document about the Western Balkans."
        data = index_documents([Document(f"d{n}", text)], encoder, splitter, "f")
        save_index(folder, data)
    layout.save(tmp_path)
    return layout


def test_the_layout_is_saved_read_and_checked(tmp_path: Path, encoder: Encoder) -> None:
    layout = _layout(tmp_path, encoder)
    assert ShardLayout.read(tmp_path) == layout
    assert [m.documents for m in layout.manifests(tmp_path)] == [1, 1]
    assert layout.folders(tmp_path)[1] == tmp_path / "shards" / "build-1" / "001"


def test_a_shard_keeps_its_term_counts_in_its_generation(tmp_path: Path, encoder: Encoder) -> None:
    """Saved with the index, checksummed like every file of it, and loaded back."""
    splitter = PassageSplitter(encoder, 48, 0)
    documents = [Document("a", "Child begging in Serbia. Forced criminality."),
                 Document("b", "Tirana")]  # fmt: skip
    chunked = [splitter.split(d) for d in documents]
    encoded = encode_documents(chunked, splitter, encoder, EmbeddingCache(encoder.name))
    settings = passage_settings(splitter, encoder.name)
    data = assemble_index(chunked, encoded, encoder.name, encoder.dimension, settings, "f",
                          shard=True)  # fmt: skip
    assert data.term_counts is not None and data.term_counts.size == len(data.passages)
    save_index(tmp_path, data)
    loaded = load_index(tmp_path)
    assert loaded.term_counts is not None
    question = "child begging in Tirana"
    stats = loaded.term_counts.stats()
    assert stats == data.term_counts.stats()
    plain = index_documents(documents, encoder, splitter, "f")
    assert plain.term_counts is None  # a single index needs none
    np.testing.assert_array_equal(
        ShardedLexical([loaded.term_counts]).scores(question), plain.lexical.scores(question)
    )


def test_a_missing_or_foreign_shard_fails_with_the_fix(tmp_path: Path, encoder: Encoder) -> None:
    layout = _layout(tmp_path, encoder, count=3)
    other = ShardLayout(3, "another-model", layout.passage_settings, "f" * 64, layout.folder)
    with pytest.raises(ClusterError, match=r"shard 0 of 3 .* built with model .*qa index --ray"):
        other.manifests(tmp_path)
    (layout.folders(tmp_path)[2] / "current").unlink()
    with pytest.raises(ClusterError, match=r"shard 2 of 3 \(.*002\) is missing or damaged"):
        layout.manifests(tmp_path)


def test_no_layout_or_a_damaged_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(IndexNotFoundError, match="qa index --ray --shards N"):
        ShardLayout.read(tmp_path)
    (tmp_path / SHARDS_FILE).write_text('{"count": 2}')
    with pytest.raises(ClusterError, match="not a shard layout"):
        ShardLayout.read(tmp_path)
    (tmp_path / SHARDS_FILE).write_text("{not json")
    with pytest.raises(ClusterError, match="unreadable"):
        ShardLayout.read(tmp_path)
