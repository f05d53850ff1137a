"""PDFs that trip the reader's limits: a clear reason, quickly and in little memory, not a crash.

The files are built here, by hand and small: a content stream that inflates to 300 MB, a page of
3 million text operators, pages whose content is large only together, and a ToUnicode map that
names a lone surrogate.
"""

from __future__ import annotations

import time
import tracemalloc
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

from typer.testing import CliRunner

from qa_service.cli import app
from qa_service.corpus.documents import (
    MAX_PDF_CONTENT_BYTES,
    MAX_PDF_PAGE_TOKENS,
    MAX_PDF_STREAM_BYTES,
    DocumentLoadError,
    load_document,
)

MIB = 1024 * 1024


def flate(data: bytes, times: int = 1) -> tuple[bytes, int]:
    """`data` Flate-encoded `times` times, and that count: a stream for `build_pdf`."""
    for _ in range(times):
        data = zlib.compress(data, 9)
    return data, times


def build_pdf(
    streams: Sequence[tuple[bytes, int]], pages: Sequence[int], font_extra: bytes = b""
) -> bytes:
    """A PDF whose page i shows stream `pages[i]` in Helvetica (F1). A stream is its encoded
    bytes and how many /FlateDecode filters decode them; stream j is object 4 + j."""
    kids = b" ".join(b"%d 0 R" % (4 + len(streams) + i) for i in range(len(pages)))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, len(pages)),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica%s >>" % font_extra,
    ]
    for data, filters in streams:
        names = b" ".join([b"/FlateDecode"] * filters)
        objects.append(b"<< /Length %d /Filter [%s] >>\nstream\n%s\nendstream"
                       % (len(data), names, data))  # fmt: skip
    page = (
        b"<< /Type /Page /Parent 2 0 R /Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>"
    )
    objects += [page % (4 + stream) for stream in pages]
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)  # fmt: skip
    return bytes(out)


def zlib_zeros(mib: int) -> bytes:
    """A zlib stream of `mib` MiB of zero bytes, made without compressing them all: one MiB,
    compressed and fully flushed (so that each copy decodes alone), repeated."""
    raw = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = raw.compress(bytes(MIB)) + raw.flush(zlib.Z_FULL_FLUSH)
    end = raw.flush(zlib.Z_FINISH)
    adler32 = (mib * MIB % 65521) << 16 | 1  # of zeros: a = 1, b = the length
    return b"\x78\xda" + block * mib + end + adler32.to_bytes(4, "big")


def inflation_bomb() -> bytes:
    """One page whose content inflates to 300 MiB of zeros: Flate twice, so the file is ~2 KB."""
    return build_pdf([(zlib.compress(zlib_zeros(300), 9), 2)], [0])


def text_operator_flood() -> bytes:
    """One page of 3 million `Tj` operators: 15 MB of content, within the stream limit."""
    return build_pdf([flate(b"BT /F1 12 Tf 72 720 Td " + b"(a)Tj" * 3_000_000 + b" ET")], [0])


def measured(load: Callable[[], object]) -> tuple[Exception | None, float, float]:
    """What `load` raised, its seconds, and its peak of memory allocated by Python, in MiB."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        load()
        error = None
    except Exception as exc:  # returned, for the test to check
        error = exc
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / MIB
    tracemalloc.stop()
    return error, seconds, peak


def test_the_built_files_are_what_they_claim() -> None:
    assert zlib.decompressobj().decompress(zlib_zeros(3)) == bytes(3 * MIB)
    assert len(inflation_bomb()) < 4096
    assert len(text_operator_flood()) < 64 * 1024


def test_a_page_whose_content_inflates_to_300_mb_is_refused_quickly() -> None:
    data = inflation_bomb()
    error, seconds, peak = measured(lambda: load_document(data, ".pdf", "bomb"))
    assert isinstance(error, DocumentLoadError), error
    assert str(error) == "the PDF's page 1 content inflates beyond 16 MiB"
    # pypdf's own limit, 75 MB, would be reached (and held) before it gave up.
    assert peak < 3 * MAX_PDF_STREAM_BYTES / MIB, peak
    assert seconds < 5, seconds


def test_a_page_of_3_million_text_operators_is_refused_quickly() -> None:
    data = text_operator_flood()
    error, seconds, peak = measured(lambda: load_document(data, ".pdf", "flood"))
    assert isinstance(error, DocumentLoadError), error
    assert str(error) == (
        f"the PDF's page 1 has more than {MAX_PDF_PAGE_TOKENS:,} operators and operands"
    )
    # pypdf's own limit, 2,000,000 a stream, costs some 350 MB before it is reached.
    assert peak < 100, peak
    assert seconds < 15, seconds


def test_pages_whose_content_is_large_only_together_are_refused() -> None:
    each = MAX_PDF_STREAM_BYTES // MIB - 1  # within the limit of one stream
    pages = MAX_PDF_CONTENT_BYTES // (each * MIB) + 1
    data = build_pdf([(zlib_zeros(each), 1)], [0] * pages)  # every page shows the same stream
    error, seconds, _ = measured(lambda: load_document(data, ".pdf", "many"))
    assert isinstance(error, DocumentLoadError), error
    assert str(error) == (
        f"the PDF's pages' content inflates beyond 64 MiB in all (at page {pages})"
    )
    assert seconds < 10, seconds


def test_dense_pages_within_the_limits_still_load() -> None:
    words = 20_000  # 40,000 operators and operands on each of two pages
    page = b"BT /F1 12 Tf 72 720 Td " + b"(word ) Tj " * words + b"ET"
    document = load_document(build_pdf([flate(page)], [0, 0]), ".pdf", "dense")
    assert document.text.count("word") == 2 * words
    assert document.page_starts[0] == 0 and len(document.page_starts) == 2


def test_a_lone_surrogate_in_the_text_layer_becomes_a_replacement_character() -> None:
    cmap = (b"/CIDInit /ProcSet findresource begin 12 dict begin begincmap /CMapName /X def\n"
            b"1 begincodespacerange <00> <FF> endcodespacerange\n"
            b"2 beginbfchar <41> <D800> <42> <0042> endbfchar\n"
            b"endcmap CMapName currentdict /CMap defineresource pop end end")  # fmt: skip
    content = b"BT /F1 12 Tf 72 720 Td (ABBA) Tj ET"
    data = build_pdf([(content, 0), (cmap, 0)], [0], font_extra=b" /ToUnicode 5 0 R")
    document = load_document(data, ".pdf", "surrogate")
    assert document.text == "\ufffdBB\ufffd"
    document.text.encode("utf-8")  # what every response and index file needs


def test_qa_index_skips_them_with_the_reason(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "good.txt").write_text("Rivers flow to the sea. Mountains are high.")
    (corpus / "bomb.pdf").write_bytes(inflation_bomb())
    (corpus / "flood.pdf").write_bytes(text_operator_flood())
    result = CliRunner().invoke(
        app, ["index", "--corpus-dir", str(corpus), "--index-dir", str(tmp_path / "idx")]
    )
    assert result.exit_code == 0, result.output
    assert "Indexed 1 documents" in result.output
    assert "bomb.pdf: the PDF's page 1 content inflates beyond 16 MiB" in result.output
    assert (
        f"flood.pdf: the PDF's page 1 has more than {MAX_PDF_PAGE_TOKENS:,} operators"
        in result.output
    )
