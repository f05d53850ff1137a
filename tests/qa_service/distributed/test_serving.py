"""`qa serve --ray` on a real two-node Ray cluster: the HTTP API on Ray Serve answers as the
service over the same shards in one process (which answers as one index: test_service.py), and
goes on answering, every request, while shard and encoder replicas are killed; Serve replaces
them without a restart."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from embeddings import MINILM_MODEL, Encoder, ModelNotAvailableError
from qa_service.api.schemas import AskResponse
from qa_service.cli import app
from qa_service.config import Settings
from qa_service.distributed import serving
from qa_service.distributed.cluster import connect
from qa_service.distributed.indexing import build_shards
from qa_service.distributed.service import ShardedService
from qa_service.distributed.serving import ClusterService, Published, RemoteShard, ShardReplica
from qa_service.index.shards import ShardLayout, shard_of
from qa_service.index.store import current_generation_name, load_index
from qa_service.index.writes import NewDocument
from qa_service.query.pipeline import AskOptions
from qa_service.query.sharded import ShardSearcher
from tests.qa_service.conftest import free_port
from tests.qa_service.distributed.conftest import RAY
from tests.qa_service.distributed.test_service import assert_same, response
from tests.qa_service.query.test_sharded import OFF_TOPIC

pytestmark = pytest.mark.slow

READY_SECONDS = 240
KEY = "shard-writer"
REPLICAS = 2
CLIENTS = 4


@pytest.fixture(scope="module")
def sharded_settings(
    ray_cluster: str, corpus_copy: Path, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    folder = tmp_path_factory.mktemp("sharded")
    corpus = folder / "corpus"  # its own: the writes below add to it
    shutil.copytree(corpus_copy, corpus)
    settings = Settings(
        corpus_dir=corpus, index_dir=folder / "idx", model=MINILM_MODEL, encoder_backend="torch",
        host="127.0.0.1", port=free_port(), api_keys=[KEY],
    )  # fmt: skip
    build_shards(settings, 2, ray_cluster)
    return settings


@dataclass(frozen=True)
class Node:
    process: subprocess.Popen[bytes]  # its `ray start --block`
    node_id: str


@pytest.fixture(scope="module")
def extra_node(ray_cluster: str) -> Iterator[Node]:
    """A third node for this module's app, which a test takes away again: the session's two
    stay for the other tests."""
    ray = connect(ray_cluster)
    before = _alive_nodes(ray)
    command = [*RAY, f"--address={ray_cluster}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
               "--disable-usage-stats", "--block"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + READY_SECONDS
    while len(_alive_nodes(ray)) < 3:
        assert time.monotonic() < deadline, "the third Ray node did not join in time"
        time.sleep(0.2)
    [node_id] = _alive_nodes(ray) - before
    # Alive comes before the node's free CPUs reach the scheduler; until then Serve spreads
    # the replicas over the other two alone.
    while _free_cpus(node_id) < 2:
        assert time.monotonic() < deadline, "the third Ray node's CPUs were not seen in time"
        time.sleep(0.2)
    yield Node(process, node_id)
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=30)


def _alive_nodes(ray: Any) -> set[str]:
    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


def _free_cpus(node_id: str) -> float:
    from ray._private import state

    free = state.available_resources_per_node()  # type: ignore[no-untyped-call]  # Ray is untyped
    return float(free.get(node_id, {}).get("CPU", 0.0))


@pytest.fixture(scope="module")
def url(ray_cluster: str, sharded_settings: Settings, extra_node: Node) -> Iterator[str]:
    # Both nodes are this machine: one HTTP proxy, on the head, or they would share the port.
    serving.start(sharded_settings, ray_cluster, REPLICAS, proxy_location="HeadOnly")
    url = f"http://{sharded_settings.host}:{sharded_settings.port}"
    deadline = time.monotonic() + READY_SECONDS
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the app on Ray Serve did not become ready"
        time.sleep(0.5)
    yield url
    from ray import serve

    serving.stop()
    serve.shutdown()  # type: ignore[no-untyped-call]  # Ray Serve is untyped


@pytest.fixture(scope="module")
def in_process(sharded_settings: Settings, encoder: Encoder) -> ShardedService:
    """The same shards and model, in this process."""
    return _afresh(sharded_settings, encoder)


def _questions(dev_questions: list[dict[str, Any]]) -> list[str]:
    return [q["question"] for q in dev_questions][:12] + OFF_TOPIC


def _ask(url: str, question: str) -> dict[str, Any]:
    found = httpx.post(f"{url}/v1/ask", json={"question": question}, timeout=60)
    assert found.status_code == 200, found.text
    return AskResponse.model_validate(found.json()).model_dump()


def _without_time(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k != "took_ms"}


def test_the_api_on_ray_serve_answers_as_the_shards_do_in_process(
    url: str, in_process: ShardedService, dev_questions: list[dict[str, Any]]
) -> None:
    for question in _questions(dev_questions):
        assert_same(_without_time(_ask(url, question)),
                    _without_time(response(in_process.ask(question))))  # fmt: skip
    question = _questions(dev_questions)[0]  # diversity: the hits' vectors come from the shards
    diverse = httpx.post(f"{url}/v1/ask", json={"question": question, "diversity": 0.8}, timeout=60)
    expected = response(in_process.ask(question, AskOptions(diversity=0.8)))
    assert diverse.status_code == 200, diverse.text
    found = AskResponse.model_validate(diverse.json()).model_dump()
    assert_same(_without_time(found), _without_time(expected))
    assert expected["passages"] != response(in_process.ask(question))["passages"]
    ready = httpx.get(f"{url}/readyz").json()
    assert ready["documents"] == len(in_process.index.documents) == 5
    assert ready["passages"] == len(in_process.index.passages)
    listed = httpx.get(f"{url}/v1/documents").json()["documents"]
    assert {d["id"] for d in listed} == set(in_process.index.documents)
    some = listed[0]["id"]
    document = httpx.get(f"{url}/v1/documents/{some}").json()
    assert document["text"] == in_process.index.documents[some].text
    assert httpx.get(f"{url}/v1/ask", timeout=10).status_code == 405
    bad = httpx.post(f"{url}/v1/ask", json={"question": ""}, timeout=10)
    assert bad.status_code == 422


def _replicas(deployment: str) -> list[Any]:
    ray = connect(None)
    names = [
        a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(f"SERVE_REPLICA::{serving.APP_NAME}#{deployment}#")
    ]  # fmt: skip
    return [ray.get_actor(name, namespace="serve") for name in names]


def test_killed_replicas_lose_no_request_and_come_back(
    url: str, in_process: ShardedService, dev_questions: list[dict[str, Any]]
) -> None:
    questions = _questions(dev_questions)
    expected = {q: _without_time(response(in_process.ask(q))) for q in questions}
    answered: list[tuple[str, dict[str, Any]]] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def load(first: int) -> None:
        while not stop.is_set():
            for question in questions[first:] + questions[:first]:
                try:
                    answered.append((question, _without_time(_ask(url, question))))
                except BaseException as exc:
                    failures.append(exc)

    # Several clients at once, so that requests are under way on the replicas that die.
    clients = [threading.Thread(target=load, args=(n * 3,)) for n in range(CLIENTS)]
    for client in clients:
        client.start()
    try:
        time.sleep(2)
        ray = connect(None)
        for deployment in ("shard-000", "QuestionEncoder"):
            replicas = _replicas(deployment)
            assert len(replicas) == REPLICAS
            ray.kill(replicas[0], no_restart=True)
            time.sleep(3)
        deadline = time.monotonic() + READY_SECONDS
        while (
            len(_replicas("shard-000")) < REPLICAS or len(_replicas("QuestionEncoder")) < REPLICAS
        ):
            assert time.monotonic() < deadline, "Serve did not replace the killed replicas"
            time.sleep(1)
        before = len(answered)
        while len(answered) < before + len(questions):  # a round on the new replicas
            assert time.monotonic() < deadline
            time.sleep(0.5)
    finally:
        stop.set()
        for client in clients:
            client.join()
    assert not failures, failures[:3]
    for question, answer in answered:
        assert_same(answer, expected[question])


def test_serving_what_is_not_a_shard_layout_is_refused(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="no sharded index"):
        serving.check_servable(settings)
    # The reader is served (the ingress reads the hits), but a missing one is refused first.
    missing = settings.model_copy(update={"reader": True, "reader_dir": tmp_path})
    with pytest.raises(ModelNotAvailableError, match="reader"):
        serving.check_servable(missing)


NEW_TEXT = (
    "The harbour of Velmora keeps a register of every fishing boat. Since 2019 the register has "
    "been kept by the harbour master, Ilira Dushku, who inspects the boats each spring."
)
NEW_QUESTION = "Who keeps the register of fishing boats in the harbour of Velmora?"


def test_writes_go_to_the_owning_shard_and_survive_its_replicas(
    url: str, sharded_settings: Settings, encoder: Encoder
) -> None:
    """Acknowledged means durable and searchable: through whichever ingress replica answers
    next, after every replica of the owning shard is killed, and as the shards' folders now
    hold (compared with the shards loaded afresh in this process)."""
    index_dir = sharded_settings.index_dir
    layout = ShardLayout.read(index_dir)
    owner = shard_of("velmora", layout.count)
    before = [current_generation_name(f) for f in layout.folders(index_dir)]
    auth = {"Authorization": f"Bearer {KEY}"}
    body = {"title": "Velmora harbour", "text": NEW_TEXT}
    assert httpx.put(f"{url}/v1/documents/velmora", json=body, timeout=60).status_code == 401
    written = httpx.put(f"{url}/v1/documents/velmora", json=body, headers=auth, timeout=120)
    assert written.status_code == 201, written.text
    after = [current_generation_name(f) for f in layout.folders(index_dir)]
    assert [a != b for a, b in zip(after, before, strict=True)] == [
        n == owner for n in range(layout.count)
    ]  # a new generation of the owning shard only
    for _ in range(2 * REPLICAS):  # every ingress replica, whichever the proxy picks
        answer = _ask(url, NEW_QUESTION)
        assert answer["answerable"] and answer["answer"]["document_id"] == "velmora"
        assert "Ilira Dushku" in answer["passages"][0]["text"]

    ray = connect(None)
    for replica in _replicas(f"shard-{owner:03d}"):
        ray.kill(replica, no_restart=True)
    deadline = time.monotonic() + READY_SECONDS
    while len(_replicas(f"shard-{owner:03d}")) < REPLICAS:
        assert time.monotonic() < deadline, "Serve did not replace the killed replicas"
        time.sleep(1)
    answer = _ask(url, NEW_QUESTION)
    assert answer["passages"][0]["document_id"] == "velmora"
    afresh = _afresh(sharded_settings, encoder)
    assert_same(_without_time(answer), _without_time(response(afresh.ask(NEW_QUESTION))))

    removed = httpx.delete(f"{url}/v1/documents/velmora", headers=auth, timeout=60)
    assert removed.status_code == 204, removed.text
    assert httpx.get(f"{url}/v1/documents/velmora").status_code == 404
    answer = _ask(url, NEW_QUESTION)
    assert all(p["document_id"] != "velmora" for p in answer["passages"])
    missing = httpx.delete(f"{url}/v1/documents/no-such-document", headers=auth, timeout=60)
    assert missing.status_code == 404


class _InProcess:
    """What `RemoteShard` asks of a deployment handle (`.method.remote(...).result()`), on a
    replica in this process: two ingress services over the same real shard replicas, with no
    scheduling in between."""

    def __init__(self, replica: ShardReplica) -> None:
        self._replica = replica

    def __getattr__(self, method: str) -> Any:
        call = getattr(self._replica, method)
        return SimpleNamespace(remote=lambda *a: SimpleNamespace(result=lambda: call(*a)))


def test_a_question_asked_while_a_write_is_taken_up_waits_for_it(
    ray_cluster: str,
    sharded_settings: Settings,
    encoder: Encoder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another ingress replica acknowledged a write; this one takes it up at its next question.
    A question asked while that reload is under way waits for it, rather than being answered
    from the shards as they were before the acknowledged write."""
    connect(ray_cluster)  # the statistics go through the object store
    settings = sharded_settings.model_copy(
        update={"corpus_dir": tmp_path / "corpus", "index_dir": tmp_path / "idx"}
    )
    shutil.copytree(sharded_settings.corpus_dir, settings.corpus_dir)
    shutil.copytree(sharded_settings.index_dir, settings.index_dir, symlinks=True)
    layout, model, backend = serving.check_servable(settings)
    folders = layout.folders(settings.index_dir)
    replicas = [ShardReplica(str(folder), settings, model, backend) for folder in folders]

    def ingress() -> ClusterService:
        published = Published()
        pairs = zip(replicas, folders, strict=True)
        shards = [RemoteShard(_InProcess(replica), f, published) for replica, f in pairs]
        return ClusterService(shards, encoder.encode_queries, settings)

    writer, reader = ingress(), ingress()
    before = response(reader.ask(NEW_QUESTION))
    assert all(p["document_id"] != "velmora" for p in before["passages"])
    writer.add_documents([("velmora", NewDocument(NEW_TEXT.encode(), ".txt"))])

    reloading, release = threading.Event(), threading.Event()
    reload = reader.reload

    def held() -> None:
        reloading.set()
        release.wait(READY_SECONDS)
        reload()

    monkeypatch.setattr(reader, "reload", held)
    refresh = threading.Thread(target=reader.refresh)  # a first question taking the write up
    refresh.start()
    assert reloading.wait(READY_SECONDS)
    answers: list[dict[str, Any]] = []
    asked = threading.Thread(target=lambda: answers.append(response(reader.ask(NEW_QUESTION))))
    asked.start()
    asked.join(timeout=2)  # time enough to answer, had it not waited
    release.set()
    refresh.join()
    asked.join()
    assert answers[0]["passages"][0]["document_id"] == "velmora"


