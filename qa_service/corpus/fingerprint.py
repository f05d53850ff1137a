"""Which files a corpus folder holds and their sha256: how an index knows its corpus changed.

The service checks the corpus against the index at every start, and hashing every file is most
of that check (about 2 s for 31,000 files). So hashes are remembered in the index folder
(`corpus-hashes.json`) with each file's stat signature, as git's index does: a file whose size,
modification and change times and inode are all as recorded keeps its recorded hash. Two writes
within one tick of a coarse file-system clock could leave the signature unchanged, so a hash
taken less than `RACY_NS` after the file last changed is not trusted next time, and the file is
hashed again. Any doubt about the memo (unreadable, another corpus folder) means hashing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

import orjson

from embeddings.files import file_sha256, replace_file
from qa_service.corpus.documents import corpus_listing

logger = logging.getLogger(__name__)

MEMO_FILE = "corpus-hashes.json"
_MEMO_VERSION = 1
# Coarser than any file-system timestamp in use (FAT's is 2 s).
RACY_NS = 2_000_000_000

# size, mtime_ns, ctime_ns, inode
_Signature = tuple[int, int, int, int]


def _signature(status: os.stat_result) -> _Signature:
    return (status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino)


def _still_holds(entry: list[int | str], status: os.stat_result) -> bool:
    """Same signature, and hashed when the file's last change was already `RACY_NS` old."""
    changed = max(status.st_mtime_ns, status.st_ctime_ns)
    return tuple(entry[:4]) == _signature(status) and changed < int(entry[5]) - RACY_NS


def _valid(entry: object) -> bool:
    """size, mtime_ns, ctime_ns, inode, sha256, hashed_at_ns."""
    return (
        isinstance(entry, list)
        and len(entry) == 6
        and isinstance(entry[4], str)
        and all(type(v) is int for i, v in enumerate(entry) if i != 4)
    )


def _read_memo(path: Path, corpus_dir: Path) -> dict[str, list[int | str]]:
    try:
        memo = orjson.loads(path.read_bytes())
        if memo["version"] != _MEMO_VERSION or memo["corpus"] != str(corpus_dir.resolve()):
            return {}
        return {relative: entry for relative, entry in memo["files"].items() if _valid(entry)}
    except FileNotFoundError:
        return {}
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        logger.info("ignoring the corpus hash memo %s: %s", path, exc)
        return {}


def corpus_files(corpus_dir: Path, memo: Path | None = None) -> dict[str, str]:
    """sha256 of every file below the corpus folder (hidden ones excepted), by relative path.

    With `memo` (a file in the index folder), unchanged files are not read again; the memo is
    rewritten when it no longer matches, and a memo that cannot be written is only logged.
    """
    known = _read_memo(memo, corpus_dir) if memo is not None else {}
    files: dict[str, str] = {}
    entries: dict[str, list[int | str]] = {}
    for relative, status in corpus_listing(corpus_dir).items():
        entry = known.get(relative)
        if entry is not None and _still_holds(entry, status):
            files[relative] = str(entry[4])
            entries[relative] = entry
            continue
        hashed_at = time.time_ns()  # before reading: a write during the read is after it
        files[relative] = file_sha256(corpus_dir / relative)
        entries[relative] = [*_signature(status), files[relative], hashed_at]
    if memo is not None and entries != known:
        _write_memo(memo, corpus_dir, entries)
    return files


def _write_memo(path: Path, corpus_dir: Path, entries: dict[str, list[int | str]]) -> None:
    data = {"version": _MEMO_VERSION, "corpus": str(corpus_dir.resolve()), "files": entries}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(path, orjson.dumps(data))
    except OSError as exc:  # a read-only index folder: start-up still works, only slower
        logger.warning("cannot save the corpus hash memo %s: %s", path, exc)


def fingerprint_of(files: Mapping[str, str]) -> str:
    digest = hashlib.sha256()
    for relative in sorted(files):
        digest.update(relative.encode() + b"\0")
        digest.update(files[relative].encode())
    return digest.hexdigest()


def corpus_fingerprint(corpus_dir: Path, memo: Path | None = None) -> str:
    """Changes whenever a file below the corpus folder is added, removed, renamed or edited."""
    return fingerprint_of(corpus_files(corpus_dir, memo))
