"""A real `qa serve` process, and a second web site that embeds its widget."""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from qa_service.config import Settings
from qa_service.service import QAService

HOST_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>An NGO's site</title></head>
<body><h1>Partner site</h1><p>Pages of another origin, with the widget embedded.</p>
<script src="{api}/widget.js" data-api="{api}" defer></script></body></html>
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Site:
    """A static site on its own port, reachable as two origins: 127.0.0.1 and localhost."""

    root: Path
    port: int

    @property
    def allowed_origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def refused_origin(self) -> str:
        return f"http://localhost:{self.port}"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="session")
def partner_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("partner-site")
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield Site(root, int(httpd.server_address[1]))
    finally:
        httpd.shutdown()


def server_log(settings: Settings, url: str) -> Path:
    """Where `launch` writes the output of the server at `url`."""
    port = url.rsplit(":", 1)[1]
    return Path(f"{settings.index_dir}-server-{port}.log")


def launch(
    settings: Settings, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `qa serve` on the settings' corpus and index and wait until it is ready."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "QA_CORPUS_DIR": str(settings.corpus_dir),
           "QA_INDEX_DIR": str(settings.index_dir), **(env or {})}  # fmt: skip
    log_path = server_log(settings, url)
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "qa_service.cli", "serve", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 300  # a hang guard; a loaded machine loads the model slowly
    while True:
        if process.poll() is not None:
            raise AssertionError(f"qa serve exited: {log_path.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("server did not become ready in 300 s")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def server(settings: Settings, service: QAService, partner_site: Site) -> Iterator[str]:
    """`qa serve` with CORS open to the partner site's 127.0.0.1 origin only."""
    # `service` built the index already, so start-up only loads it.
    process, url = launch(settings, {"QA_CORS_ORIGINS": partner_site.allowed_origin})
    (partner_site.root / "index.html").write_text(HOST_PAGE.format(api=url))
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
