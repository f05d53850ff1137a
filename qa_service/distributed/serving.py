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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embeddings import EncoderBackend, Vectors, load_encoder
from embeddings.factory import recorded_backend
from qa_service.config import Settings
from qa_service.distributed.cluster import connect, import_ray
from qa_service.distributed.service import ShardedService
from qa_service.errors import ClusterError
from qa_service.index.shard_lexical import TermStatistics
from qa_service.index.shards import ShardLayout
from qa_service.index.store import Manifest, load_index
from qa_service.query.sharded import ShardSearcher

logger = logging.getLogger(__name__)

APP_NAME = "qa"
# CPUs Ray reserves per replica: a shard's searches are short and its replicas many; the model
# takes a core; the ingress mostly waits on the others.
SHARD_CPUS = 0.5
ENCODER_CPUS = 1.0
INGRESS_CPUS = 0.0
# Questions of concurrent requests encoded in one model call, and how long the first waits for
# others (the in-process service batches the same way: embeddings/batching.py).
ENCODE_BATCH = 32
ENCODE_WAIT_SECONDS = 0.005
# Waits before each new attempt at a call a dying replica dropped: Serve needs a moment to route
# around it, and some seconds to start another.
RETRY_SECONDS = (0.1, 0.5, 1.0, 2.0, 4.0, 8.0)
# What a shard replica answers: `query.sharded.Shard`'s calls.
SHARD_CALLS = frozenset({
    "stats", "highest_weight", "term_maxima", "find", "score", "sentences", "documents",
    "passage_counts", "word_counts", "acronyms",
})  # fmt: skip


@dataclass(frozen=True)
class StatsRef:
    """Global BM25 statistics by reference: the ref inside a list, so that Ray passes it as a
    reference rather than resolving it at every call."""

    ref: list[Any]


class ShardReplica:
    """One shard, loaded from the shared file system."""

    def __init__(self, folder: str, settings: Settings) -> None:
        self.searcher = ShardSearcher(load_index(Path(folder), settings.index_config()))
        self._stats: dict[str, TermStatistics] = {}  # by object ref, the latest few
        self._lock = threading.Lock()

    def describe(self) -> tuple[int, Manifest]:
        return self.searcher.passages, self.searcher.manifest

    def call(self, method: str, args: tuple[Any, ...]) -> Any:
        if method not in SHARD_CALLS:
            raise ValueError(f"a shard does not answer {method!r}")
        resolved = [self._resolve(a) if isinstance(a, StatsRef) else a for a in args]
        return getattr(self.searcher, method)(*resolved)

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
    replica dies)."""

    def __init__(self, handle: Any, published: Published) -> None:
        self._handle = handle
        self._published = published
        self.passages, self.manifest = retried(lambda: handle.describe.remote().result())

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method not in SHARD_CALLS:
            raise AttributeError(method)

        def call(*args: Any) -> Any:
            sent = tuple(
                self._published.ref(a) if isinstance(a, TermStatistics) else a for a in args
            )
            return retried(lambda: self._handle.call.remote(method, sent).result())

        return call


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


class Ingress:
    """The FastAPI app of `qa serve`, over the shards' deployments."""

    def __init__(self, settings: Settings, shards: list[Any], encoder: Any) -> None:
        self.settings = settings
        self._shards = shards
        self._encoder = encoder

    def _service(self) -> ShardedService:
        """Made once the app is up, in a thread (its calls to the shards block): /readyz is
        false until then, as when `qa serve` loads its index."""
        settings, handles, encoder = self.settings, self._shards, self._encoder
        published = Published()
        shards = [RemoteShard(h, published) for h in handles]

        def encode(texts: Sequence[str]) -> Vectors:
            result: Vectors = retried(lambda: encoder.encode.remote(list(texts)).result())
            return result

        return ShardedService(
            shards, encode, settings.min_score, settings.top_k, settings.mode,
            settings.dense_weight, settings.max_wait_seconds,
        )  # fmt: skip

    def __serve_build_asgi_app__(self) -> Any:
        from qa_service.api import create_app

        return create_app(self.settings, load=self._service)


def check_servable(settings: Settings) -> tuple[ShardLayout, str, EncoderBackend]:
    """The layout to serve, every shard checked, and the model that built it and its backend,
    before any replica starts."""
    if settings.reader:
        raise ClusterError("the reader is not served on Ray yet: set QA_READER=false")
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
        return serve.deployment(num_replicas=replicas, ray_actor_options={"num_cpus": cpus})(cls)

    shard = deployment(ShardReplica, SHARD_CPUS)
    encoder = deployment(QuestionEncoder, ENCODER_CPUS)
    ingress = deployment(serve.ingress()(Ingress), INGRESS_CPUS)
    shards = [
        shard.options(name=f"shard-{n:03d}").bind(str(folder), settings)
        for n, folder in enumerate(layout.folders(settings.index_dir))
    ]
    models_dir = str(settings.index_dir / "models")
    app = ingress.bind(settings, shards, encoder.bind(model, backend, models_dir))
    serve.start(
        proxy_location=proxy_location,
        http_options={"host": settings.host, "port": settings.port},
    )
    serve.run(app, name=APP_NAME, route_prefix="/")
    return layout


def stop() -> None:
    from ray import serve

    serve.delete(APP_NAME)
