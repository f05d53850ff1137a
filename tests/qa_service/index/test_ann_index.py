"""The vector index kind in the index folder: recorded in the manifest, checked on load, kept by
incremental updates (a tiny threshold makes every test index approximate)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from embeddings import Encoder
from embeddings.index import IndexConfig
from qa_service.config import Settings
from qa_service.corpus.chunking import PassageSplitter
from qa_service.corpus.documents import Document
from qa_service.errors import IndexCorruptError, IndexStaleError
from qa_service.index.build import IndexSpec, index_documents
from qa_service.index.staleness import stale_reasons
from qa_service.index.store import MANIFEST, current_generation, load_index, save_index
from qa_service.index.update import update_index
from qa_service.index.writes import NewDocument
from qa_service.query.pipeline import AskOptions
from qa_service.service import QAService, ensure_configured_index

ANN = IndexConfig(ann_threshold=1)
DOCS = [
    Document("a", "Alpha is the first letter. It starts the alphabet. Beta comes next."),
    Document("b", "Water boils at 100 degrees. Ice melts at zero. Steam is hot."),
    Document("c", "Rivers flow to the sea. The Drina is a river in the Balkans."),
]


def _splitter(encoder: Encoder) -> PassageSplitter:
    return PassageSplitter(encoder, 12, 1)


def _edit_manifest(index_dir: Path, **fields: object) -> None:
    path = current_generation(index_dir) / MANIFEST
    data = json.loads(path.read_text())
    for key, value in fields.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def test_manifest_records_the_kind_and_load_maps_it(tmp_path: Path, encoder: Encoder) -> None:
    data = index_documents(DOCS, encoder, _splitter(encoder), "f", index_config=ANN)
    save_index(tmp_path, data)
    manifest = json.loads((current_generation(tmp_path) / MANIFEST).read_text())
    assert manifest["vector_index"] == {"kind": "hnsw", "m": 32, "ef_construction": 40}
    loaded = load_index(tmp_path, IndexConfig(ef_search=40))
    assert (loaded.vectors.kind, loaded.vectors.config.ef_search) == ("hnsw", 40)
    assert loaded.vectors._mapped
    assert loaded.unit_vectors is not None and isinstance(loaded.unit_vectors.base, np.memmap)
    q = encoder.encode_queries(["At what temperature does water boil?"])
    assert loaded.passages[int(loaded.vectors.search(q, 1)[1][0, 0])].document_id == "b"
    ids = np.arange(len(loaded.passages))
    np.testing.assert_array_equal(loaded.vectors.vectors(ids), data.vectors.vectors(ids))


def test_an_old_manifest_without_the_field_is_flat(tmp_path: Path, encoder: Encoder) -> None:
    save_index(tmp_path, index_documents(DOCS, encoder, _splitter(encoder), "f"))
    _edit_manifest(tmp_path, vector_index=None)
    loaded = load_index(tmp_path)
    assert loaded.vectors.kind == "flat" and loaded.manifest.vector_index == {"kind": "flat"}


def test_an_unknown_kind_is_refused_clearly(tmp_path: Path, encoder: Encoder) -> None:
    save_index(tmp_path, index_documents(DOCS, encoder, _splitter(encoder), "f"))
    _edit_manifest(tmp_path, vector_index={"kind": "ivf_pq", "nlist": 64})
    with pytest.raises(IndexCorruptError, match=r"unknown vector index kind 'ivf_pq'.*qa index"):
        load_index(tmp_path)
    # A kind that does not match the file is refused too.
    _edit_manifest(tmp_path, vector_index={"kind": "hnsw", "m": 32, "ef_construction": 40})
    with pytest.raises(IndexCorruptError, match="not the hnsw index"):
        load_index(tmp_path)


def test_a_changed_kind_or_parameter_makes_the_index_stale(
    tmp_path: Path, encoder: Encoder
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for d in DOCS:
        (corpus / f"{d.id}.txt").write_text(d.text)
    settings = Settings(corpus_dir=corpus, index_dir=tmp_path / "idx")
    assert ensure_configured_index(settings, encoder).vectors.kind == "flat"
    approximate = settings.model_copy(update={"ann_threshold": 1, "rebuild_stale_index": False})
    with pytest.raises(IndexStaleError, match="vector index"):
        ensure_configured_index(approximate, encoder)
    rebuilt = ensure_configured_index(
        approximate.model_copy(update={"rebuild_stale_index": True}), encoder
    )
    assert rebuilt.vectors.kind == "hnsw"
    spec = IndexSpec(corpus, settings.index_dir, encoder, PassageSplitter(encoder, 96, 1))
    m16 = IndexConfig(ann_threshold=1, m=16)
    assert stale_reasons(rebuilt.manifest, replace(spec, index_config=m16))
    # efSearch is a search-time setting: no rebuild.
    ef = IndexConfig(ann_threshold=1, ef_search=500)
    assert not stale_reasons(rebuilt.manifest, replace(spec, index_config=ef))


def test_updates_work_on_an_approximate_index(tmp_path: Path, encoder: Encoder) -> None:
    splitter = _splitter(encoder)
    save_index(tmp_path, index_documents(DOCS[:2], encoder, splitter, "f", index_config=ANN))
    base = load_index(tmp_path, ANN)  # memory-mapped: an update must not write to it
    new_b = Document("b", "Water freezes at zero degrees. Ice is solid water.")
    updated = update_index(base, encoder, splitter, remove={"a"}, add=[DOCS[2], new_b],
                           index_config=ANN)  # fmt: skip
    rebuilt = index_documents([DOCS[2], new_b], encoder, splitter, "f")
    assert updated.vectors.kind == "hnsw" and len(updated.vectors) == len(updated.passages)
    order = {(p.document_id, p.start): i for i, p in enumerate(rebuilt.passages)}
    positions = np.array([order[(p.document_id, p.start)] for p in updated.passages])
    ids = np.arange(len(updated.passages))
    np.testing.assert_allclose(
        updated.vectors.vectors(ids), rebuilt.vectors.vectors(positions), atol=1e-5
    )
    save_index(tmp_path, updated)
    reloaded = load_index(tmp_path, ANN)
    service = QAService(encoder, reloaded, None, 3, mode="dense")
    passages = service.ask("Which river is in the Balkans?").answer.passages
    assert passages[0].hit.passage.document_id == "c"
    assert {p.hit.passage.document_id for p in passages} <= {"b", "c"}


def test_document_writes_through_the_service_keep_the_graph(
    tmp_path: Path, encoder: Encoder
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for d in DOCS:
        (corpus / f"{d.id}.txt").write_text(d.text)
    settings = Settings(corpus_dir=corpus, index_dir=tmp_path / "idx", ann_threshold=1)
    service = QAService.from_settings(settings, encoder=encoder)
    assert service.index.vectors.kind == "hnsw"
    service.add_documents(
        [("d", NewDocument.from_fields("Owls hunt at night. They fly without a sound."))]
    )
    service.remove_documents(["a"])
    index = service.index
    assert set(index.documents) == {"b", "c", "d"}
    assert index.vectors.kind == "hnsw" and len(index.vectors) == len(index.passages)
    passages = service.ask("Which birds hunt at night?", AskOptions(mode="dense")).answer.passages
    assert passages[0].hit.passage.document_id == "d"
    # What was written is what a restart loads: the same kind, no rebuild needed.
    reloaded = ensure_configured_index(
        settings.model_copy(update={"rebuild_stale_index": False}), encoder
    )
    assert reloaded.generation == index.generation and reloaded.vectors.kind == "hnsw"
