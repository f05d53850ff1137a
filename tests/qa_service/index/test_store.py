from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest

from embeddings import Encoder
from qa_service.config import Settings
from qa_service.corpus import fingerprint
from qa_service.corpus.chunking import PassageSplitter
from qa_service.corpus.documents import Document
from qa_service.corpus.fingerprint import MEMO_FILE
from qa_service.errors import IndexCorruptError, IndexNotFoundError, IndexStaleError
from qa_service.index.build import index_documents
from qa_service.index.store import IndexData, current_generation, load_index, save_index
from qa_service.service import QAService, ensure_configured_index

DOCS = [
    Document("a", "Alpha is the first letter. It starts the alphabet.", title="A"),
    Document("b", "Water boils at 100 degrees. Ice melts at zero.", metadata={"k": "v"}),
]


@pytest.fixture(scope="module")
def small_index(encoder: Encoder) -> IndexData:
    return index_documents(DOCS, encoder, PassageSplitter(encoder, 8, 0), fingerprint="f")


def test_round_trip_keeps_everything(tmp_path: Path, small_index: IndexData) -> None:
    save_index(tmp_path, small_index)
    loaded = load_index(tmp_path)
    assert loaded.documents == small_index.documents
    assert loaded.passages == small_index.passages
    assert loaded.units == small_index.units
    assert loaded.unit_vectors is not None and small_index.unit_vectors is not None
    np.testing.assert_array_equal(loaded.unit_vectors, small_index.unit_vectors)
    q = small_index.unit_vectors[:1]
    assert (loaded.vectors.search(q, 3)[1] == small_index.vectors.search(q, 3)[1]).all()
    assert set(loaded.manifest.files) >= {"passages.faiss", "passages.jsonl", "documents.jsonl"}


def test_passage_ids_by_document_follow_the_passages(
    tmp_path: Path, small_index: IndexData
) -> None:
    save_index(tmp_path, small_index)
    loaded = load_index(tmp_path)
    expected = {
        d: [i for i, p in enumerate(loaded.passages) if p.document_id == d]
        for d in loaded.documents
    }
    assert loaded.passage_ids == expected
    assert all(expected.values()) and sum(map(len, expected.values())) == len(loaded.passages)
    assert loaded.passage_counts() == {d: len(ids) for d, ids in expected.items()}
    assert gc.isenabled()  # loading pauses the collector and leaves it as it was


def test_missing_index_is_reported(tmp_path: Path) -> None:
    with pytest.raises(IndexNotFoundError, match="qa index"):
        load_index(tmp_path / "nothing")


@pytest.mark.parametrize("victim", ["passages.faiss", "passages.jsonl", "documents.jsonl"])
def test_a_damaged_file_is_refused(tmp_path: Path, small_index: IndexData, victim: str) -> None:
    folder = save_index(tmp_path, small_index)
    with (folder / victim).open("ab") as f:
        f.write(b"x")
    with pytest.raises(IndexCorruptError, match=r"checksum.*Rebuild the index with `qa index`"):
        load_index(tmp_path)


def test_a_new_build_replaces_the_old_and_ignores_leftovers(
    tmp_path: Path, small_index: IndexData
) -> None:
    first = save_index(tmp_path, small_index)
    # A build that crashed half-way leaves a partial folder; it must never be read.
    (tmp_path / "generations" / ".crashed.partial").mkdir()
    second = save_index(tmp_path, small_index)
    assert current_generation(tmp_path) == second.resolve()
    assert not first.exists()
    assert len(load_index(tmp_path).passages) == len(small_index.passages)


def test_stale_index_is_rebuilt_or_refused(tmp_path: Path, encoder: Encoder) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "one.txt").write_text("The first document talks about rivers.")
    settings = Settings(corpus_dir=corpus, index_dir=tmp_path / "idx")
    assert set(ensure_configured_index(settings, encoder).documents) == {"one"}

    (corpus / "two.txt").write_text("A second document about mountains.")
    refuse = settings.model_copy(update={"rebuild_stale_index": False})
    with pytest.raises(IndexStaleError, match="qa index"):
        ensure_configured_index(refuse, encoder)
    assert set(ensure_configured_index(settings, encoder).documents) == {"one", "two"}

    resized = settings.model_copy(update={"passage_tokens": 64})
    rebuilt = ensure_configured_index(resized, encoder)
    assert rebuilt.manifest.passage_settings["target_tokens"] == 64


def test_an_edit_is_seen_through_the_hash_memo(
    tmp_path: Path, encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fingerprint, "RACY_NS", 0)  # the test's files count as settled at once
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "one.txt").write_text("The first document talks about rivers.")
    settings = Settings(corpus_dir=corpus, index_dir=tmp_path / "idx", rebuild_stale_index=False)
    ensure_configured_index(settings, encoder)  # built: the build leaves the memo
    assert (settings.index_dir / MEMO_FILE).exists()
    ensure_configured_index(settings, encoder)  # loaded, the corpus checked through the memo

    (corpus / "one.txt").write_text("The first document talks about lakes!")  # same size
    with pytest.raises(IndexStaleError, match="changed since it was built"):
        ensure_configured_index(settings, encoder)


def test_service_refuses_an_index_from_another_model(small_index: IndexData) -> None:
    class OtherModel:
        name = "another-model"

        def encode_queries(self, texts: list[str]) -> None:
            raise AssertionError("refused before any question")

    with pytest.raises(IndexStaleError, match="another-model"):
        QAService(OtherModel(), small_index, 0.3, 5)  # type: ignore[arg-type]
