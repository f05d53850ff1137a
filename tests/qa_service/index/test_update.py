"""Incremental updates and the embedding cache, with the real model on small documents."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from embeddings import Encoder, Vectors
from embeddings.base import Span
from qa_service.config import Settings
from qa_service.corpus.chunking import PassageSplitter
from qa_service.corpus.documents import Document
from qa_service.corpus.fingerprint import corpus_fingerprint
from qa_service.errors import (
    DocumentExistsError,
    DocumentNotFoundError,
    IndexBusyError,
    InvalidDocumentError,
    LastDocumentError,
    UnsupportedDocumentTypeError,
)
from qa_service.index.build import IndexSpec, build_index, index_documents
from qa_service.index.encode import EmbeddingCache
from qa_service.index.staleness import ensure_index
from qa_service.index.store import (
    current_generation,
    current_generation_name,
    index_lock,
    load_index,
)
from qa_service.index.update import TermCache, update_index
from qa_service.index.writes import DocumentUpdater, NewDocument, write_durably
from qa_service.models import PROFILES, profile_for
from qa_service.service import QAService, index_spec

DOCS = [
    Document("a", "Alpha is the first letter. It starts the alphabet. Beta comes next.", "A"),
    Document("b", "Water boils at 100 degrees. Ice melts at zero. Steam is hot."),
    Document("c", "Rivers flow to the sea. The Drina is a river in the Balkans."),
]


class CountingEncoder:
    """The real encoder, counting the texts it is asked to encode."""

    def __init__(self, inner: Encoder) -> None:
        self._inner = inner
        self.encoded: list[str] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def encode_passages(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        on_batch: Callable[[int], None] | None = None,
    ) -> Vectors:
        self.encoded.extend(texts)
        return self._inner.encode_passages(texts, batch_size, on_batch)

    def encode_in_context(
        self,
        texts: Sequence[str],
        spans: Sequence[Sequence[Span]],
        batch_size: int = 32,
        on_batch: Callable[[int], None] | None = None,
    ) -> tuple[Vectors, list[Vectors]]:
        self.encoded.extend(texts)
        return self._inner.encode_in_context(texts, spans, batch_size, on_batch)


def _splitter(encoder: Encoder) -> PassageSplitter:
    return PassageSplitter(encoder, 12, 1)


def test_an_update_equals_a_rebuild(encoder: Encoder) -> None:
    splitter = _splitter(encoder)
    base = index_documents(DOCS[:2], encoder, splitter, "f")
    new_b = Document("b", "Water freezes at zero. Steam rises from boiling water.")
    updated = update_index(base, encoder, splitter, remove={"a"}, add=[DOCS[2], new_b],
                           terms=TermCache())  # fmt: skip
    rebuilt = index_documents([DOCS[2], new_b], encoder, splitter, "f")
    assert set(updated.documents) == {"b", "c"}
    assert updated.documents["b"] == new_b
    assert sorted(p.id for p in updated.passages) == sorted(p.id for p in rebuilt.passages)
    for passage in updated.passages:
        assert updated.documents[passage.document_id].text[passage.start : passage.end] == (
            passage.text
        )
    # The same vectors and BM25 scores, whatever the order the passages are kept in.
    order = {p.id: i for i, p in enumerate(rebuilt.passages)}
    positions = np.array([order[p.id] for p in updated.passages])
    all_ids = np.arange(len(updated.passages))
    np.testing.assert_allclose(
        updated.vectors.vectors(all_ids), rebuilt.vectors.vectors(positions), atol=1e-5
    )
    question = "At what temperature does water freeze?"
    np.testing.assert_allclose(
        updated.lexical.scores(question), rebuilt.lexical.scores(question)[positions], atol=1e-6
    )
    assert updated.unit_vectors is not None and rebuilt.unit_vectors is not None
    for doc_id in ("b", "c"):
        mine = updated.unit_vectors[updated.unit_offsets[doc_id] :][: len(updated.units[doc_id])]
        theirs = rebuilt.unit_vectors[rebuilt.unit_offsets[doc_id] :][: len(rebuilt.units[doc_id])]
        np.testing.assert_allclose(mine, theirs, atol=1e-5)
    # The base is untouched: readers holding it keep a consistent index.
    assert set(base.documents) == {"a", "b"} and len(base.vectors) == len(base.passages)


def test_an_update_encodes_only_new_text(encoder: Encoder) -> None:
    counting = CountingEncoder(encoder)
    splitter = _splitter(encoder)
    base = index_documents(DOCS, encoder, splitter, "f")
    replaced = Document("c", "Rivers flow to the sea. The Neretva is a river too.")
    update_index(base, counting, splitter, add=[replaced])  # type: ignore[arg-type]
    # The unchanged sentence of the replaced version comes from the old vectors.
    assert "Rivers flow to the sea." not in counting.encoded
    assert "The Neretva is a river too." in counting.encoded
    assert not any("Alpha" in t or "Water" in t for t in counting.encoded)


def test_a_sentence_vector_is_read_in_the_passages_that_hold_it(encoder: Encoder) -> None:
    text = ("Alpha is the first letter. It starts the alphabet. Beta comes next. "
            "Gamma is third. Delta is fourth in the Greek alphabet.")  # fmt: skip
    document = Document("d", text)
    counting = CountingEncoder(encoder)
    splitter = PassageSplitter(encoder, 14, 1)
    data = index_documents([document], counting, splitter, "f")  # type: ignore[arg-type]
    assert counting.encoded == [p.text for p in data.passages]  # no sentence encoded alone
    units, passages = data.units["d"], data.passages
    assert len(passages) >= 3 and any(p.last_unit - p.first_unit > 1 for p in passages)
    spans = [[(a - p.start, b - p.start) for a, b in units[p.first_unit : p.last_unit]]
             for p in passages]  # fmt: skip
    _, in_context = encoder.encode_in_context([p.text for p in passages], spans)
    assert data.unit_vectors is not None
    shared = 0  # sentences in two overlapping passages
    for unit in range(len(units)):
        reads = [in_context[i][unit - p.first_unit] for i, p in enumerate(passages)
                 if p.first_unit <= unit < p.last_unit]  # fmt: skip
        shared += len(reads) > 1
        mean = np.mean(reads, axis=0)
        np.testing.assert_allclose(data.unit_vectors[unit], mean / np.linalg.norm(mean),
                                   atol=1e-5)  # fmt: skip
    assert shared
    # A sentence read with its neighbours is not the sentence read alone.
    alone = encoder.encode_passages([document.text[a:b] for a, b in units])
    assert (np.sum(alone * data.unit_vectors, axis=1) < 0.99).any()

    # When the last sentence changes, so do the vectors of the sentences read with it: the
    # passage sharing "Gamma is third." with the changed one is read again, the first is not.
    counting.encoded.clear()
    changed = Document("d", document.text.replace("in the Greek alphabet", "of them"))
    updated = update_index(data, counting, splitter, add=[changed])  # type: ignore[arg-type]
    assert counting.encoded == [p.text for p in updated.passages[1:]]
    assert passages[1].text == updated.passages[1].text


def test_a_rebuild_reuses_the_vectors_of_the_index_it_replaces(
    tmp_path: Path, encoder: Encoder
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for document in DOCS:
        (corpus / f"{document.id}.txt").write_text(document.text)
    counting = CountingEncoder(encoder)
    splitter = _splitter(encoder)
    build_index(IndexSpec(corpus, tmp_path / "idx", counting, splitter))  # type: ignore[arg-type]
    first = len(counting.encoded)
    (corpus / "d.txt").write_text("Mountains are high. Snow covers their tops in winter.")
    counting.encoded.clear()
    build_index(IndexSpec(corpus, tmp_path / "idx", counting, splitter))  # type: ignore[arg-type]
    assert 0 < len(counting.encoded) < first
    assert all("Mountains" in t or "Snow" in t for t in counting.encoded)


def test_the_cache_refuses_another_model(encoder: Encoder) -> None:
    with pytest.raises(ValueError, match="cache of"):
        EmbeddingCache("another-model").encode(["x"], encoder)


def test_passages_read_after_the_one_before_them(
    tmp_path: Path, encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For a model whose profile reads passages in context (here the test's own model, given one)
    each passage is also encoded from the start of the one before it; the vectors survive an
    update, a save and a rebuild, and the index records the weight."""
    profile = replace(profile_for(encoder.name), preceding_context=0.25)
    monkeypatch.setitem(PROFILES, encoder.name, profile)
    splitter = _splitter(encoder)
    data = index_documents(DOCS, encoder, splitter, "f")
    assert data.manifest.passage_settings["preceding_context"] == 0.25
    assert data.context_vectors is not None
    expected = []
    for i, passage in enumerate(data.passages):
        before = data.passages[i - 1] if i else None
        if before is None or before.document_id != passage.document_id:
            expected.append(passage.text)  # a document's first: its own reading
        else:
            text = data.documents[passage.document_id].text
            assert before.start < passage.start
            expected.append(text[before.start : passage.end])
    assert any(t not in (p.text for p in data.passages) for t in expected)
    np.testing.assert_allclose(data.context_vectors, encoder.encode_passages(expected), atol=1e-5)

    # An update matches a rebuild; saved and loaded, a rebuild encodes nothing again.
    replaced = Document("c", "Rivers flow to the sea. The Neretva is a river too. It is green.")
    updated = update_index(data, encoder, splitter, remove={"a"}, add=[replaced])
    rebuilt = index_documents([DOCS[1], replaced], encoder, splitter, "f")
    assert updated.context_vectors is not None and rebuilt.context_vectors is not None
    np.testing.assert_allclose(updated.context_vectors, rebuilt.context_vectors, atol=1e-5)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for document in DOCS:
        (corpus / f"{document.id}.txt").write_text(document.text)
    build_index(IndexSpec(corpus, tmp_path / "idx", encoder, splitter))
    loaded = load_index(tmp_path / "idx")
    assert loaded.context_vectors is not None
    np.testing.assert_allclose(loaded.context_vectors, data.context_vectors, atol=1e-6)
    counting = CountingEncoder(encoder)
    build_index(IndexSpec(corpus, tmp_path / "idx", counting, splitter))  # type: ignore[arg-type]
    assert counting.encoded == []

    # Models not listed keep plain indexes, as before.
    monkeypatch.delitem(PROFILES, encoder.name)
    plain = index_documents(DOCS, encoder, splitter, "f")
    assert plain.context_vectors is None
    assert "preceding_context" not in plain.manifest.passage_settings


@pytest.fixture
def writable(tmp_path: Path, encoder: Encoder) -> tuple[QAService, Settings]:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for document in DOCS:
        (corpus / f"{document.id}.txt").write_text(document.text)
    (corpus / "metadata.json").write_text('{"a": {"title": "Letters", "publisher": "P"}}')
    settings = Settings(corpus_dir=corpus, index_dir=tmp_path / "idx", passage_tokens=16)
    return QAService.from_settings(settings, encoder=encoder), settings


def _state(service: QAService, settings: Settings) -> tuple[str | None, list[str], set[str]]:
    files = {p.relative_to(settings.corpus_dir).as_posix()
             for p in settings.corpus_dir.rglob("*") if p.is_file()}  # fmt: skip
    return current_generation_name(settings.index_dir), sorted(service.index.documents), files


def test_writes_keep_the_corpus_folder_and_the_index_in_step(
    writable: tuple[QAService, Settings], encoder: Encoder
) -> None:
    service, settings = writable
    (result,) = service.add_documents(
        [("notes/d", NewDocument.from_fields("Quillfeather lives in Durres.", title="D",
                                             metadata={"date": "2024-01-01"}))]
    )  # fmt: skip
    assert result.created and result.passages == 1
    assert (settings.corpus_dir / "notes" / "d.json").exists()
    service.add_documents([("a", NewDocument(b"Alpha was replaced.", ".md"))], "upsert")
    assert not (settings.corpus_dir / "a.txt").exists()
    assert service.document("a").text == "Alpha was replaced."
    assert service.document("a").title == "Letters"  # metadata.json still applies
    service.remove_documents(["b"])
    assert not (settings.corpus_dir / "b.txt").exists()

    # The index on disk is what a restart loads, and it is not stale: no rebuild.
    saved = load_index(settings.index_dir)
    assert saved.manifest.corpus_fingerprint == corpus_fingerprint(settings.corpus_dir)
    assert saved.documents == service.index.documents
    generation = current_generation_name(settings.index_dir)
    assert ensure_index(index_spec(settings, encoder)).documents == service.index.documents
    assert current_generation_name(settings.index_dir) == generation
    # And a full rebuild gives the same documents and passages.
    rebuilt, _ = build_index(index_spec(settings, encoder))
    assert rebuilt.documents == service.index.documents
    assert sorted(p.id for p in rebuilt.passages) == sorted(p.id for p in service.index.passages)
    hit = service.ask("Where does Quillfeather live?").answer.passages[0].hit
    assert hit.passage.document_id == "notes/d"