def test_a_lost_node_loses_no_write_and_the_service_recovers(
    url: str,
    ray_cluster: str,
    extra_node: Node,
    sharded_settings: Settings,
    encoder: Encoder,
    dev_questions: list[dict[str, Any]],
) -> None:
    """The third node goes away under load with replicas on it: every answer given is right,
    requests fail (a 5xx, or the connection) only until Serve has replaced what the node held,
    an acknowledged write is still there, and no restart is needed."""
    ray = connect(ray_cluster)
    auth = {"Authorization": f"Bearer {KEY}"}
    body = {"title": "Velmora harbour", "text": NEW_TEXT}
    assert httpx.put(f"{url}/v1/documents/velmora", json=body, headers=auth,
                     timeout=120).status_code == 201  # fmt: skip
    _hold_some_replicas(extra_node.node_id)

    questions = _questions(dev_questions)[:6]
    outcomes: list[tuple[float, str, dict[str, Any] | None]] = []
    stop = threading.Event()

    def load(first: int) -> None:
        while not stop.is_set():
            for question in questions[first:] + questions[:first]:
                try:
                    found = httpx.post(f"{url}/v1/ask", json={"question": question}, timeout=60)
                    answer = AskResponse.model_validate(found.json()).model_dump() \
                        if found.status_code == 200 else None  # fmt: skip
                except httpx.TransportError:
                    answer = None
                outcomes.append((time.monotonic(), question, answer))

    clients = [threading.Thread(target=load, args=(n,)) for n in range(CLIENTS)]
    for client in clients:
        client.start()
    try:
        time.sleep(2)
        extra_node.process.terminate()
        extra_node.process.wait(timeout=60)
        deadline = time.monotonic() + READY_SECONDS
        while (
            len(_alive_nodes(ray)) > 2
            or _replicas_on(extra_node.node_id)
            or any(
                len(_replicas(d)) < REPLICAS for d in ("shard-000", "shard-001", "QuestionEncoder")
            )
        ):
            assert time.monotonic() < deadline, "Serve did not replace the lost node's replicas"
            time.sleep(1)
        recovered = time.monotonic()
        while sum(1 for t, _, _ in outcomes if t > recovered + 5) < 2 * len(questions):
            assert time.monotonic() < deadline + 120, "no answers after the recovery"
            time.sleep(0.5)
    finally:
        stop.set()
        for client in clients:
            client.join()
    afresh = _afresh(sharded_settings, encoder)  # the shards with the write
    expected = {q: _without_time(response(afresh.ask(q))) for q in questions}
    for _, question, answer in outcomes:
        if answer is not None:
            assert_same(_without_time(answer), expected[question])
    failed_after = [t for t, _, answer in outcomes if answer is None and t > recovered + 5]
    assert not failed_after, f"{len(failed_after)} requests failed after the recovery"
    assert _ask(url, NEW_QUESTION)["answer"]["document_id"] == "velmora"


