"""Documents to passages: sentence-aware windows that fit the model, with exact character spans.

Units are sentences (or, for a sentence longer than the model's limit, word-piece windows of it).
Passages are runs of whole units, so a passage's text is always `document.text[start:end]` and
never needs truncating by the model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from qa_service.corpus.documents import Document

Span = tuple[int, int]


class TokenSpanner(Protocol):
    """The part of an encoder the splitter needs: where each word piece of a text lies."""

    @property
    def max_tokens(self) -> int: ...

    def token_spans(self, texts: Sequence[str]) -> list[list[Span]]: ...


@dataclass(frozen=True)
class Passage:
    id: str
    document_id: str
    ordinal: int
    start: int
    end: int
    text: str
    # Units of the document this passage spans: units[first_unit:last_unit].
    first_unit: int
    last_unit: int
    page: int | None = None
    windows: int = 1  # consecutive windows spanned: more than one once retrieval merges them


@dataclass(frozen=True)
class ChunkedDocument:
    document: Document
    units: list[Span]  # sentence spans in document.text, in order, each within the model's limit
    passages: list[Passage]


# Words after which a full stop does not end a sentence.
# fmt: off
_ABBREVIATIONS = frozenset([
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "no", "nos", "vs", "etc", "e.g", "i.e",
    "inc", "ltd", "co", "corp", "art", "arts", "para", "fig", "figs", "approx", "dept", "gen",
    "gov", "col", "lt", "sgt", "rev", "vol", "pp", "p", "ed", "eds", "est", "al", "jan", "feb",
    "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "u.s", "u.k", "u.n",
    "e.u",
])
# fmt: on
_BOUNDARY = re.compile(r"[.!?…]+[\"'”’»)\]]*\s+(?=[\"'“‘«(\[]?[A-Z0-9À-ÖØ-Þ\u0400-\u042F])")
_WORD_BEFORE = re.compile(r"(\S+)$")


def _ends_with_abbreviation(text: str) -> bool:
    match = _WORD_BEFORE.search(text)
    if not match:
        return False
    word = match.group(1).rstrip(".!?…\"'”’»)]").lstrip("\"'“‘«([").lower()
    # A lone initial ("J. Smith") or a listed abbreviation.
    return (len(word) == 1 and word.isalpha()) or word in _ABBREVIATIONS


def _trimmed(text: str, start: int, end: int) -> Span | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if start < end else None


def split_sentences(text: str) -> list[Span]:
    """Sentence spans in `text`; a line break always ends a sentence (titles, list items)."""
    spans: list[Span] = []
    line_start = 0
    for line in text.split("\n"):
        line_end = line_start + len(line)
        start = line_start
        for match in _BOUNDARY.finditer(text, line_start, line_end):
            if _ends_with_abbreviation(text[start : match.start() + 1]):
                continue
            span = _trimmed(text, start, match.end())
            if span:
                spans.append(span)
            start = match.end()
        span = _trimmed(text, start, line_end)
        if span:
            spans.append(span)
        line_start = line_end + 1
    return spans


# Word pieces of the document title put before each passage when it is encoded.
TITLE_TOKENS = 32


class PassageSplitter:
    """Packs sentence units into passages of about `target_tokens` word pieces.

    With `title_context`, each passage is encoded (and indexed for BM25) after its document's
    title, so that a passage that never names its subject is still found by it; the returned
    text and offsets stay those of the passage alone. Room for the title is kept within the
    model's limit, so the passage itself is never cut.
    """

    def __init__(
        self,
        spanner: TokenSpanner,
        target_tokens: int = 128,
        overlap: int = 1,
        title_context: bool = False,
    ) -> None:
        if target_tokens < 1:
            raise ValueError("target_tokens must be positive")
        if overlap < 0:
            raise ValueError("overlap must not be negative")
        self._spanner = spanner
        # Word pieces the text after the title may take in one model input.
        self.room = spanner.max_tokens - (TITLE_TOKENS + 1 if title_context else 0)
        self.target_tokens = min(target_tokens, self.room)
        self.overlap = overlap
        self.title_context = title_context

    def indexed_texts(self, chunked: ChunkedDocument) -> list[str]:
        """What is encoded and indexed for each passage: its text, after the title if asked."""
        title = chunked.document.title
        if not self.title_context or not title:
            return [p.text for p in chunked.passages]
        (spans,) = self._spanner.token_spans([title])
        if len(spans) > TITLE_TOKENS:
            title = title[: spans[TITLE_TOKENS - 1][1]]
        return [f"{title}\n{p.text}" for p in chunked.passages]

    def split(self, document: Document) -> ChunkedDocument:
        units, lengths = self._units(document.text)
        passages: list[Passage] = []
        first = 0
        while first < len(units):
            last, size = first, 0
            while last < len(units) and (
                last == first or size + lengths[last] <= self.target_tokens
            ):
                size += lengths[last]
                last += 1
            start, end = units[first][0], units[last - 1][1]
            passages.append(
                Passage(
                    id=f"{document.id}#{len(passages)}",
                    document_id=document.id,
                    ordinal=len(passages),
                    start=start,
                    end=end,
                    text=document.text[start:end],
                    first_unit=first,
                    last_unit=last,
                    page=document.page_at(start),
                )
            )
            if last == len(units):
                break
            # Repeat up to `overlap` units for context, but always move forward.
            first = max(last - self.overlap, first + 1)
        return ChunkedDocument(document, units, passages)

    def _units(self, text: str) -> tuple[list[Span], list[int]]:
        sentences = split_sentences(text)
        token_spans = self._spanner.token_spans([text[a:b] for a, b in sentences])
        units: list[Span] = []
        lengths: list[int] = []
        for (start, _end), tokens in zip(sentences, token_spans, strict=True):
            if len(tokens) <= self.target_tokens:
                units.append((start, _end))
                lengths.append(len(tokens))
                continue
            # A sentence longer than a passage: cut it at word-piece boundaries.
            for i in range(0, len(tokens), self.target_tokens):
                window = tokens[i : i + self.target_tokens]
                units.append((start + window[0][0], start + window[-1][1]))
                lengths.append(len(window))
        return units, lengths


class WholeDocumentSplitter:
    """One passage per document, cut at the model's input limit: how MTEB scores retrieval.

    Only for reproducing published benchmark figures; the service itself never truncates.
    """

    overlap = 0
    title_context = False  # benchmark documents carry their title in their text already

    def __init__(self, spanner: TokenSpanner) -> None:
        self._spanner = spanner
        self.target_tokens = spanner.max_tokens

    def indexed_texts(self, chunked: ChunkedDocument) -> list[str]:
        return [p.text for p in chunked.passages]

    def split(self, document: Document) -> ChunkedDocument:
        (tokens,) = self._spanner.token_spans([document.text])
        end = tokens[: self.target_tokens][-1][1] if tokens else len(document.text)
        units = [(a, min(b, end)) for a, b in split_sentences(document.text) if a < end]
        passage = Passage(
            id=f"{document.id}#0",
            document_id=document.id,
            ordinal=0,
            start=0,
            end=end,
            text=document.text[:end],
            first_unit=0,
            last_unit=len(units),
            page=document.page_at(0),
        )
        return ChunkedDocument(document, units, [passage])


Splitter = PassageSplitter | WholeDocumentSplitter
