"""`qa serve --ray`: the HTTP API on Ray Serve over an index split into shards (issue 28).

Three deployments (docs/scaling.md):

- `ShardReplica`, one deployment per shard, each replica holding that shard's index in memory
  and answering the `query.sharded.Shard` calls (find, score, sentences, documents …);
- `QuestionEncoder`, the model, micro-batching the questions of every ingress replica into one
  model call (`@serve.batch`);
- the ingress, the same FastAPI app as `qa serve` (`api.create_app`) over a `ShardedService`
  whose shards are `RemoteShard` proxies to the shard deployments.

The BM25 statistics of the whole collection are put in Ray's object store once and sent by
reference: a shard replica fetches them once and keeps them, so that its BM25 weights, cached by
statistics, are computed once and not at every call.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from embeddings import EncoderBackend, Vectors, load_encoder
from embeddings.factory import recorded_backend
from qa_service.config import Settings
from qa_service.distributed.cluster import connect, import_ray
from qa_service.distributed.service import ShardedService
from qa_service.errors import ClusterError, DocumentNotFoundError, IndexBusyError
from qa_service.index.build import IndexSpec
from qa_service.index.shard_lexical import TermStatistics
from qa_service.index.shards import ShardLayout, shard_of
from qa_service.index.store import (
    IndexData,
    Manifest,
    current_generation_name,
    index_lock,
    load_index,
)
from qa_service.index.writes import DocumentUpdater, NewDocument, WriteMode, WriteResult
from qa_service.query.pipeline import Encode, QueryPipeline
from qa_service.query.sharded import ShardCatalogue, ShardSearcher
from qa_service.service import WRITE_LOCK_TIMEOUT, load_configured_reader, make_splitter

logger = logging.getLogger(__name__)
T = TypeVar("T")

APP_NAME = "qa"
# CPUs Ray reserves per replica: a shard's searches are short and its replicas many; the model
# takes a core; the ingress mostly waits on the others.
SHARD_CPUS = 0.5
ENCODER_CPUS = 1.0
INGRESS_CPUS = 0.0
# Questions of concurrent requests encoded in one model call, and how long the first waits for
# others (the in-process service batches the same way: embeddings/batching.py).
ENCODE_BATCH = 32
ENCODE_WAIT_SECONDS = 0.001
# Requests a replica takes at once (Serve's default, 5, queued most of 16 clients' questions:
# a question makes several short calls to each shard).
MAX_ONGOING = 64
# Waits before each new attempt at a call a dying replica dropped: Serve needs a moment to route
# around it, and some seconds to start another.
RETRY_SECONDS = (0.1, 0.5, 1.0, 2.0, 4.0, 8.0)
# Generations a shard replica keeps answering from: the latest and the one before, for the
# questions under way when a write lands.
HELD_GENERATIONS = 2
# What a shard replica answers: `query.sharded.Shard`'s calls.
SHARD_CALLS = frozenset({
    "stats", "highest_weight", "term_maxima", "find", "vectors", "sentences", "documents",
    "heads", "passage_counts", "word_counts", "acronyms",
})  # fmt: skip


@dataclass(frozen=True)
class StatsRef:
    """Global BM25 statistics by reference: the ref inside a list, so that Ray passes it as a
    reference rather than resolving it at every call."""

    ref: list[Any]


@dataclass(frozen=True)
class ShardState:
    """Which generation of its folder a shard replica serves, and what it holds."""

    generation: str | None
    passages: int
    manifest: Manifest


class ShardReplica:
    """One shard, loaded from its folder on the shared file system; it takes the writes to its
    documents, as `qa serve` does for one index (index/writes.py).

    It answers each call from the generation the call names: a question under way when a write
    lands goes on with the statistics and the shard it started with, so the replica keeps the
    previous generation as well (`HELD_GENERATIONS`)."""

    def __init__(
        self, folder: str, settings: Settings, model: str, backend: EncoderBackend
    ) -> None:
        self.folder = Path(folder)
        self._settings = settings
        self._model = (model, backend)
        self._held: OrderedDict[str | None, ShardSearcher] = OrderedDict()
        self._serve(load_index(self.folder, settings.index_config()))
        self._stats: dict[str, TermStatistics] = {}  # by object ref, the latest few
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # this replica's writers; `index_lock` across them
        self._updater: DocumentUpdater | None = None

    @property
    def _latest(self) -> ShardSearcher:
        return next(reversed(self._held.values()))

    def state(self, generation: str | None = None) -> ShardState:
        """What it serves: `generation` (taken up from the folder first if needed), or else the
        latest it holds."""
        searcher = self._latest if generation is None else self._searcher(generation)
        return ShardState(searcher.index.generation, searcher.passages, searcher.manifest)

    def call(self, method: str, args: tuple[Any, ...], generation: str | None) -> Any:
        """A `Shard` call, answered from `generation`."""
        if method not in SHARD_CALLS:
            raise ValueError(f"a shard does not answer {method!r}")
        searcher = self._searcher(generation)
        resolved = [self._resolve(a) if isinstance(a, StatsRef) else a for a in args]
        return getattr(searcher, method)(*resolved)

    def write(
        self, items: list[tuple[str, NewDocument]], mode: WriteMode
    ) -> tuple[ShardState, list[WriteResult]]:
        """Durable in the folder (a new current generation) before it returns."""
        updater = self._writer()
        prepared = updater.prepare(self._latest.index, items, mode)  # the slow part, unlocked
        with self._writing():
            data, results = updater.commit(self._latest.index, prepared, mode)
            self._serve(data)
        return self.state(), results

    def remove(self, ids: list[str]) -> ShardState:
        updater = self._writer()
        with self._writing():
            self._serve(updater.remove(self._latest.index, ids))
        return self.state()

    def _serve(self, data: IndexData) -> None:
        searcher = ShardSearcher(data)
        self._held[data.generation] = searcher
        self._held.move_to_end(data.generation)
        while len(self._held) > HELD_GENERATIONS:
            self._held.popitem(last=False)

    def _searcher(self, generation: str | None) -> ShardSearcher:
        found = self._held.get(generation)
        if found is None:
            self._catch_up()
            found = self._held.get(generation)
        if found is None:
            raise ClusterError(
                f"shard {self.folder} no longer holds generation {generation} (written over "
                "twice since the question started); ask again"
            )
        return found

    @contextmanager
    def _writing(self) -> Iterator[None]:
        if not self._write_lock.acquire(timeout=WRITE_LOCK_TIMEOUT):
            raise IndexBusyError("another write is in progress; try again shortly")
        try:
            with index_lock(self.folder, timeout=WRITE_LOCK_TIMEOUT):
                self._catch_up()
                yield
        finally:
            self._write_lock.release()

    def _catch_up(self) -> None:
        """Take up the folder's current generation, if another replica made a newer one."""
        with self._lock:
            if current_generation_name(self.folder) not in self._held:
                self._serve(load_index(self.folder, self._settings.index_config()))

    def _writer(self) -> DocumentUpdater:
        """The model is loaded at the first write: a shard that is only read never needs it."""
        if self._updater is None:
            settings = self._settings
            if not self._latest.manifest.corpus_files:
                raise ClusterError(
                    f"shard {self.folder} does not record its corpus files; rebuild the shards "
                    "with `qa index --ray --shards N`"
                )
            model, backend = self._model
            encoder = load_encoder(model, backend, settings.index_dir / "models")
            self._updater = DocumentUpdater(IndexSpec(
                settings.corpus_dir, self.folder, encoder, make_splitter(settings, encoder),
                settings.batch_size, settings.index_config(),
            ))  # fmt: skip
        return self._updater

    def _resolve(self, stats: StatsRef) -> TermStatistics:
        [ref] = stats.ref
        key = ref.hex()
        with self._lock:
            found = self._stats.get(key)
        if found is None:
            found = import_ray().get(ref)
            with self._lock:
                if len(self._stats) >= 4:
                    self._stats.pop(next(iter(self._stats)))
                found = self._stats.setdefault(key, found)
        return found


