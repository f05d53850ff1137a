"""Live document writes: adding one document to an index of ~10,000 passages, against that
document's bare encoding and a full rebuild.

Builds an index of SciFact abstracts (real text, so the encoder does real work) until it holds
about `--passages` passages, then times, in-process and in the same run:

- the bare encoding of one typical held-out abstract (split, then encode its passages and
  sentences): the floor any write must pay;
- adding it through `QAService.add_documents` (encode + new generation written, fsynced and made
  current + corpus file written), split into the in-memory update and the save;
- removing it again;
- a full rebuild from scratch, and `qa index` after one file changed (the embedding cache).

    python benchmarks/updates.py [--passages 10000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from _server import SHARED_EVAL

SCIFACT = SHARED_EVAL / "scifact" / "corpus.jsonl"


def timed(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
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
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
