"""Sharding at scale (issue 28): are answers over shards the single index's, and what does a Ray
build cost against one process?

    python benchmarks/ray_scale.py exactness [--passages 1000000] [--shards 1 2 4]
    python benchmarks/ray_scale.py build [--shards 1 2 4] [--address HOST:PORT] [--workers 2]

`exactness`: the SQuAD v1.1 slice (../shared/eval/squad, 1,048 paragraphs as documents) is
encoded once with all-MiniLM-L6-v2, then copied under new document ids until the collection has
`--passages` passages, each copy's vectors perturbed (as benchmarks/ann.py does; its texts, and
so its BM25 scores, are the same, which makes ties plentiful). The documents are split into N
shards by `shard_of`, flat vectors, and 300 SQuAD questions are asked of one `Retriever` over
everything and of a `ShardedRetriever` over the shards (query/sharded.py), in each mode: the
share of questions whose top 10 is the same passages in the same order, and each one's p50 in
this process (the merge's own cost; the shards are not remote here).

`build`: the same paragraphs written as files, indexed by `build_index` in this process and by
`qa index --ray` (`build_shards`) into N shards: passages per second and the ratio. Without
`--address` a local Ray is started with this machine's cores.

Not measured yet: questions per second at 16 clients over a Ray Serve deployment, which does not
exist yet (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embeddings import MINILM_MODEL, Encoder, VectorIndex, load_encoder  # noqa: E402
from embeddings.index import IndexConfig  # noqa: E402
from qa_service.config import Settings  # noqa: E402
from qa_service.corpus.chunking import Passage  # noqa: E402
from qa_service.corpus.documents import Document  # noqa: E402
from qa_service.evaluation.datasets import load_squad  # noqa: E402
from qa_service.index.build import IndexSpec, build_index, index_documents  # noqa: E402
from qa_service.index.lexical import Analyzer, LexicalIndex  # noqa: E402
from qa_service.index.shard_lexical import TermCounts  # noqa: E402
from qa_service.index.shards import shard_of  # noqa: E402
from qa_service.index.store import IndexData  # noqa: E402
from qa_service.models import MODES  # noqa: E402
from qa_service.query.retrieval import Retriever, SearchQuery  # noqa: E402
from qa_service.query.sharded import ShardedRetriever, ShardSearcher  # noqa: E402
from qa_service.service import make_splitter  # noqa: E402

SQUAD = ROOT.parent / "shared" / "eval" / "squad" / "dev-v1.1.first24.json"
MODEL_CACHE = Path(tempfile.gettempdir()) / "qa-bench-models"
QUESTIONS = 300
K = 10


def _encoder() -> Encoder:
    return load_encoder(MINILM_MODEL, "onnx", MODEL_CACHE)


def synthetic(passages: int) -> tuple[list[Document], list[Passage], np.ndarray, list[list[str]]]:
    """The SQuAD slice, encoded, copied until about `passages` passages: documents, passages,
    vectors (perturbed per copy) and each passage's BM25 terms."""
    encoder = _encoder()
    started = time.perf_counter()
    base = index_documents(load_squad(SQUAD).documents, encoder, make_splitter(Settings(), encoder),
                           "f", sentence_vectors=False)  # fmt: skip
    analyzer = Analyzer()
    base_terms = [analyzer.terms(p.text) for p in base.passages]
    real = np.asarray(base.vectors.vectors(np.arange(len(base.passages))))
    copies = max(1, round(passages / len(base.passages)))
    documents, rows, terms = [], [], []
    for c in range(copies):
        documents.extend(replace(d, id=f"c{c}/{d.id}") for d in base.documents.values())
        rows.extend(replace(p, id=f"c{c}/{p.id}", document_id=f"c{c}/{p.document_id}")
                    for p in base.passages)  # fmt: skip
        terms.extend(base_terms)
    rng = np.random.default_rng(1)
    vectors = np.tile(real, (copies, 1))
    for start in range(0, len(vectors), 100_000):
        chunk = vectors[start : start + 100_000]
        chunk += rng.normal(scale=0.03, size=chunk.shape).astype(np.float32)
        chunk /= np.linalg.norm(chunk, axis=1, keepdims=True)
    print(f"collection: {len(documents):,} documents, {len(rows):,} passages ({copies} copies of "
          f"{len(base.passages):,}), made in {time.perf_counter() - started:.0f} s")  # fmt: skip
    return documents, rows, vectors, terms