class QuestionEncoder:
    """The question encoder, one model call for the questions of many requests."""

    def __init__(self, model: str, backend: EncoderBackend, models_dir: str) -> None:
        from ray import serve

        self.encoder = load_encoder(model, backend, Path(models_dir))

        async def encode_batch(requests: list[list[str]]) -> list[Vectors]:
            flat = [t for texts in requests for t in texts]
            vectors = await asyncio.to_thread(self.encoder.encode_queries, flat)
            bounds = np.cumsum([0, *(len(texts) for texts in requests)])
            return [vectors[a:b] for a, b in itertools.pairwise(bounds)]

        self._batched = serve.batch(
            max_batch_size=ENCODE_BATCH, batch_wait_timeout_s=ENCODE_WAIT_SECONDS
        )(encode_batch)

    async def encode(self, texts: list[str]) -> Vectors:
        result: Vectors = await self._batched(texts)
        return result


def retried(call: Callable[[], Any]) -> Any:
    """`call`, sent again when the replica it went to died: every call to a shard or the
    encoder only reads, and Serve routes the next one to a live replica."""
    from ray.exceptions import RayActorError

    for wait in RETRY_SECONDS:
        try:
            return call()
        except RayActorError as exc:
            logger.warning("a replica is gone (%s); asking again in %.1f s", exc, wait)
            time.sleep(wait)
    return call()


