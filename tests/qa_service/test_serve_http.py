"""`qa serve` as a real process, spoken to over HTTP like any client would."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from qa_service.config import Settings
from qa_service.service import QAService


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(settings: Settings, service: QAService) -> Iterator[str]:
    # `service` built the index already, so start-up only loads it.
    port = _free_port()
    env = {**os.environ, "QA_CORPUS_DIR": str(settings.corpus_dir),
           "QA_INDEX_DIR": str(settings.index_dir)}  # fmt: skip
    log_path = Path(str(settings.index_dir) + "-server.log")
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "qa_service.cli", "serve", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300  # a hang guard; a loaded machine loads the model slowly
    try:
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready in 300 s"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow
def test_ask_over_http(server: str) -> None:
    response = httpx.post(
        f"{server}/v1/ask",
        json={"question": "Which bodies supported the first joint investigation team?"},
        timeout=30,
    )
    assert response.status_code == 200
    body = response.json()
    assert body["answerable"]
    top = body["passages"][0]
    assert "UNODC and Eurojust" in top["text"]
    document = httpx.get(f"{server}/v1/documents/{top['document_id']}", timeout=10).json()
    assert document["text"][top["start"] : top["end"]] == top["text"]


@pytest.mark.slow
def test_bad_requests_over_http_are_clean_json(server: str) -> None:
    response = httpx.post(
        f"{server}/v1/ask", content=b"{", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/json"
    assert httpx.get(f"{server}/v1/documents/missing").status_code == 404
    assert httpx.get(f"{server}/no-such-route").status_code == 404