@pytest.mark.parametrize(
    ("items", "mode", "error"),
    [
        ([("a", NewDocument(b"dup", ".txt"))], "create", DocumentExistsError),
        ([("x", NewDocument(b"%PDF", ".exe"))], "create", UnsupportedDocumentTypeError),
        ([("x", NewDocument(b"", ".txt"))], "create", InvalidDocumentError),
        ([("x", NewDocument(b"  \n ", ".txt"))], "create", InvalidDocumentError),
        ([("x", NewDocument(b"\xff\xfe bad", ".txt"))], "create", InvalidDocumentError),
        ([("x", NewDocument(b"%PDF-1.4 broken", ".pdf"))], "create", InvalidDocumentError),
        ([("x", NewDocument(b'{"title": 1}', ".json"))], "create", InvalidDocumentError),
        ([("../escape", NewDocument(b"text", ".txt"))], "upsert", InvalidDocumentError),
        ([("metadata", NewDocument(b"text", ".json"))], "upsert", InvalidDocumentError),
        ([("x", NewDocument(b"ok", ".txt")), ("y", NewDocument(b"", ".txt"))], "create",
         InvalidDocumentError),
    ],
)  # fmt: skip
def test_bad_writes_change_nothing(
    writable: tuple[QAService, Settings],
    items: list[tuple[str, NewDocument]],
    mode: str,
    error: type[Exception],
) -> None:
    service, settings = writable
    before = _state(service, settings)
    with pytest.raises(error):
        service.add_documents(items, mode)  # type: ignore[arg-type]
    assert _state(service, settings) == before


