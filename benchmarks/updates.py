"""Live document writes: adding one document to an index of ~10,000 passages, against that
document's bare encoding and a full rebuild.

Builds an index of SciFact abstracts (real text, so the encoder does real work) until it holds
about `--passages` passages, then times, in-process and in the same run:

- the bare encoding of one typical held-out abstract (split, then encode its passages and
  sentences): the floor any write must pay;
- adding it through `QAService.add_documents` (encode + new generation written, fsynced and made
  current + corpus file written), split into the in-memory update and the save;
- removing it again;
- a full rebuild from scratch, and `qa index` after one file changed (the embedding cache);
- with `--large-kb N`, a document of N KB added while small writes follow it one after the
  other: how long the large one takes, and how long each small one waits meanwhile.

    python benchmarks/updates.py [--passages 10000] [--repeats 3] [--large-kb 1300]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from _server import SHARED_EVAL

if TYPE_CHECKING:
    from qa_service.index.writes import NewDocument
    from qa_service.service import QAService

SCIFACT = SHARED_EVAL / "scifact" / "corpus.jsonl"

P = ParamSpec("P")
R = TypeVar("R")


def timed(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> tuple[R, float]:
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--large-kb", type=int, default=0, help="also add a document this large")
    args = parser.parse_args()

    from qa_service.config import Settings
    from qa_service.corpus.documents import Document
    from qa_service.index.build import IndexSpec, build_index
    from qa_service.index.store import save_index
    from qa_service.index.update import update_index
    from qa_service.index.writes import NewDocument
    from qa_service.service import QAService, load_configured_encoder, make_splitter

    work = Path(tempfile.mkdtemp(prefix="qa-bench-updates-"))
    corpus = work / "corpus"
    corpus.mkdir()
    settings = Settings(corpus_dir=corpus, index_dir=work / "index")
    encoder = load_configured_encoder(settings)
    splitter = make_splitter(settings, encoder)

    rows = [json.loads(line) for line in SCIFACT.open()]
    rows = [r for r in rows if r["text"].strip()]
    # Documents until the estimated passage count is reached (splitting is exact but cheap).
    passages = 0
    used = 0
    for row in rows:
        text = f"{row['title']}\n\n{row['text']}"
        (corpus / f"sf{row['_id']}.txt").write_text(text)
        passages += len(splitter.split(Document(row["_id"], text)).passages)
        used += 1
        if passages >= args.passages:
            break
    held_out = rows[used:]
    # A typical document: the held-out abstract of median length.
    held_out.sort(key=lambda r: len(r["text"]))
    typical = held_out[len(held_out) // 2]
    typical_text = f"{typical['title']}\n\n{typical['text']}"
    typical_doc = Document("typical", typical_text)

    print(f"corpus: {used} SciFact abstracts, {passages} passages; work folder {work}")
    print(f"cores: torch threads {__import__('torch').get_num_threads()}")

    spec = IndexSpec(corpus, settings.index_dir, encoder, splitter, settings.batch_size)
    (data, report), full_seconds = timed(build_index, spec)
    units = sum(len(u) for u in data.units.values())
    print(f"full rebuild (no cache):            {full_seconds:8.2f} s  "
          f"({report.passages} passages, {units} sentences encoded)")  # fmt: skip

    service = QAService.from_settings(settings, encoder=encoder)
    chunked = splitter.split(typical_doc)
    print(f"typical document: {len(typical_text)} characters, {len(chunked.passages)} passages, "
          f"{len(chunked.units)} sentences")  # fmt: skip

    def bare() -> None:
        c = splitter.split(typical_doc)
        encoder.encode_passages(splitter.indexed_texts(c), batch_size=settings.batch_size)
        encoder.encode_passages([typical_text[a:b] for a, b in c.units], settings.batch_size)

    bare()  # warm-up
    bare_times = [timed(bare)[1] for _ in range(args.repeats)]

    new = NewDocument(typical_text.encode(), ".txt")
    add_times, remove_times, update_times, save_times = [], [], [], []
    _, first_add = timed(service.add_documents, [("typical", new)])
    _, first_remove = timed(service.remove_documents, ["typical"])
    for _ in range(args.repeats):
        add_times.append(timed(service.add_documents, [("typical", new)])[1])
        remove_times.append(timed(service.remove_documents, ["typical"])[1])
    # The two halves of an add: the in-memory update (encode, copy vectors, BM25 over cached
    # terms) and the save (write, hash and fsync every file of a generation, swap `current`),
    # saved to a scratch folder so that the service's index is left alone.
    terms = service._updater._terms if service._updater else None
    for _ in range(args.repeats):
        updated, seconds = timed(update_index, service.index, encoder, splitter,
                                 add=[typical_doc], terms=terms)  # fmt: skip
        update_times.append(seconds)
        save_times.append(timed(save_index, work / "scratch-index", updated)[1])

    generation = settings.index_dir / "current"
    size = sum(p.stat().st_size for p in generation.resolve().rglob("*") if p.is_file())

    # `qa index` after one file changed: everything but that file comes from the cache.
    (corpus / "sf-new.txt").write_text(typical_text)
    _, cached_seconds = timed(build_index, spec)

    def line(name: str, values: list[float]) -> str:
        return (f"{name:<36}{statistics.median(values):8.3f} s  "
                f"(min {min(values):.3f}, n={len(values)})")  # fmt: skip

    print(line("bare encoding of the document:", bare_times))
    print(line("add it (POST path, end to end):", add_times))
    print(line("  in-memory update (encode, BM25):", update_times))
    print(line("  save the generation (fsync):", save_times))
    print(line("remove it:", remove_times))
    print(f"first add / remove after start-up:  {first_add:8.3f} s / {first_remove:.3f} s "
          "(analyses every passage for BM25 once)")  # fmt: skip
    print(f"generation size on disk:            {size / 1e6:8.1f} MB")
    print(f"qa index after one file changed:    {cached_seconds:8.2f} s")
    print(
        f"full rebuild / add:                 {full_seconds / statistics.median(add_times):8.0f}x"
    )
    if args.large_kb:
        texts = [f"{r['title']}\n\n{r['text']}" for r in held_out if r is not typical]
        large_writes(service, NewDocument, texts, args.large_kb * 1000)
    shutil.rmtree(work, ignore_errors=True)


def large_writes(
    service: QAService, new_document: type[NewDocument], texts: list[str], size: int
) -> None:
    """A document of `size` characters added in a thread; small writes (one abstract each)
    follow one after the other until it is done. Each small write's time is its wait for the
    large one plus its own work."""
    large: list[str] = []
    used = 0
    while sum(map(len, large)) < size:
        large.append(texts[used])
        used += 1
    body = "\n\n".join(large).encode()
    started = time.perf_counter()
    done = threading.Event()
    large_seconds = [0.0]

    def add_large() -> None:
        service.add_documents([("large", new_document(body, ".txt"))])
        large_seconds[0] = time.perf_counter() - started
        done.set()

    thread = threading.Thread(target=add_large)
    thread.start()
    small_times = []
    while not done.is_set() and used < len(texts):
        t0 = time.perf_counter()
        service.add_documents([(f"small-{used}", new_document(texts[used].encode(), ".txt"))])
        small_times.append(time.perf_counter() - t0)
        used += 1
    thread.join()
    print(f"large document: {len(body) / 1e6:.2f} MB, added in {large_seconds[0]:.1f} s")
    if small_times:
        print(f"  small writes meanwhile: {len(small_times)}, median "
              f"{statistics.median(small_times):.3f} s, max {max(small_times):.3f} s")  # fmt: skip


if __name__ == "__main__":
    main()