def _afresh(settings: Settings, encoder: Encoder) -> ShardedService:
    """The shards as their folders hold them now, loaded in this process."""
    folders = ShardLayout.read(settings.index_dir).folders(settings.index_dir)
    shards = [ShardSearcher(load_index(f)) for f in folders]
    return ShardedService(shards, encoder.encode_queries, None, settings.top_k)


def _hold_some_replicas(node_id: str) -> None:
    """Serve spreads replicas over the nodes, but nothing promises the third node keeps one
    after the tests above killed some: replicas elsewhere are replaced, one at a time, until
    the spread puts one there."""
    ray = connect(None)
    for attempt in range(8):
        if _replicas_on(node_id):
            return
        deployment = ("QuestionEncoder", "shard-000")[attempt % 2]
        before = _running(deployment)
        ray.kill(ray.get_actor(min(before), namespace="serve"), no_restart=True)  # elsewhere
        deadline = time.monotonic() + READY_SECONDS
        while not _running(deployment) - before or len(_running(deployment)) < REPLICAS:
            assert time.monotonic() < deadline, "Serve did not replace a killed replica"
            time.sleep(1)
    assert _replicas_on(node_id), "Serve placed no replica on the third node"


def _replicas_on(node_id: str) -> list[str]:
    return [name for name, node in _placed() if node == node_id]