def test_bad_removals_change_nothing(writable: tuple[QAService, Settings]) -> None:
    service, settings = writable
    before = _state(service, settings)
    with pytest.raises(DocumentNotFoundError):
        service.remove_documents(["a", "missing"])
    with pytest.raises(LastDocumentError):
        service.remove_documents(["a", "b", "c"])
    assert _state(service, settings) == before


def test_a_failed_save_undoes_the_corpus_change(
    writable: tuple[QAService, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    service, settings = writable
    before = _state(service, settings)
    old_text = (settings.corpus_dir / "a.txt").read_bytes()

    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("qa_service.index.writes.save_index", disk_full)
    with pytest.raises(OSError):
        service.add_documents([("a", NewDocument(b"New alpha.", ".md"))], "upsert")
    with pytest.raises(OSError):
        service.remove_documents(["b"])
    assert _state(service, settings) == before
    assert (settings.corpus_dir / "a.txt").read_bytes() == old_text


def test_a_crash_after_the_corpus_write_is_completed_at_start_up(
    writable: tuple[QAService, Settings], encoder: Encoder
) -> None:
    """The corpus file is in place but the index was not saved: start-up rebuilds it, and
    encodes only the new document."""
    _, settings = writable
    write_durably(settings.corpus_dir / "e.txt", b"Kestrels hover above the Prokletije.")
    counting = CountingEncoder(encoder)
    data = ensure_index(index_spec(settings, counting))  # type: ignore[arg-type]
    assert "e" in data.documents
    assert counting.encoded and all("Kestrels" in t for t in counting.encoded)


def test_a_write_takes_up_a_generation_written_by_another_process(
    writable: tuple[QAService, Settings], encoder: Encoder
) -> None:
    service, settings = writable
    other = QAService.from_settings(settings, encoder=encoder)  # as `qa add` would
    other.add_documents([("f", NewDocument(b"Falcons nest on cliffs.", ".txt"))])
    service.add_documents([("g", NewDocument(b"Gulls follow the ferries.", ".txt"))])
    assert {"f", "g"} <= set(service.index.documents)
    other.add_documents([("h", NewDocument(b"Herons wait in the reeds.", ".txt"))])
    assert service.refresh() and "h" in service.index.documents
    assert not service.refresh()


def test_the_index_lock_excludes_other_processes(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path\n"
         "from qa_service.index.store import index_lock\n"
         f"with index_lock(Path({str(tmp_path)!r})):\n"
         "    print('locked', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(IndexBusyError), index_lock(tmp_path, timeout=0.3):
            pass
    finally:
        holder.kill()
        holder.wait()
    with index_lock(tmp_path, timeout=5), index_lock(tmp_path, timeout=0):  # re-entrant
        pass


def test_a_write_to_an_index_that_does_not_know_its_files_rebuilds_once(
    tmp_path: Path, encoder: Encoder
) -> None:
    """An index from before live updates keeps no per-file hashes; when its corpus has changed
    since, a write cannot update the fingerprint, so it rebuilds the index from the corpus (which
    then holds the write), encoding each new text once."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for document in DOCS:
        (corpus / f"{document.id}.txt").write_text(document.text)
    counting = CountingEncoder(encoder)
    spec = IndexSpec(corpus, tmp_path / "idx", counting, _splitter(encoder))  # type: ignore[arg-type]
    build_index(spec)
    manifest = current_generation(spec.index_dir) / "manifest.json"
    old = json.loads(manifest.read_text())
    old["corpus_files"] = {}
    manifest.write_text(json.dumps(old))
    (corpus / "d.txt").write_text("Owls hunt at night.")  # by hand, not through a write
    counting.encoded.clear()
    note = b"Kestrels hover above the Prokletije."
    writer, base = DocumentUpdater(spec), load_index(spec.index_dir)
    prepared = writer.prepare(base, [("e", NewDocument(note, ".txt"))], "create")
    data, (result,) = writer.commit(base, prepared, "create")
    assert set(data.documents) == {"a", "b", "c", "d", "e"}
    assert result.created and result.passages == 1
    assert load_index(spec.index_dir).documents == data.documents
    # The rebuild reuses the old vectors: only the two new texts were encoded, each once.
    assert sorted(counting.encoded) == [
        "Kestrels hover above the Prokletije.",
        "Owls hunt at night.",
    ]
