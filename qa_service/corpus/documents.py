"""Files to documents: one loader per format, and a corpus reader that skips what it cannot read.

A document's `text` is what every citation points into, so loaders normalise it once (newlines,
visible HTML text, PDF text layer) and nothing downstream changes it again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

METADATA_FILE = "metadata.json"


class DocumentLoadError(ValueError):
    """A file that cannot become a document; the message says why, for the user."""


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    title: str | None = None
    source: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # Offset in `text` where each PDF page starts; empty for formats without pages.
    page_starts: tuple[int, ...] = ()

    @property
    def head(self) -> DocumentHead:
        return DocumentHead(self.id, self.title, self.source)

    def page_at(self, offset: int) -> int | None:
        """1-based page holding character `offset`, or None for formats without pages."""
        if not self.page_starts:
            return None
        return max(bisect_right(self.page_starts, offset), 1)


@dataclass(frozen=True)
class DocumentHead:
    """What a citation names of a document besides its passage: a service over shards fetches
    this much for an answer, not the whole text."""

    id: str
    title: str | None = None
    source: str | None = None


@dataclass(frozen=True)
class LoadedText:
    text: str
    title: str | None = None  # found in the text (HTML title, Markdown heading): a fallback
    page_starts: tuple[int, ...] = ()
    # Fields the file states for itself (a JSON document's title, source, metadata): these win
    # over the corpus's metadata.json.
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SkippedFile:
    path: Path
    reason: str


@dataclass(frozen=True)
class CorpusLoad:
    documents: list[Document]
    skipped: list[SkippedFile]


def _decode(data: bytes) -> str:
    if b"\x00" in data:
        raise DocumentLoadError("binary content (NUL bytes), not text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocumentLoadError(f"not valid UTF-8 (byte {exc.start})") from exc
    return text.replace("\r\n", "\n").replace("\r", "\n")


def load_txt(data: bytes) -> LoadedText:
    return LoadedText(_decode(data))


_MD_HEADING = re.compile(r"^#\s+(.+?)\s*#*\s*$", re.MULTILINE)


def load_md(data: bytes) -> LoadedText:
    text = _decode(data)
    heading = _MD_HEADING.search(text)
    return LoadedText(text, title=heading.group(1) if heading else None)


# Elements whose content a reader never sees.
_HIDDEN_TAGS = ("script", "style", "noscript", "template", "head", "svg", "iframe", "object")
_BLOCK_TAGS = (
    "p", "div", "section", "article", "header", "footer", "main", "aside", "nav", "li", "ul", "ol",
    "table", "tr", "td", "th", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "br",
    "hr", "dd", "dt", "figcaption", "caption",
)  # fmt: skip


def load_html(data: bytes) -> LoadedText:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(_decode(data), "html.parser")
    title_tag = soup.find("title") or soup.find("h1")
    title = title_tag.get_text(" ", strip=True) if title_tag else None
    for tag in soup.find_all(_HIDDEN_TAGS):
        tag.decompose()
    for tag in soup.find_all(_BLOCK_TAGS):
        tag.insert_before("\n")
        tag.insert_after("\n")
    lines = (" ".join(line.split()) for line in soup.get_text().split("\n"))
    text = "\n\n".join(line for line in lines if line)
    return LoadedText(text, title=title or None)


# pypdf's own limits admit pages that cost minutes and hundreds of MB (pypdf 7.1, measured on
# two busy cores: a page of 900,000 `(word) Tj`, 1.8 million tokens, within its 2,000,000 a
# stream, took 118 s, and reaching that limit holds 250 MB; a 70 MB stream, within its 75 MB
# inflate limit, of blanks and one text operator took 4.4 s and 140 MB). A page of text needs
# far less, so text extraction runs under these tighter ones (set with
# `pypdf.apply_configuration`, for this call only):
MAX_PDF_STREAM_BYTES = 16 * 1024 * 1024  # what any one stream (a page's content) inflates to
MAX_PDF_PAGE_TOKENS = 200_000  # operators and operands in one content stream (~1 s to parse)
# pypdf keeps every decoded stream until the reader is dropped, and each page may use the
# stream limit: the pages' content together is capped too, so that memory and time stay bounded.
MAX_PDF_CONTENT_BYTES = 64 * 1024 * 1024


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):g} MiB"


def _page_limit_reason(page: int, exc: Exception) -> str:
    """The user's words for the pypdf limit that `exc` reports (its wording, read from pypdf 7's
    filters.py and generic/_data_structures.py, is checked by the tests)."""
    message = str(exc)
    if "decompressing" in message or "output bytes" in message or "decoding work" in message:
        return f"the PDF's page {page} content inflates beyond {_mib(MAX_PDF_STREAM_BYTES)}"
    if "tokens" in message:
        return f"the PDF's page {page} has more than {MAX_PDF_PAGE_TOKENS:,} operators and operands"
    return f"the PDF's page {page} exceeds a limit of the PDF reader: {message}"


_SURROGATES = re.compile("[\ud800-\udfff]")


def load_pdf(data: bytes) -> LoadedText:
    import io

    from pypdf import PdfReader, apply_configuration
    from pypdf.errors import LimitReachedError, PyPdfError

    limits = apply_configuration(
        zlib_maximum_output_length=MAX_PDF_STREAM_BYTES,
        lzw_maximum_output_length=MAX_PDF_STREAM_BYTES,
        run_length_maximum_output_length=MAX_PDF_STREAM_BYTES,
        brotli_maximum_output_length=MAX_PDF_STREAM_BYTES,
        array_based_stream_maximum_output_length=MAX_PDF_STREAM_BYTES,
        stream_parsing_work_maximum_count=MAX_PDF_PAGE_TOKENS,
    )
    pages: list[str] = []
    try:
        with limits:
            reader = PdfReader(io.BytesIO(data))
            content_bytes = 0
            for number, pdf_page in enumerate(reader.pages, start=1):
                try:
                    contents = pdf_page.get_contents()  # decoded once; extract_text reuses it
                    content_bytes += len(contents.get_data()) if contents is not None else 0
                    if content_bytes > MAX_PDF_CONTENT_BYTES:
                        raise DocumentLoadError(
                            f"the PDF's pages' content inflates beyond "
                            f"{_mib(MAX_PDF_CONTENT_BYTES)} in all (at page {number})"
                        )
                    pages.append((pdf_page.extract_text() or "").replace("\r\n", "\n"))
                except LimitReachedError as exc:
                    raise DocumentLoadError(_page_limit_reason(number, exc)) from exc
            title = reader.metadata.title if reader.metadata else None
    except DocumentLoadError:
        raise
    except LimitReachedError as exc:
        raise DocumentLoadError(f"the PDF exceeds a limit of the PDF reader: {exc}") from exc
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as exc:
        raise DocumentLoadError(f"broken PDF: {exc}") from exc
    # A text string or ToUnicode map can name a lone UTF-16 surrogate, which no response or
    # index file could encode: it becomes U+FFFD, as undecodable bytes do elsewhere.
    pages = [_SURROGATES.sub("\ufffd", page) for page in pages]
    title = _SURROGATES.sub("\ufffd", str(title)) if title else None
    parts: list[str] = []
    starts: list[int] = []
    offset = 0
    for page in pages:
        starts.append(offset)
        parts.append(page)
        offset += len(page) + 2  # the "\n\n" between pages
    text = "\n\n".join(parts)
    if not text.strip():
        raise DocumentLoadError("PDF has no text layer (scanned images are not supported)")
    return LoadedText(text, title=title, page_starts=tuple(starts))


def load_json(data: bytes) -> LoadedText:
    """A JSON document: `{"text": str, "title"?: str, "source"?: str, "metadata"?: {...}}`.

    The form in which documents sent as JSON to the API are kept in the corpus folder.
    """
    try:
        value = json.loads(_decode(data))
    except json.JSONDecodeError as exc:
        raise DocumentLoadError(f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict) or not isinstance(value.get("text"), str):
        raise DocumentLoadError('a JSON document is an object with a "text" string')
    try:  # JSON's escapes can spell half a UTF-16 pair ("\ud800"), which is no text
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise DocumentLoadError(
            "the JSON document holds an invalid character (an unpaired UTF-16 surrogate)"
        ) from None
    metadata = value.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise DocumentLoadError('"metadata" of a JSON document must be an object')
    fields = dict(metadata)
    for name in ("title", "source"):
        if value.get(name) is not None:
            if not isinstance(value[name], str):
                raise DocumentLoadError(f'"{name}" of a JSON document must be a string')
            fields[name] = value[name]
    text = value["text"].replace("\r\n", "\n").replace("\r", "\n")
    return LoadedText(text, fields=fields)


LOADERS: dict[str, Callable[[bytes], LoadedText]] = {
    ".txt": load_txt,
    ".text": load_txt,
    ".md": load_md,
    ".markdown": load_md,
    ".html": load_html,
    ".htm": load_html,
    ".pdf": load_pdf,
    ".json": load_json,
}
# File types by media type, for an upload whose file name has no extension.
MEDIA_TYPES = {
    "text/plain": ".txt",
    "text/markdown": ".md",
    "text/html": ".html",
    "application/pdf": ".pdf",
    "application/json": ".json",
}


def load_document(
    data: bytes,
    suffix: str,
    doc_id: str,
    source: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Document:
    """Bytes of a file in a supported format to a document, or DocumentLoadError saying why not."""
    loader = LOADERS.get(suffix.lower())
    if loader is None:
        raise DocumentLoadError(
            f"unsupported file type {suffix or '(none)'!r}; supported: {', '.join(LOADERS)}"
        )
    if not data:
        raise DocumentLoadError("empty file")
    loaded = loader(data)
    if not loaded.text.strip():
        raise DocumentLoadError("no text in the document")
    meta = {**(metadata or {}), **loaded.fields}
    title = meta.pop("title", None) or loaded.title
    source = meta.pop("source", None) or source
    return Document(
        id=doc_id,
        text=loaded.text,
        title=title,
        source=source,
        metadata=meta,
        page_starts=loaded.page_starts,
    )


def corpus_listing(corpus_dir: Path) -> dict[str, os.stat_result]:
    """Every regular file below `corpus_dir` (file links followed, folder links not, hidden names
    skipped, unreadable folders passed over), by path relative to it, in order: what is indexed,
    and what the index's corpus fingerprint covers."""
    found: dict[str, os.stat_result] = {}

    def visit(folder: str, prefix: str) -> None:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                visit(entry.path, f"{prefix}{entry.name}/")
                continue
            try:
                status = entry.stat()
            except OSError:  # removed meanwhile, or a dangling link: not a file of the corpus
                continue
            if stat.S_ISREG(status.st_mode):
                found[prefix + entry.name] = status

    visit(str(corpus_dir), "")
    return dict(sorted(found.items()))


