"""Atomic file replacement, file hashes and the cross-process file lock (embeddings/files.py)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from embeddings.files import file_sha256, locked, replace_file


def test_replace_file_leaves_the_new_bytes_and_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    replace_file(target, b"new bytes")
    assert target.read_bytes() == b"new bytes"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_file_sha256_reads_large_files_in_blocks(tmp_path: Path) -> None:
    data = bytes(range(256)) * 20_000  # several read blocks
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_the_lock_excludes_another_process_until_it_lets_go(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from embeddings.files import locked\n"
         f"with locked(Path({str(path)!r})):\n"
         "    print('locked', flush=True); sys.stdin.readline()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with pytest.raises(TimeoutError), locked(path, timeout=0.3):
            pass
        assert time.monotonic() - started >= 0.3
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(timeout=10)
        with locked(path, timeout=5):  # released with the other process's descriptor
            pass
    finally:
        holder.kill()