def _index(
    documents: list[Document], rows: list[Passage], vectors: np.ndarray, terms: list[list[str]],
    model: IndexData,
) -> IndexData:  # fmt: skip
    flat = IndexConfig(kind="flat")
    return IndexData(
        documents={d.id: d for d in documents},
        units={d.id: [] for d in documents},
        acronyms={d.id: [] for d in documents},
        passages=rows,
        vectors=VectorIndex.build(vectors, config=flat),
        lexical=LexicalIndex.from_terms(terms),
        unit_vectors=None,
        manifest=replace(model.manifest, documents=len(documents), passages=len(rows)),
    )


def exactness(passages: int, shard_counts: list[int]) -> None:
    documents, rows, vectors, terms = synthetic(passages)
    encoder = _encoder()
    template = index_documents(documents[:1], encoder, make_splitter(Settings(), encoder), "f",
                               sentence_vectors=False)  # fmt: skip
    started = time.perf_counter()
    single = Retriever(_index(documents, rows, vectors, terms, template))
    print(f"single index built in {time.perf_counter() - started:.0f} s")
    asked = [q.text for q in load_squad(SQUAD).questions[:QUESTIONS]]
    matrix = encoder.encode_queries(asked)
    for count in shard_counts:
        started = time.perf_counter()
        owner = [shard_of(p.document_id, count) for p in rows]
        shards = []
        for n in range(count):
            mine = [i for i, s in enumerate(owner) if s == n]
            docs = [d for d in documents if shard_of(d.id, count) == n]
            shard_terms = [terms[i] for i in mine]
            index = _index(docs, [rows[i] for i in mine], vectors[mine], shard_terms, template)
            shards.append(ShardSearcher(index, TermCounts.from_terms(shard_terms)))
        sharded = ShardedRetriever(shards)
        sizes = ", ".join(f"{s.passages:,}" for s in shards)
        print(f"\n{count} shard(s) ({sizes} passages), built in "
              f"{time.perf_counter() - started:.0f} s")  # fmt: skip
        for mode in MODES:
            same, times_single, times_sharded = 0, [], []
            for n, question in enumerate(asked):
                query = SearchQuery(question, matrix[n : n + 1], single.lexical_coverage(question))
                t0 = time.perf_counter()
                (one,) = single.retrieve([query], K, mode)
                t1 = time.perf_counter()
                (many,) = sharded.retrieve([query], K, mode)
                t2 = time.perf_counter()
                times_single.append((t1 - t0) * 1000)
                times_sharded.append((t2 - t1) * 1000)
                same += [h.passage for h in one] == [h.passage for h in many]
            p50, p50s = statistics.median(times_single), statistics.median(times_sharded)
            share = f"{same}/{len(asked)} ({same / len(asked):.1%})"
            print(f"  {mode:8s} identical top {K}: {share}; p50 single {p50:.1f} ms, "
                  f"sharded {p50s:.1f} ms ({p50s / p50:.2f}x)")  # fmt: skip


def build(shard_counts: list[int], address: str | None, workers: int) -> None:
    from qa_service.distributed.indexing import build_shards

    with tempfile.TemporaryDirectory() as folder:
        corpus = Path(folder) / "corpus"
        for document in load_squad(SQUAD).documents:
            path = corpus / f"{document.id}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(document.text, encoding="utf-8")
        settings = Settings(corpus_dir=corpus, index_dir=Path(folder) / "single",
                            model=MINILM_MODEL, encoder_backend="onnx")  # fmt: skip
        encoder = load_encoder(MINILM_MODEL, "onnx", settings.index_dir / "models")
        spec = IndexSpec(corpus, settings.index_dir, encoder, make_splitter(settings, encoder))
        _, report = build_index(spec)
        base = report.passages / report.seconds
        print(f"one process: {report.passages:,} passages in {report.seconds:.1f} s "
              f"({base:.1f} passages/s)")  # fmt: skip
        for count in shard_counts:
            sharded = settings.model_copy(update={"index_dir": Path(folder) / f"shards-{count}"})
            result = build_shards(sharded, count, address, workers)
            rate = sum(result.passages) / result.seconds
            done = f"{sum(result.passages):,} passages in {result.seconds:.1f} s"
            print(f"Ray, {count} shard(s), {workers} actors: {done} ({rate:.1f} passages/s, "
                  f"{rate / base:.2f}x)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=["exactness", "build"])
    parser.add_argument("--passages", type=int, default=200_000)
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--address", default=None)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.part == "exactness":
        exactness(args.passages, args.shards)
    else:
        build(args.shards, args.address, args.workers)


if __name__ == "__main__":
    main()
