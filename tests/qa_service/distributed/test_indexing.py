"""`qa index --ray` on a real two-node Ray cluster: the shards hold exactly what one machine's
build holds, document by document, and BM25 over them scores as the single index does."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from embeddings import MINILM_MODEL, Encoder
from qa_service.cli import app
from qa_service.config import Settings
from qa_service.corpus.documents import load_corpus
from qa_service.distributed.cluster import connect
from qa_service.errors import ClusterError
from qa_service.index.build import index_documents
from qa_service.index.shard_lexical import ShardedLexical
from qa_service.index.shards import ShardLayout, shard_of
from qa_service.index.store import IndexData, load_index
from qa_service.service import make_splitter

pytestmark = pytest.mark.slow

QUESTIONS = [
    "Who took part in the Regional Expert Group Meeting in Skopje?",
    "child begging and forced criminality in Serbia",
    "GRETA evaluation report recommendations",
    "zebra crossing",  # no passage knows it
]


@pytest.fixture
def corpus(corpus_copy: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    shutil.copytree(corpus_copy, folder)
    (folder / "broken.pdf").write_bytes(b"not a pdf at all")
    return folder


def test_the_corpus_is_indexed_into_shards_by_the_cluster(
    ray_cluster: str, corpus: Path, tmp_path: Path, encoder: Encoder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("QA_ENCODER_BACKEND", "torch")  # the session's model, already loaded
    index_dir = tmp_path / "index"
    flags = ["--corpus-dir", str(corpus), "--index-dir", str(index_dir), "--model", MINILM_MODEL]
    command = ["index", *flags, "--ray", "--address", ray_cluster, "--shards", "2"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert "Indexed 5 documents as" in result.output and "into 2 shards" in result.output
    assert "broken.pdf" in result.output  # skipped, said, and not fatal

    layout = ShardLayout.read(index_dir)
    assert layout.count == 2 and layout.model == encoder.name
    shards = [load_index(folder) for folder in layout.folders(index_dir)]
    assert [m.documents for m in layout.manifests(index_dir)] == [len(s.documents) for s in shards]

    # What one machine builds from the same files.
    documents = load_corpus(corpus).documents
    splitter = make_splitter(Settings(), encoder)
    single = index_documents(documents, encoder, splitter, "f")
    for n, shard in enumerate(shards):
        assert set(shard.documents) == {d.id for d in documents if shard_of(d.id, 2) == n}
        assert shard.documents  # the seed corpus splits 3 / 2
        for doc_id in shard.documents:
            _assert_same_document(shard, single, doc_id)

    # BM25 over the term counts each shard keeps, with global statistics, is the single index's.
    counts = [shard.term_counts for shard in shards]
    assert all(c is not None for c in counts)
    lexical = ShardedLexical(counts)  # type: ignore[arg-type]
    order = [single.passages.index(p) for shard in shards for p in shard.passages]
    for question in QUESTIONS:
        np.testing.assert_array_equal(
            lexical.scores(question), single.lexical.scores(question)[order]
        )


def _assert_same_document(shard: IndexData, single: IndexData, doc_id: str) -> None:
    assert shard.documents[doc_id] == single.documents[doc_id]
    assert shard.units[doc_id] == single.units[doc_id]
    mine, theirs = shard.passage_ids[doc_id], single.passage_ids[doc_id]
    assert [shard.passages[i] for i in mine] == [single.passages[i] for i in theirs]
    np.testing.assert_allclose(
        shard.vectors.vectors(np.asarray(mine)), single.vectors.vectors(np.asarray(theirs)),
        atol=1e-5,
    )  # fmt: skip
    assert shard.unit_vectors is not None and single.unit_vectors is not None
    a, b = shard.unit_offsets[doc_id], single.unit_offsets[doc_id]
    count = len(shard.units[doc_id])
    np.testing.assert_allclose(
        shard.unit_vectors[a : a + count], single.unit_vectors[b : b + count], atol=1e-5
    )


def test_a_build_that_cannot_fill_every_shard_keeps_the_served_shards(
    ray_cluster: str, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four shards for the seed corpus's five ids leave one empty: refused, before any work,
    and the layout being served stays as it was."""
    monkeypatch.setenv("QA_ENCODER_BACKEND", "torch")
    index_dir = tmp_path / "index"
    index_dir.mkdir()
    before = ShardLayout(2, MINILM_MODEL, {}, "f" * 64, "shards/earlier")
    before.save(index_dir)
    flags = ["--corpus-dir", str(corpus), "--index-dir", str(index_dir), "--model", MINILM_MODEL]
    result = CliRunner().invoke(app, ["index", *flags, "--ray", "--shards", "4",
                                      "--address", ray_cluster])  # fmt: skip
    assert result.exit_code == 2
    assert "leave shard(s) [3] of 4 empty" in result.output and "fewer shards" in result.output
    assert ShardLayout.read(index_dir) == before


def test_a_cluster_that_does_not_answer_fails_at_once() -> None:
    with socket_bound() as port, pytest.raises(ClusterError) as refused:
        connect(f"127.0.0.1:{port}")
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in str(refused.value)
    assert "ray start --head" in str(refused.value)
    with pytest.raises(ClusterError, match="is not host:port"):
        connect("head-node")


def test_without_an_address_a_local_ray_is_started() -> None:
    """In a process of its own: this one is connected to the test cluster."""
    script = "from qa_service.distributed.cluster import connect; print(len(connect(None).nodes()))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=180)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"


def test_without_ray_installed_the_fix_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees when it is absent
    with pytest.raises(ClusterError, match=r"pip install 'qa-service\[ray\]'"):
        connect(None)


def test_ray_options_need_ray() -> None:
    result = CliRunner().invoke(app, ["index", "--shards", "2"])
    assert result.exit_code == 2
    assert "--address, --shards and --workers go with --ray" in result.output


class socket_bound:
    """A loopback port bound but not listening: connecting to it is refused."""

    def __enter__(self) -> int:
        import socket

        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        return int(self._socket.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self._socket.close()