def _running(deployment: str) -> set[str]:
    prefix = f"SERVE_REPLICA::{serving.APP_NAME}#{deployment}#"
    return {name for name, _ in _placed() if name.startswith(prefix)}


def _placed() -> list[tuple[str, str]]:
    """The app's running replicas, each with the node it runs on."""
    from ray._private import state

    return [
        (a["Name"], a["Address"]["NodeID"]) for a in state.actors().values()
        if a["State"] == "ALIVE" and a["Name"].startswith(f"SERVE_REPLICA::{serving.APP_NAME}#")
    ]  # fmt: skip


def test_a_call_a_dying_actor_dropped_is_sent_again(ray_cluster: str, tmp_path: Path) -> None:
    """`retried` on a real actor that dies in the middle of its first call; Ray restarts it."""
    ray = connect(ray_cluster)
    marker = tmp_path / "died-once"

    @ray.remote(max_restarts=2, max_task_retries=0, num_cpus=0)
    class DiesOnce:
        def ask(self) -> str:
            if not marker.exists():
                marker.touch()
                os._exit(1)
            return "answered"

    actor = DiesOnce.remote()  # type: ignore[attr-defined]  # added by @ray.remote
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(
            actor.ask.remote()
        )  # the call the death dropped, as a caller without retries sees it
    marker.unlink()
    assert serving.retried(lambda: ray.get(actor.ask.remote())) == "answered"
    assert marker.exists()  # it died once more, and was asked again
    ray.kill(actor)


def test_qa_serve_ray_options_and_what_it_refuses(tmp_path: Path, corpus_copy: Path) -> None:
    result = CliRunner().invoke(app, ["serve", "--replicas", "2"])
    assert result.exit_code == 2
    assert "--address and --replicas go with --ray" in result.output
    flags = ["--index-dir", str(tmp_path / "idx"), "--corpus-dir", str(corpus_copy)]
    result = CliRunner().invoke(app, ["serve", "--ray", *flags])
    assert result.exit_code != 0
    assert "qa index --ray --shards N" in result.output  # refused before any Ray starts