class RemoteShard:
    """A `query.sharded.Shard` whose calls go to a shard's deployment (`retried` if its
    replica dies), all naming one generation of the shard, so that a question's calls read one
    state of it, the one its statistics were summed from."""

    def __init__(
        self, handle: Any, folder: Path, published: Published, state: ShardState | None = None
    ) -> None:
        self._handle = handle
        self.folder = folder
        self._published = published
        self.state: ShardState = state or retried(lambda: handle.state.remote().result())

    def at(self, state: ShardState) -> RemoteShard:
        """The same shard at another generation."""
        return RemoteShard(self._handle, self.folder, self._published, state)

    @property
    def passages(self) -> int:
        return self.state.passages

    @property
    def manifest(self) -> Manifest:
        return self.state.manifest

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method not in SHARD_CALLS:
            raise AttributeError(method)

        def call(*args: Any) -> Any:
            sent = tuple(
                self._published.ref(a) if isinstance(a, TermStatistics) else a for a in args
            )
            generation = self.state.generation
            return retried(lambda: self._handle.call.remote(method, sent, generation).result())

        return call

    def write(
        self, items: list[tuple[str, NewDocument]], mode: WriteMode
    ) -> tuple[ShardState, list[WriteResult]]:
        """Not sent again if the replica dies: whether it was written is then unknown."""
        written: tuple[ShardState, list[WriteResult]]
        written = _once(lambda: self._handle.write.remote(items, mode).result())
        return written

    def remove(self, ids: list[str]) -> ShardState:
        state: ShardState = _once(lambda: self._handle.remove.remote(ids).result())
        return state

    def changed(self) -> bool:
        """Whether the folder's current generation is another than this one."""
        return current_generation_name(self.folder) not in (None, self.state.generation)

    def latest(self) -> RemoteShard:
        """This shard at its folder's current generation (itself if that is this one)."""
        current = current_generation_name(self.folder)
        if current in (None, self.state.generation):
            return self
        return self.at(retried(lambda: self._handle.state.remote(current).result()))


def _once(call: Callable[[], Any]) -> Any:
    from ray.exceptions import RayActorError

    try:
        return call()
    except RayActorError as exc:
        raise ClusterError(
            f"the shard's replica failed during the write ({exc}); it may or may not have been "
            "written: look the document up, then send it again"
        ) from exc


