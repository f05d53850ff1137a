"""`qa index --ray`: the corpus indexed into shards on a Ray cluster (issue 28).

Ray Data carries the corpus's file list through a pool of actors (`map_batches` with a callable
class), each of which loads the model once, then loads, splits and encodes batches of files with
the same code as a single-machine build; the encoded documents are grouped by shard
(`shards.shard_of`) and each shard is assembled and saved as a normal index by one task
(`build.assemble_index`, `store.save_index`). A document's vectors do not depend on the others,
so each shard holds exactly what a single-machine build would hold for its documents.

A build writes a new set of shard folders and then `shards.json` naming them, so a build that
fails half-way leaves the shards being served as they were. Every node reads the corpus and
writes the index at the same paths: on a real cluster both live on a shared file system
(docs/scaling.md).
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from embeddings import Encoder, EncoderBackend, load_encoder
from qa_service.config import Settings
from qa_service.corpus.documents import (
    METADATA_FILE,
    DocumentLoadError,
    SkippedFile,
    listed_documents,
    load_file,
    read_metadata,
)
from qa_service.corpus.fingerprint import MEMO_FILE, corpus_files, fingerprint_of
from qa_service.distributed.cluster import connect
from qa_service.errors import ClusterError
from qa_service.index.build import assemble_index, passage_settings
from qa_service.index.encode import EmbeddingCache, EncodedPassages, encode_documents
from qa_service.index.shards import SHARDS_DIR, ShardLayout, shard_of
from qa_service.index.store import index_lock, save_index
from qa_service.service import configured_model, make_splitter

logger = logging.getLogger(__name__)

# CPUs Ray reserves for each encoding actor, and the threads its model runs on.
CPUS_PER_ACTOR = 1
# Files an actor loads and encodes per call: enough for full model batches, few enough that
# the actors share the work evenly.
FILES_PER_BATCH = 8

Batch = dict[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class ShardJob:
    """What every actor and writer of one build needs, sent to them by Ray."""

    settings: Settings
    model: str  # to load (`configured_model`)
    backend: EncoderBackend
    encoder_name: str  # what the index records
    dimension: int
    passage_settings: dict[str, Any]
    count: int
    folder: str  # below the index folder: this build's shard folders

    def shard_folder(self, shard: int) -> Path:
        return self.settings.index_dir / self.folder / f"{shard:03d}"

    def load_encoder(self) -> Encoder:
        """The model for an actor: as many threads as the CPUs Ray gives it."""
        cache = self.settings.index_dir / "models"
        return load_encoder(self.model, self.backend, cache, threads=CPUS_PER_ACTOR)


@dataclass(frozen=True)
class ShardedBuildReport:
    index_dir: Path
    layout: ShardLayout
    documents: list[int]  # per shard
    passages: list[int]
    skipped: list[SkippedFile]
    seconds: float


class EncodeFiles:
    """One actor of the pool: the model loaded once, then batches of files loaded, split and
    encoded. A file that cannot be read comes out as a row of shard -1 saying why."""

    def __init__(self, job: ShardJob) -> None:
        self.job = job
        self.encoder = job.load_encoder()
        self.splitter = make_splitter(job.settings, self.encoder)
        self.metadata = read_metadata(job.settings.corpus_dir)

    def __call__(self, batch: Batch) -> Batch:
        corpus_dir = self.job.settings.corpus_dir
        rows: list[tuple[int, int, bytes]] = []
        loaded = []
        for order, doc_id, path, sha, shard in zip(
            batch["order"], batch["document_id"], batch["path"], batch["sha256"], batch["shard"],
            strict=True,
        ):  # fmt: skip
            try:
                fields = self.metadata.get(doc_id)
                document = load_file(corpus_dir, corpus_dir / path, doc_id, fields)
            except (DocumentLoadError, OSError) as exc:
                rows.append((-1, int(order), pickle.dumps((str(path), str(exc)))))
                continue
            loaded.append((int(shard), int(order), self.splitter.split(document), (path, sha)))
        if loaded:
            chunked = [c for _, _, c, _ in loaded]
            encoded = encode_documents(
                chunked, self.splitter, self.encoder, EmbeddingCache(self.encoder.name), True,
                "preceding_context" in self.job.passage_settings, self.job.settings.batch_size,
            )  # fmt: skip
            for (shard, order, c, file), part in zip(loaded, encoded.split(chunked), strict=True):
                rows.append((shard, order, pickle.dumps((c, part, file))))
        return {
            "shard": np.array([r[0] for r in rows], dtype=np.int64),
            "order": np.array([r[1] for r in rows], dtype=np.int64),
            "payload": np.array([r[2] for r in rows], dtype=object),
        }


def write_shard(batch: Batch, job: ShardJob, metadata_sha: str | None) -> Batch:
    """Every encoded document of one shard, in corpus order, saved as that shard's index; for
    shard -1, the files that could not be read."""
    shard = int(batch["shard"][0])
    payloads = [pickle.loads(batch["payload"][i]) for i in np.argsort(batch["order"])]
    if shard < 0:
        return _written(shard, 0, 0, payloads)
    chunked = [c for c, _, _ in payloads]
    files = {path: sha for _, _, (path, sha) in payloads}
    if metadata_sha is not None:  # its fields are part of every document
        files[METADATA_FILE] = metadata_sha
    data = assemble_index(
        chunked, EncodedPassages.concatenate([part for _, part, _ in payloads]),
        job.encoder_name, job.dimension, job.passage_settings, fingerprint_of(files), files,
        job.settings.index_config(), shard=True,
    )  # fmt: skip
    folder = job.shard_folder(shard)
    with index_lock(folder):
        save_index(folder, data)
    return _written(shard, len(chunked), len(data.passages), [])


def _written(shard: int, documents: int, passages: int, skipped: list[Any]) -> Batch:
    return {
        "shard": np.array([shard]),
        "documents": np.array([documents]),
        "passages": np.array([passages]),
        "skipped": np.array([json.dumps(skipped)], dtype=object),
    }


def build_shards(
    settings: Settings, count: int, address: str | None = None, workers: int | None = None
) -> ShardedBuildReport:
    """Index the corpus folder into `count` shards on the Ray cluster at `address` (a new local
    one if None), encoding with `workers` actors (default: one per node)."""
    if count < 1:
        raise ValueError("--shards must be at least 1")
    started = time.perf_counter()
    ray = connect(address)
    model, backend = configured_model(settings)
    encoder = load_encoder(model, backend, settings.index_dir / "models")  # exported once, here
    settings_for_passages = passage_settings(make_splitter(settings, encoder), encoder.name)
    listed, skipped = listed_documents(settings.corpus_dir)
    index_dir = settings.index_dir
    index_dir.mkdir(parents=True, exist_ok=True)
    with index_lock(index_dir):
        hashes = corpus_files(settings.corpus_dir, index_dir / MEMO_FILE)
        root = settings.corpus_dir
        items: list[dict[str, Any]] = []
        for n, (doc_id, path) in enumerate(listed):
            relative = path.relative_to(root).as_posix()
            shard = shard_of(doc_id, count)
            items.append({"order": n, "document_id": doc_id, "path": relative,
                          "sha256": hashes[relative], "shard": shard})  # fmt: skip
        _check_every_shard_has_documents(items, count)
        job = ShardJob(
            settings, model, backend, encoder.name, encoder.dimension, settings_for_passages,
            count, f"{SHARDS_DIR}/{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}",
        )  # fmt: skip
        nodes = sum(1 for node in ray.nodes() if node["Alive"])
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        pool = ray.data.ActorPoolStrategy(size=workers or nodes)
        encoded = ray.data.from_items(items).map_batches(
            EncodeFiles, fn_constructor_args=(job,), batch_size=FILES_PER_BATCH,
            batch_format="numpy", compute=pool, num_cpus=CPUS_PER_ACTOR,
        )  # fmt: skip
        # One group per shard, and one for the files that could not be read.
        written = encoded.groupby("shard", num_partitions=count + 1).map_groups(
            write_shard, fn_args=(job, hashes.get(METADATA_FILE)), batch_format="numpy"
        )
        try:
            rows = written.take_all()
        except Exception:
            shutil.rmtree(index_dir / job.folder, ignore_errors=True)
            raise
        documents, passages = [0] * count, [0] * count
        for row in rows:
            shard = int(row["shard"])
            if shard < 0:
                skipped.extend(SkippedFile(root / p, why) for p, why in json.loads(row["skipped"]))
            else:
                documents[shard], passages[shard] = int(row["documents"]), int(row["passages"])
        if empty := [n for n in range(count) if not documents[n]]:
            shutil.rmtree(index_dir / job.folder, ignore_errors=True)
            raise ClusterError(
                f"no readable document went to shard(s) {empty} of {count}: index with fewer shards"
            )
        layout = ShardLayout(
            count, encoder.name, settings_for_passages, fingerprint_of(hashes), job.folder
        )
        layout.save(index_dir)
        _remove_other_builds(index_dir, keep=job.folder)
    seconds = time.perf_counter() - started
    logger.info("indexed %d documents into %d shards in %.1f s", sum(documents), count, seconds)
    skipped.sort(key=lambda s: str(s.path))
    return ShardedBuildReport(index_dir, layout, documents, passages, skipped, seconds)


def _check_every_shard_has_documents(items: list[dict[str, Any]], count: int) -> None:
    if not items:
        raise ValueError("no files in the corpus folder; nothing to index")
    held = {item["shard"] for item in items}
    if empty := sorted(set(range(count)) - held):
        raise ClusterError(
            f"{len(items)} documents leave shard(s) {empty} of {count} empty (documents go to "
            "shards by a hash of their id): index with fewer shards"
        )


def _remove_other_builds(index_dir: Path, keep: str) -> None:
    for folder in (index_dir / SHARDS_DIR).iterdir():
        if folder.is_dir() and f"{SHARDS_DIR}/{folder.name}" != keep:
            shutil.rmtree(folder, ignore_errors=True)
