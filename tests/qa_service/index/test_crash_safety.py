"""Document writes against real `qa serve` processes: end to end, concurrent writers and readers,
the command line, and SIGKILL at random moments during a stream of writes.

Each server runs on its own small corpus (copied into tmp_path), so restarts are dominated by
loading the model, and the session's shared corpus and index are never written.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from qa_service.index.store import load_index

KEY = "crash-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
SMALL_CORPUS = {
    "harbour.txt": "The harbour of Durres is the largest port in Albania. Ferries leave for Bari "
    "every evening. Fishing boats return at dawn.",
    "forest.md": "# Forest\n\nBeech forests cover the slopes of the Sharr mountains. Brown bears "
    "and wolves live there. The park was founded in 1986.",
}
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    corpus: Path
    index: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    url: str = ""
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, "QA_CORPUS_DIR": str(self.corpus),
                    "QA_INDEX_DIR": str(self.index), "QA_API_KEYS": f"other-key,{KEY}",
                    "QA_INDEX_CHECK_SECONDS": "0.5"}  # fmt: skip
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "qa_service.cli", "serve", "--port", str(port)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 300
        while True:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready in 300 s"
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=60)
        self.process = None


def _make_server(root: Path) -> Server:
    corpus = root / "corpus"
    corpus.mkdir(parents=True)
    for name, text in SMALL_CORPUS.items():
        (corpus / name).write_text(text)
    return Server(corpus, root / "idx", root / "server.log")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = _make_server(tmp_path_factory.mktemp("writable-server"))
    running.start()
    try:
        yield running
    finally:
        running.stop()


def _fact(word: str) -> str:
    return f"The field station {word} recorded a rare orchid. Its keeper is called {word}keeper."


def _top_document(url: str, word: str) -> str:
    response = httpx.post(f"{url}/v1/ask", json={"question": f"Which orchid did {word} record?"},
                          timeout=30)  # fmt: skip
    assert response.status_code == 200, response.text
    return str(response.json()["passages"][0]["document_id"])


def _ids(url: str) -> set[str]:
    response = httpx.get(f"{url}/v1/documents", timeout=30)
    assert response.status_code == 200
    return {d["id"] for d in response.json()["documents"]}


def test_add_find_replace_delete(server: Server) -> None:
    url = server.url
    response = httpx.post(f"{url}/v1/documents", headers=AUTH, timeout=60,
                          json={"id": "stations/alpha", "text": _fact("Zorbulax")})  # fmt: skip
    assert response.status_code == 201, response.text
    assert _top_document(url, "Zorbulax") == "stations/alpha"

    files = {"file": ("alpha.txt", _fact("Quenthrop").encode())}
    response = httpx.put(f"{url}/v1/documents/stations/alpha", headers=AUTH, files=files,
                         timeout=60)  # fmt: skip
    assert response.status_code == 200, response.text
    document = httpx.get(f"{url}/v1/documents/stations/alpha").json()
    assert "Quenthrop" in document["text"] and "Zorbulax" not in document["text"]
    answer = httpx.post(f"{url}/v1/ask", json={"question": "Which orchid did Zorbulax record?",
                                               "mode": "lexical"}).json()  # fmt: skip
    assert all("Zorbulax" not in p["text"] for p in answer["passages"])
    assert _top_document(url, "Quenthrop") == "stations/alpha"

    assert httpx.delete(f"{url}/v1/documents/stations/alpha", headers=AUTH).status_code == 204
    assert "stations/alpha" not in _ids(url)
    answer = httpx.post(f"{url}/v1/ask", json={"question": "Which orchid did Quenthrop record?"})
    assert all(p["document_id"] != "stations/alpha" for p in answer.json()["passages"])


def test_concurrent_writers_and_readers(server: Server) -> None:
    url = server.url
    errors: list[str] = []
    done = threading.Event()
    words = [[f"Conc{w}x{i}" for i in range(4)] for w in range(3)]

    def write(mine: list[str]) -> None:
        with httpx.Client(timeout=120) as client:
            for word in mine:
                r = client.post(f"{url}/v1/documents", headers=AUTH,
                                json={"id": word.lower(), "text": _fact(word)})  # fmt: skip
                if r.status_code != 201:
                    errors.append(f"POST {word}: {r.status_code} {r.text}")

    def replace() -> None:
        with httpx.Client(timeout=120) as client:
            for version in range(4):
                r = client.put(f"{url}/v1/documents/versioned", headers=AUTH,
                               json={"text": _fact(f"Version{version}word")})  # fmt: skip
                if r.status_code not in (200, 201):
                    errors.append(f"PUT {version}: {r.status_code} {r.text}")

    def read() -> None:
        with httpx.Client(timeout=120) as client:
            while not done.is_set():
                r = client.post(f"{url}/v1/ask", json={"question": "Which orchid was recorded?"})
                listing = client.get(f"{url}/v1/documents")
                for response in (r, listing):
                    if response.status_code != 200:
                        errors.append(f"read: {response.status_code} {response.text}")

    writers = [threading.Thread(target=write, args=(w,)) for w in words]
    writers.append(threading.Thread(target=replace))
    readers = [threading.Thread(target=read) for _ in range(3)]
    for thread in writers + readers:
        thread.start()
    for thread in writers:
        thread.join()
    done.set()
    for thread in readers:
        thread.join()
    assert not errors, errors[:5]
    ids = _ids(url)
    for word in (w for mine in words for w in mine):
        assert word.lower() in ids
        assert _top_document(url, word) == word.lower()
    final = httpx.get(f"{url}/v1/documents/versioned").json()["text"]
    assert "Version3word" in final


def test_the_command_line_writes_locally_and_through_the_server(server: Server) -> None:
    note = server.corpus.parent / "Wren Notes.txt"
    note.write_text(_fact("Wrenthistle"))
    env = {**server.env, "QA_API_KEY": KEY}
    qa = [sys.executable, "-m", "qa_service.cli"]
    remote = subprocess.run([*qa, "add", str(note), "--url", server.url], env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert remote.returncode == 0, remote.stderr
    assert "wren-notes" in _ids(server.url)
    failed = subprocess.run([*qa, "add", str(note), "--url", server.url], env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert failed.returncode == 1 and "409" in failed.stderr

    # On the index folder, while the server runs: the server takes the new generation up.
    note.write_text(_fact("Larkspindle"))
    local = subprocess.run([*qa, "add", str(note), "--id", "lark", "--replace"], env=env,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert local.returncode == 0, local.stderr
    deadline = time.monotonic() + 10
    while "lark" not in _ids(server.url):
        assert time.monotonic() < deadline, "the server did not take up the CLI's write"
        time.sleep(0.2)
    assert _top_document(server.url, "Larkspindle") == "lark"

    removed = subprocess.run([*qa, "remove", "wren-notes", "--url", server.url], env=env,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert removed.returncode == 0, removed.stderr
    assert "wren-notes" not in _ids(server.url)


@dataclass
class Ledger:
    """What the server acknowledged, and the write in flight when it was killed."""

    acked: dict[str, str | None] = field(default_factory=dict)  # id -> text (None: deleted)
    in_flight: tuple[str, str | None] | None = None
    acknowledged: int = 0


def _write_stream(url: str, ledger: Ledger, rng: random.Random, round_: int) -> None:
    with httpx.Client(timeout=60) as client:
        for step in range(1000):
            live = [i for i, text in ledger.acked.items() if text is not None]
            choice = rng.random()
            try:
                if live and choice < 0.2:
                    doc_id = rng.choice(live)
                    ledger.in_flight = (doc_id, None)
                    r = client.delete(f"{url}/v1/documents/{doc_id}", headers=AUTH)
                    ok = r.status_code == 204
                elif live and choice < 0.45:
                    doc_id, text = rng.choice(live), _fact(f"Re{round_}s{step}word")
                    ledger.in_flight = (doc_id, text)
                    files = {"file": ("x.txt", text.encode())}
                    r = client.put(f"{url}/v1/documents/{doc_id}", headers=AUTH, files=files)
                    ok = r.status_code == 200
                else:
                    doc_id, text = f"crash-{round_}-{step}", _fact(f"Cr{round_}s{step}word")
                    ledger.in_flight = (doc_id, text)
                    r = client.post(f"{url}/v1/documents", headers=AUTH,
                                    json={"id": doc_id, "text": text})  # fmt: skip
                    ok = r.status_code == 201
            except httpx.TransportError:
                return  # killed
            assert ok, f"{r.status_code} {r.text}"
            ledger.acked[doc_id] = ledger.in_flight[1]
            ledger.in_flight = None
            ledger.acknowledged += 1


def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    seed = int(os.environ.get("QA_CRASH_SEED", time.time()))
    rng = random.Random(seed)
    server = _make_server(tmp_path)
    ledger = Ledger()
    server.start()
    try:
        for round_ in range(3):
            writer = threading.Thread(target=_write_stream,
                                      args=(server.url, ledger, rng, round_))  # fmt: skip
            writer.start()
            time.sleep(rng.uniform(0.5, 3.0))
            server.stop(signal.SIGKILL)
            writer.join(timeout=60)
            assert not writer.is_alive()
            server.start()
            _check_after_restart(server, ledger, seed)
    finally:
        server.stop()
    assert ledger.acknowledged >= 3, (seed, ledger)


def _check_after_restart(server: Server, ledger: Ledger, seed: int) -> None:
    """Every acknowledged write is there and searchable; the one in flight is wholly there or
    wholly absent. Folds the in-flight write into the ledger as it turned out."""
    load_index(server.index)  # every checksum verifies
    ids = _ids(server.url)
    flight, ledger.in_flight = ledger.in_flight, None
    for doc_id in ids - {"harbour", "forest"} - ledger.acked.keys():
        assert flight is not None and flight[0] == doc_id, (seed, doc_id)
    if flight is not None and flight[0] not in ledger.acked:
        ledger.acked[flight[0]] = None  # absent before it, so absent is allowed
    for doc_id, text in list(ledger.acked.items()):
        allowed = {text}
        if flight is not None and flight[0] == doc_id:
            allowed.add(flight[1])
        response = httpx.get(f"{server.url}/v1/documents/{doc_id}", timeout=30)
        actual = response.json()["text"] if response.status_code == 200 else None
        assert actual in allowed, (seed, doc_id, actual, allowed)
        ledger.acked[doc_id] = actual
        if actual is not None:
            assert _top_document(server.url, actual.split()[3]) == doc_id, (seed, doc_id)