def _corpus_files(corpus_dir: Path) -> Iterator[Path]:
    for relative in corpus_listing(corpus_dir):
        if relative != METADATA_FILE:
            yield corpus_dir / relative


def read_metadata(corpus_dir: Path) -> dict[str, dict[str, Any]]:
    """Per-document fields (title, publisher, date …) from the corpus's optional metadata.json."""
    path = corpus_dir / METADATA_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DocumentLoadError(f"{path}: not readable JSON: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise DocumentLoadError(f"{path}: expected an object mapping document ids to objects")
    return data


# Ids of documents created through the API or `qa add`: path segments of letters, digits, ".",
# "_" and "-" (not starting with "." or "-"), joined by "/"; the file is `<corpus>/<id><ext>`.
MAX_ID_LENGTH = 128
_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*")
RESERVED_IDS = frozenset({Path(METADATA_FILE).stem})


def check_new_id(doc_id: str) -> str | None:
    """Why `doc_id` cannot name a new document, or None when it can."""
    if len(doc_id) > MAX_ID_LENGTH:
        return f"document id is longer than {MAX_ID_LENGTH} characters"
    if not _ID.fullmatch(doc_id):
        return (
            f"document id {doc_id!r} is not allowed: use letters, digits, '.', '_' and '-' "
            "(not first), in segments separated by '/'"
        )
    if doc_id in RESERVED_IDS:
        return f"document id {doc_id!r} is reserved"
    return None


def id_from_filename(filename: str) -> str | None:
    """A document id from an uploaded file's name (`Annual Report 2024.pdf` ->
    `annual-report-2024`), or None when nothing usable is left."""
    stem = Path(filename.replace("\\", "/")).name
    stem = stem[: -len(Path(stem).suffix)] if Path(stem).suffix else stem
    slug = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-.")[:80].strip("-.")
    return slug if slug and check_new_id(slug) is None else None


def document_id(corpus_dir: Path, path: Path) -> str:
    """The file's path below the corpus folder without its extension: stable across rebuilds."""
    return path.relative_to(corpus_dir).with_suffix("").as_posix()


def listed_documents(corpus_dir: Path) -> tuple[list[tuple[str, Path]], list[SkippedFile]]:
    """The corpus's files to index, in order, each with its document id; and those skipped
    because an earlier file took their id (`report.txt` and `report.pdf`)."""
    if not corpus_dir.is_dir():
        raise FileNotFoundError(f"corpus folder {corpus_dir} does not exist")
    files: list[tuple[str, Path]] = []
    skipped: list[SkippedFile] = []
    seen: dict[str, Path] = {}
    for path in _corpus_files(corpus_dir):
        doc_id = document_id(corpus_dir, path)
        if doc_id in seen:
            reason = f"document id {doc_id!r} is already taken by {seen[doc_id].name}"
            skipped.append(SkippedFile(path, reason))
            logger.warning("skipping %s: %s", path, reason)
            continue
        seen[doc_id] = path
        files.append((doc_id, path))
    return files, skipped


def load_file(
    corpus_dir: Path, path: Path, doc_id: str, metadata: dict[str, Any] | None
) -> Document:
    """One corpus file as its document; DocumentLoadError or OSError when it cannot be read."""
    return load_document(
        path.read_bytes(),
        path.suffix,
        doc_id,
        source=path.relative_to(corpus_dir).as_posix(),
        metadata=metadata,
    )


def load_corpus(corpus_dir: Path) -> CorpusLoad:
    files, skipped = listed_documents(corpus_dir)
    metadata = read_metadata(corpus_dir)
    documents: list[Document] = []
    for doc_id, path in files:
        try:
            documents.append(load_file(corpus_dir, path, doc_id, metadata.get(doc_id)))
        except (DocumentLoadError, OSError) as exc:
            skipped.append(SkippedFile(path, str(exc)))
            logger.warning("skipping %s: %s", path, exc)
    skipped.sort(key=lambda s: str(s.path))
    return CorpusLoad(documents, skipped)