class Published:
    """The statistics put in the object store, once each (the latest is kept alive)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: tuple[TermStatistics, StatsRef] | None = None

    def ref(self, stats: TermStatistics) -> StatsRef:
        with self._lock:
            if self._latest is None or self._latest[0] is not stats:
                self._latest = (stats, StatsRef([import_ray().put(stats)]))
            return self._latest[1]


class ClusterService(ShardedService):
    """The ingress's service: each write goes to the shard that owns its document (`shard_of`),
    and is acknowledged once that shard's new generation is durable and this service answers
    from it; the other ingress replicas take it up at their next question (`_snapshot`)."""

    def __init__(self, shards: list[RemoteShard], encode: Encode, settings: Settings) -> None:
        super().__init__(
            shards, encode, settings.min_score, settings.top_k, settings.mode,
            settings.dense_weight, settings.max_wait_seconds, load_configured_reader(settings),
        )  # fmt: skip
        self._remote = shards
        self._writes = threading.Lock()  # a write and the reload after it, one at a time

    def add_documents(
        self, items: Sequence[tuple[str, NewDocument]], mode: WriteMode = "create"
    ) -> list[WriteResult]:
        written: dict[str, WriteResult] = {}
        with self._writes, self._reloading() as shards:
            for n, mine in self._by_shard(items, lambda item: item[0]).items():
                state, results = shards[n].write(mine, mode)
                shards[n] = shards[n].at(state)
                written.update((result.document.id, result) for result in results)
        return [written[doc_id] for doc_id, _ in items]

    def remove_documents(self, ids: Sequence[str]) -> None:
        for doc_id in ids:
            if doc_id not in self.index.documents:
                raise DocumentNotFoundError(doc_id)
        with self._writes, self._reloading() as shards:
            for n, mine in self._by_shard(ids, lambda doc_id: doc_id).items():
                shards[n] = shards[n].at(shards[n].remove(mine))

    @property
    def index(self) -> ShardCatalogue:
        self._take_up_writes()
        return super().index

    def _snapshot(self) -> tuple[ShardCatalogue, QueryPipeline]:
        self._take_up_writes()
        return super()._snapshot()

    def _take_up_writes(self) -> None:
        """Every read first looks whether a shard has a newer generation (one readlink per
        shard): a write acknowledged by another ingress replica is then seen here too."""
        if any(shard.changed() for shard in self._remote):
            self.refresh()

    def refresh(self) -> bool:
        with self._writes, self._reloading() as shards:
            shards[:] = [shard.latest() for shard in shards]
            return shards != self._remote

    @contextmanager
    def _reloading(self) -> Iterator[list[RemoteShard]]:
        """The shards to change; what changed, even if a later shard failed, is then served
        (a new snapshot: questions under way keep theirs). `_remote` follows the snapshot, not
        before it: a question that finds its shards current is answered from them, and one
        asked meanwhile sees them changed and waits for the reload."""
        shards = list(self._remote)
        try:
            yield shards
        finally:
            if shards != self._remote:
                self.shards = list(shards)
                self.reload()
                self._remote = shards

    def _by_shard(self, items: Sequence[T], key: Callable[[T], str]) -> dict[int, list[T]]:
        groups: dict[int, list[T]] = {}
        for item in items:
            groups.setdefault(shard_of(key(item), len(self._remote)), []).append(item)
        return groups


class Ingress:
    """The FastAPI app of `qa serve`, over the shards' deployments."""

    def __init__(
        self, settings: Settings, folders: list[str], shards: list[Any], encoder: Any
    ) -> None:
        self.settings = settings
        self._folders = folders
        self._shards = shards
        self._encoder = encoder

    def _service(self) -> ClusterService:
        """Made once the app is up, in a thread (its calls to the shards block): /readyz is
        false until then, as when `qa serve` loads its index."""
        published = Published()
        shards = [
            RemoteShard(handle, Path(folder), published)
            for handle, folder in zip(self._shards, self._folders, strict=True)
        ]
        encoder = self._encoder

        def encode(texts: Sequence[str]) -> Vectors:
            result: Vectors = retried(lambda: encoder.encode.remote(list(texts)).result())
            return result

        return ClusterService(shards, encode, self.settings)

    def __serve_build_asgi_app__(self) -> Any:
        from qa_service.api import create_app

        return create_app(self.settings, load=self._service)


def check_servable(settings: Settings) -> tuple[ShardLayout, str, EncoderBackend]:
    """The layout to serve, every shard checked, and the model that built it and its backend,
    before any replica starts."""
    load_configured_reader(settings)  # a missing or damaged reader, refused before replicas
    layout = ShardLayout.read(settings.index_dir)
    layout.manifests(settings.index_dir)
    model, backend = recorded_backend(layout.model)
    if settings.model is not None and settings.model != model:
        raise ClusterError(
            f"the shards were built with {model}, not {settings.model}: serve them with that "
            "model, or rebuild them with `qa index --ray --shards N`"
        )
    return layout, model, backend or settings.encoder_backend


def start(
    settings: Settings, address: str | None, replicas: int, proxy_location: str = "EveryNode"
) -> ShardLayout:
    """The app deployed on the cluster at `address` (None: a new local one), answering at
    settings.host:port on every node (`proxy_location`: or on the head only, "HeadOnly");
    returns once every replica has started."""
    layout, model, backend = check_servable(settings)
    connect(address)
    from ray import serve

    def deployment(cls: type, cpus: float) -> Any:
        return serve.deployment(
            num_replicas=replicas, max_ongoing_requests=MAX_ONGOING,
            ray_actor_options={"num_cpus": cpus},
        )(cls)  # fmt: skip

    shard = deployment(ShardReplica, SHARD_CPUS)
    encoder = deployment(QuestionEncoder, ENCODER_CPUS)
    ingress = deployment(serve.ingress()(Ingress), INGRESS_CPUS)
    folders = [str(folder) for folder in layout.folders(settings.index_dir)]
    shards = [
        shard.options(name=f"shard-{n:03d}").bind(folder, settings, model, backend)
        for n, folder in enumerate(folders)
    ]
    models_dir = str(settings.index_dir / "models")
    app = ingress.bind(settings, folders, shards, encoder.bind(model, backend, models_dir))
    serve.start(
        proxy_location=proxy_location,
        http_options={"host": settings.host, "port": settings.port},
    )
    serve.run(app, name=APP_NAME, route_prefix="/")
    return layout


def stop() -> None:
    from ray import serve

    serve.delete(APP_NAME)
