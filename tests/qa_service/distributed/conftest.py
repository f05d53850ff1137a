"""A real Ray cluster of two nodes on this machine, as `ray start` makes one: a head and a
worker, each its own raylet with two CPUs (to Ray: this machine has two in all), on the
loopback address."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import TypedDict

import pytest

from qa_service.distributed.cluster import connect

STARTUP_SECONDS = 120
# Without it Ray 2.60 turns token authentication on by itself once ~/.ray/auth_token exists
# (a local `ray.init()` writes one), and the test nodes and driver then disagreed about the
# token. These clusters live on the loopback address for one test session: no tokens, and
# nothing written to the home folder.
os.environ["RAY_AUTH_MODE"] = "disabled"
# `ray start`, run by this interpreter (the `ray` script may not be on PATH).
RAY = [sys.executable, "-m", "ray.scripts.scripts", "start"]


class _Output(TypedDict):
    stdout: int
    stderr: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """The head's address, with this process connected to it. `--block` keeps each node's
    `ray start` in the foreground, so stopping it stops that node's processes and no other
    Ray on the machine."""
    port = _free_port()
    node = ["--node-ip-address=127.0.0.1", "--num-cpus=2", "--disable-usage-stats", "--block"]
    quiet: _Output = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    head = subprocess.Popen(
        [*RAY, "--head", f"--port={port}", "--include-dashboard=false", *node], **quiet
    )
    nodes = [head]
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not _answers(port):
            assert head.poll() is None, "the Ray head node did not start"
            assert time.monotonic() < deadline, "the Ray head node did not answer in time"
            time.sleep(0.2)
        address = f"127.0.0.1:{port}"
        nodes.append(subprocess.Popen([*RAY, f"--address={address}", *node], **quiet))
        ray = connect(address)
        while sum(1 for n in ray.nodes() if n["Alive"]) < 2:
            assert time.monotonic() < deadline, "the Ray worker node did not join in time"
            time.sleep(0.2)
        yield address
        ray.shutdown()
    finally:
        for process in reversed(nodes):
            process.terminate()
        for process in nodes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
