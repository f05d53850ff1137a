"""Joining a Ray cluster, or failing at once with the fix.

`ray.init` given an address nobody answers at retries for about a minute; a command line should
say within seconds that the address is wrong, so the head's port is tried first.
"""

from __future__ import annotations

import importlib
import ipaddress
import socket
from types import ModuleType
from typing import Any

from qa_service.errors import ClusterError

INSTALL = "pip install 'qa-service[ray]'"
# How long the head's port may take to accept a connection.
CONNECT_TIMEOUT = 5.0


def import_ray() -> ModuleType:
    try:
        return importlib.import_module("ray")
    except ImportError as exc:
        raise ClusterError(
            f"distributed indexing and serving need Ray, which is not installed ({exc}): "
            f"run `{INSTALL}` (on every node of the cluster)"
        ) from None


def _host_and_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(
            f"Ray address {address!r} is not host:port (the head's GCS port, 6379 unless "
            "`ray start --head --port` said otherwise)"
        )
    return host.strip("[]"), int(port)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def connect(address: str | None) -> ModuleType:
    """Ray, connected to the cluster whose head is at `address` (host:port), or to a new local
    one (None). Already connected: as it is, once the address is checked."""
    ray = import_ray()
    options: dict[str, Any] = {"log_to_driver": False}
    if address is not None:
        host, port = _host_and_port(address)
        try:
            socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
        except OSError as exc:
            raise ClusterError(
                f"no Ray cluster answers at {address} ({exc}): start one with `ray start "
                "--head --port=6379` on the head node, or give that node's host:port"
            ) from None
        if _is_loopback(host):  # a cluster of this machine's own nodes: keep to loopback
            options["_node_ip_address"] = "127.0.0.1"
    else:  # a new local Ray for this command ("local": not one an earlier `ray start` left)
        options["include_dashboard"] = False
    if ray.is_initialized():
        return ray
    try:
        ray.init(address=address or "local", **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterError(f"cannot join the Ray cluster at {address or 'a new local one'}: "
                           f"{exc}") from exc  # fmt: skip
    return ray
