"""The corpus check at start-up: file hashes, and the memo that skips unchanged files."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from embeddings.files import file_sha256
from qa_service.corpus import fingerprint
from qa_service.corpus.fingerprint import MEMO_FILE, corpus_files


def _corpus(root: Path) -> Path:
    corpus = root / "corpus"
    (corpus / "reports").mkdir(parents=True)
    (corpus / "a.txt").write_text("first report")
    (corpus / "reports" / "b.md").write_text("# second report")
    (corpus / ".hidden.txt").write_text("not a document")
    (corpus / ".git").mkdir()
    (corpus / ".git" / "config").write_text("not a document either")
    return corpus


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files actually read and hashed, in order (the real hash still runs)."""
    calls: list[Path] = []
    real = file_sha256

    def spy(path: Path) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(fingerprint, "file_sha256", spy)
    return calls


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files written by the test count as settled at once (no racy window)."""
    monkeypatch.setattr(fingerprint, "RACY_NS", 0)


def test_hashes_every_visible_file_by_relative_path(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    (corpus / "link.txt").symlink_to(corpus / "a.txt")
    (corpus / "dangling.txt").symlink_to(corpus / "missing.txt")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "elsewhere.txt").write_text("not below the corpus folder")
    (corpus / "linked-folder").symlink_to(outside)  # not followed, as `Path.rglob` does not
    expected = {
        name: hashlib.sha256((corpus / name).read_bytes()).hexdigest()
        for name in ["a.txt", "link.txt", "reports/b.md"]
    }
    assert corpus_files(corpus) == expected


def test_memo_skips_unchanged_files_and_sees_every_change(
    tmp_path: Path, hashed: list[Path], settled: None
) -> None:
    corpus, memo = _corpus(tmp_path), tmp_path / "index" / MEMO_FILE
    first = corpus_files(corpus, memo)
    assert memo.exists() and len(hashed) == 2

    hashed.clear()
    assert corpus_files(corpus, memo) == first
    assert hashed == []  # nothing read

    (corpus / "a.txt").write_text("first report, revised")
    (corpus / "c.txt").write_text("third report")
    (corpus / "reports" / "b.md").unlink()
    hashed.clear()
    changed = corpus_files(corpus, memo)
    assert sorted(p.name for p in hashed) == ["a.txt", "c.txt"]
    assert changed == corpus_files(corpus)  # the same as without a memo
    assert "reports/b.md" not in changed


def test_an_edit_that_keeps_size_and_mtime_is_still_seen(
    tmp_path: Path, hashed: list[Path], settled: None
) -> None:
    """A coarse clock (or a tool restoring mtime) can leave size and mtime as they were; the
    change time and inode still move."""
    corpus, memo = _corpus(tmp_path), tmp_path / MEMO_FILE
    path = corpus / "a.txt"
    before = path.stat()
    corpus_files(corpus, memo)
    path.write_text("FIRST REPORT")  # same length
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    assert path.stat().st_mtime_ns == before.st_mtime_ns
    hashed.clear()
    files = corpus_files(corpus, memo)
    assert files["a.txt"] == hashlib.sha256(b"FIRST REPORT").hexdigest()
    assert [p.name for p in hashed] == ["a.txt"]


def test_a_hash_taken_just_after_a_change_is_checked_again(
    tmp_path: Path, hashed: list[Path]
) -> None:
    """With the real racy window: files written just now are hashed at every call until their
    last change is older than the window, so a second write in the same clock tick is caught."""
    corpus, memo = _corpus(tmp_path), tmp_path / MEMO_FILE
    corpus_files(corpus, memo)
    hashed.clear()
    corpus_files(corpus, memo)
    assert len(hashed) == 2


@pytest.mark.parametrize(
    "content",
    [b"not json", b'{"version": 1}', b'{"version": 99, "corpus": "", "files": {}}', b"[]"],
)
def test_an_unusable_memo_means_hashing_and_is_rewritten(
    tmp_path: Path, hashed: list[Path], settled: None, content: bytes
) -> None:
    corpus, memo = _corpus(tmp_path), tmp_path / MEMO_FILE
    memo.write_bytes(content)
    assert corpus_files(corpus, memo) == corpus_files(corpus)
    assert json.loads(memo.read_bytes())["version"] == 1
    hashed.clear()
    corpus_files(corpus, memo)
    assert hashed == []


def test_malformed_memo_entries_are_hashed_again(
    tmp_path: Path, hashed: list[Path], settled: None
) -> None:
    corpus, memo = _corpus(tmp_path), tmp_path / MEMO_FILE
    corpus_files(corpus, memo)
    data = json.loads(memo.read_bytes())
    good = data["files"]["a.txt"]
    data["files"] = {"a.txt": good[:4], "reports/b.md": [*good[:5], "soon"]}
    memo.write_text(json.dumps(data))
    hashed.clear()
    assert corpus_files(corpus, memo) == corpus_files(corpus)
    assert sorted(p.name for p in hashed) == ["a.txt", "a.txt", "b.md", "b.md"]
    data["files"] = ["not", "a", "mapping"]
    memo.write_text(json.dumps(data))
    assert corpus_files(corpus, memo) == corpus_files(corpus)


def test_a_memo_of_another_corpus_folder_is_not_used(
    tmp_path: Path, hashed: list[Path], settled: None
) -> None:
    corpus, memo = _corpus(tmp_path), tmp_path / MEMO_FILE
    corpus_files(corpus, memo)
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.txt").write_text("something else")
    hashed.clear()
    assert corpus_files(other, memo) == corpus_files(other)
    assert [p.name for p in hashed] == ["a.txt", "a.txt"]


def test_a_memo_that_cannot_be_written_only_costs_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    corpus = _corpus(tmp_path)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    assert corpus_files(corpus, blocked / MEMO_FILE) == corpus_files(corpus)
    assert "cannot save the corpus hash memo" in caplog.text
