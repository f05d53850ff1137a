"""Files that a crash leaves whole or untouched, their checksums, and the lock that serialises
their writers across processes.

Both packages write such files (the ONNX export cache here; the index and the corpus in
`qa_service`), so the helpers live in the lower one, once.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make the folder's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically: written beside it, fsynced, renamed, folder fsynced.

    The temporary name is hidden, so a crash leaves nothing a folder scan (the corpus loader, an
    export cache) would read.
    """
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with temporary.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_dir(path.parent)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in blocks so that large files need little memory."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def locked(path: Path, timeout: float | None = None) -> Iterator[None]:
    """Hold an exclusive fcntl lock on `path` (created if missing), which other processes
    respect; TimeoutError after `timeout` seconds (None: wait as long as it takes).

    Two locks of one process on the same file block each other: callers that may nest keep
    a count (`qa_service.index.store.index_lock`)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if timeout is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{path} stayed locked for {timeout} s") from None
                    time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock
