"""Exact (flat) against approximate (HNSW) passage search at 10k, 100k and 1M passages.

    flock /tmp/bench.lock python benchmarks/ann.py --sizes 10000 100000 1000000

Synthetic passages are perturbations of real ones: the SciFact passages and sentences encoded
with the default model (the `qa eval` index cache, `.qa-index/eval-cache`, built first if
missing), each synthetic vector a random real one plus Gaussian noise, renormalised. Queries are
the real SciFact questions, encoded. Before measuring, the script checks that the synthetic
neighbourhoods still mean something: the questions' nearest synthetic passages must come from
the real passages nearest to them, and be clearly closer than random ones.

For each size and kind: build time, index bytes per passage (the saved file) and the process's
resident-memory growth, single-question search latency (p50/p95), and recall@10 against exact
search. At the largest size, an efSearch sweep shows the latency/recall trade-off, and the saved
index is loaded by memory map (the start-up path) and by reading, for comparison.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _server import SHARED_EVAL, rss_mib  # noqa: E402

from embeddings import MINILM_MODEL, VectorIndex, load_encoder  # noqa: E402
from embeddings.index import IndexConfig  # noqa: E402
from qa_service.corpus.chunking import PassageSplitter  # noqa: E402
from qa_service.errors import QAError  # noqa: E402
from qa_service.evaluation.datasets import available_splits, load_beir  # noqa: E402
from qa_service.evaluation.runner import benchmark_index  # noqa: E402
from qa_service.index.store import IndexData, load_index, read_manifest  # noqa: E402

CACHE = ROOT / ".qa-index" / "eval-cache"
K = 10


def _cached_scifact(model: str) -> IndexData | None:
    """The largest SciFact index in the `qa eval` cache built with `model` and real passages."""
    best = None
    for folder in sorted(CACHE.glob("*")):
        try:
            manifest = read_manifest(folder)
        except QAError:
            continue
        if (
            manifest.model == model
            and manifest.passage_settings.get("splitter") == "PassageSplitter"
            and manifest.documents > 5000
            and (best is None or manifest.passages > best[0])
        ):
            best = (manifest.passages, folder)
    return load_index(best[1]) if best else None


def real_vectors(batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """SciFact passage and sentence vectors (the base) and the questions' vectors."""
    encoder = load_encoder(MINILM_MODEL)
    folder = SHARED_EVAL / "scifact"
    benchmark = load_beir(folder, available_splits(folder)[0])
    started = time.perf_counter()
    data = _cached_scifact(encoder.name)
    cached = data is not None
    if data is None:  # encodes every passage and sentence once (about 25 minutes on 2 cores)
        data, _ = benchmark_index(
            benchmark, encoder, PassageSplitter(encoder, 96, 1), CACHE, True, batch_size
        )
    ids = np.arange(len(data.passages), dtype=np.int64)
    parts = [np.asarray(data.vectors.vectors(ids))]
    if data.unit_vectors is not None:
        parts.append(np.asarray(data.unit_vectors))
    base = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
    queries = encoder.encode_queries([q.text for q in benchmark.questions])
    print(
        f"base: {len(data.passages):,} SciFact passages + {len(base) - len(data.passages):,} "
        f"sentences ({'cached' if cached else 'encoded'}, {time.perf_counter() - started:.0f} s);"
        f" {len(queries)} real SciFact questions"
    )
    return base, np.ascontiguousarray(queries, dtype=np.float32)


def synthetic(base: np.ndarray, n: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` perturbed copies of random base vectors, and the base row each came from."""
    rng = np.random.default_rng(seed)
    source = rng.integers(0, len(base), n)
    out = np.empty((n, base.shape[1]), dtype=np.float32)
    for start in range(0, n, 100_000):
        chunk = base[source[start : start + 100_000]]
        chunk = chunk + rng.normal(scale=noise, size=chunk.shape).astype(np.float32)
        out[start : start + len(chunk)] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out, source


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by blocks (ground truth without a second copy of the vectors)."""
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(vectors), 200_000):
        s = queries @ vectors[start : start + 200_000].T
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        best_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], axis=1)
        best_i = np.concatenate([best_i, top + start], axis=1)
    order = np.argsort(-best_s, axis=1)[:, :k]
    return np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)


def check_neighbourhoods(
    base: np.ndarray, vectors: np.ndarray, source: np.ndarray, queries: np.ndarray
) -> None:
    base_s, base_i = exact_top(base, queries, 50)
    syn_s, syn_i = exact_top(vectors, queries, K)
    from_near = np.mean([np.isin(source[syn_i[q]], base_i[q]).mean() for q in range(len(queries))])
    rng = np.random.default_rng(7)
    a, b = rng.integers(0, len(vectors), (2, 20_000))
    random_cos = float(np.mean(np.sum(vectors[a] * vectors[b], axis=1)))
    self_cos = float(np.mean(np.sum(vectors[:20_000] * base[source[:20_000]], axis=1)))
    print(
        f"  neighbourhoods: cos(synthetic, its real passage) {self_cos:.3f}; question top-1 "
        f"cos real {base_s[:, 0].mean():.3f} / synthetic {syn_s[:, 0].mean():.3f}; top-10 "
        f"mean {base_s[:, :K].mean():.3f} / {syn_s.mean():.3f}; random pairs {random_cos:.3f};"
        f" synthetic top-10 drawn from the real top-50: {from_near:.0%}"
    )


def timed_search(index: VectorIndex, queries: np.ndarray) -> tuple[float, float, np.ndarray]:
    """p50 and p95 ms of one-question searches, and the ids found."""
    index.search(queries[:5], K)  # warm
    times, found = [], []
    for q in queries:
        started = time.perf_counter()
        _, ids = index.search(q[None, :], K)
        times.append((time.perf_counter() - started) * 1000)
        found.append(ids[0])
    return float(np.percentile(times, 50)), float(np.percentile(times, 95)), np.array(found)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)]))


def measure(
    kind: str, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, config: IndexConfig,
    folder: Path,
) -> tuple[VectorIndex, dict[str, float]]:  # fmt: skip
    gc.collect()
    before = rss_mib(os.getpid())
    started = time.perf_counter()
    index = VectorIndex.build(vectors, config=IndexConfig(**{**config.__dict__, "kind": kind}))
    build = time.perf_counter() - started
    grown = rss_mib(os.getpid()) - before
    path = folder / f"{kind}-{len(vectors)}.faiss"
    index.save(path)
    p50, p95, found = timed_search(index, queries)
    row = {
        "build_s": build,
        "bytes_per_passage": path.stat().st_size / len(vectors),
        "rss_mib": grown,
        "p50_ms": p50,
        "p95_ms": p95,
        "recall": recall(found, truth),
    }
    return index, row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--noise", type=float, default=0.03, help="Gaussian sigma per dimension")
    parser.add_argument("--queries", type=int, default=300, help="questions timed one by one")
    parser.add_argument("--m", type=int, default=IndexConfig.m)
    parser.add_argument("--ef-construction", type=int, default=IndexConfig.ef_construction)
    parser.add_argument("--ef-search", type=int, default=IndexConfig.ef_search)
    parser.add_argument("--sweep", type=int, nargs="*", default=[16, 32, 64, 128, 256, 512])
    parser.add_argument("--flat-up-to", type=int, default=1_000_000, help="skip flat above this")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    import faiss

    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads")
    base, queries = real_vectors(args.batch_size)
    queries = queries[: args.queries]
    config = IndexConfig(m=args.m, ef_construction=args.ef_construction, ef_search=args.ef_search)
    print(f"HNSW M={config.m} efConstruction={config.ef_construction} efSearch={config.ef_search}")
    rows: list[tuple[int, str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="qa-bench-ann-") as tmp:
        folder = Path(tmp)
        for n in args.sizes:
            vectors, source = synthetic(base, n, args.noise, seed=n)
            print(f"{n:,} synthetic passages")
            check_neighbourhoods(base, vectors, source, queries)
            _, truth = exact_top(vectors, queries, K)
            kinds = ["flat", "hnsw"] if n <= args.flat_up_to else ["hnsw"]
            index = None
            for kind in kinds:
                del index
                gc.collect()
                index, row = measure(kind, vectors, queries, truth, config, folder)
                rows.append((n, kind, row))
                print(
                    f"  {kind:5} build {row['build_s']:8.1f} s  {row['bytes_per_passage']:6.0f} "
                    f"B/passage  RSS +{row['rss_mib']:6.0f} MiB  search p50 {row['p50_ms']:6.2f}"
                    f" ms  p95 {row['p95_ms']:6.2f} ms  recall@10 {row['recall']:.3f}"
                )
            if n == max(args.sizes) and index is not None and index.kind == "hnsw":
                print(f"  efSearch sweep at {n:,}:")
                for ef in args.sweep:
                    index.config = IndexConfig(**{**index.config.__dict__, "ef_search": ef})
                    p50, p95, found = timed_search(index, queries)
                    print(
                        f"    efSearch {ef:4}: p50 {p50:6.2f} ms  p95 {p95:6.2f} ms  "
                        f"recall@10 {recall(found, truth):.3f}"
                    )
                path = folder / f"hnsw-{n}.faiss"
                params = index.params
                del index
                gc.collect()
                for mmap in (True, False):
                    before = rss_mib(os.getpid())
                    started = time.perf_counter()
                    loaded = VectorIndex.load(path, vectors.shape[1], params, config, mmap=mmap)
                    load_s = time.perf_counter() - started
                    loaded.search(queries[:1], K)
                    first = time.perf_counter() - started - load_s
                    how = "by memory map" if mmap else "by reading   "
                    grown = rss_mib(os.getpid()) - before
                    print(
                        f"  load {how}: {load_s * 1000:8.1f} ms, first search "
                        f"{first * 1000:7.1f} ms, RSS +{grown:.0f} MiB"
                    )
                    del loaded
                    gc.collect()
            del vectors, source
            gc.collect()
    print("\nsize, kind, build s, bytes/passage, RSS MiB, p50 ms, p95 ms, recall@10")
    for n, kind, row in rows:
        print(
            f"{n}, {kind}, {row['build_s']:.1f}, {row['bytes_per_passage']:.0f}, "
            f"{row['rss_mib']:.0f}, {row['p50_ms']:.2f}, {row['p95_ms']:.2f}, {row['recall']:.3f}"
        )


if __name__ == "__main__":
    main()
