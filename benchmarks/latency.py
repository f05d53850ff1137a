"""Single-question latency: `POST /v1/ask` over HTTP against the bare model + FAISS floor.

Starts `qa serve` on the default corpus (or uses --url), asks the seed dev questions one at a
time, and times, in the same run, the bare floor for the same questions in-process: the
sentence-transformers model's encode of one question plus an exact FAISS search over the same
passage vectors. Also times a full index build of the corpus.

    python benchmarks/latency.py [--rounds 20] [--url http://127.0.0.1:8000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import httpx
import numpy as np
from _server import ROOT, SHARED_EVAL, read_questions, start_server

QUESTIONS = SHARED_EVAL / "seed_dev_questions.jsonl"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def summary(name: str, values_ms: list[float]) -> str:
    return (
        f"{name:<38} median {statistics.median(values_ms):7.2f} ms   "
        f"p95 {percentile(values_ms, 95):7.2f} ms   (n={len(values_ms)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="passes over the question set")
    parser.add_argument("--url", help="a running server to measure instead of starting one")
    args = parser.parse_args()

    from qa_service.config import Settings
    from qa_service.index.build import build_index
    from qa_service.index.store import load_index
    from qa_service.service import index_spec, load_configured_encoder

    questions = read_questions(QUESTIONS)
    work = Path(tempfile.mkdtemp(prefix="qa-bench-"))
    settings = Settings(corpus_dir=ROOT / "corpus", index_dir=work / "index")

    encoder = load_configured_encoder(settings)
    started = time.perf_counter()
    _, report = build_index(index_spec(settings, encoder))
    build_seconds = time.perf_counter() - started

    # The floor: the bare encoder (torch or ONNX, as configured) and a bare FAISS index over the
    # same passage vectors.
    index = load_index(settings.index_dir)
    passage_vectors = np.vstack(
        [index.vectors._index.reconstruct(i) for i in range(len(index.passages))]
    )
    flat = faiss.IndexFlatIP(passage_vectors.shape[1])
    flat.add(passage_vectors)

    process = None
    url = args.url
    if url is None:
        process, url = start_server(settings.corpus_dir, settings.index_dir)
    http_ms: dict[str, list[float]] = {"hybrid": [], "dense": []}
    bare_ms: list[float] = []
    # All questions per round: one /v1/ask/batch call against one /v1/ask call each.
    batch_ms: list[float] = []
    sequential_ms: list[float] = []
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            for q in questions[:3]:  # warm both paths
                client.post("/v1/ask", json={"question": q})
                flat.search(encoder.encode_queries([q]), 5)
            for _ in range(args.rounds):
                for q in questions:
                    for mode, timings in http_ms.items():
                        t0 = time.perf_counter()
                        response = client.post("/v1/ask", json={"question": q, "mode": mode})
                        timings.append((time.perf_counter() - t0) * 1000)
                        response.raise_for_status()
                    t0 = time.perf_counter()
                    flat.search(encoder.encode_queries([q]), 5)
                    bare_ms.append((time.perf_counter() - t0) * 1000)
                sequential_ms.append(sum(http_ms["hybrid"][-len(questions) :]))
                t0 = time.perf_counter()
                client.post("/v1/ask/batch", json={"questions": questions}).raise_for_status()
                batch_ms.append((time.perf_counter() - t0) * 1000)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)

    print(f"corpus: {report.documents} documents, {report.passages} passages; model {encoder.name}")
    print(f"index build (load, split, encode passages and sentences, save): {build_seconds:.2f} s")
    for mode, timings in http_ms.items():
        print(summary(f"POST /v1/ask ({mode}) over HTTP, conc. 1", timings))
    print(summary("bare encode + FAISS search", bare_ms))
    bare = statistics.median(bare_ms)
    for mode, timings in http_ms.items():
        print(f"ratio of medians, HTTP {mode} / bare: {statistics.median(timings) / bare:.2f}")
    hybrid_vs_dense = statistics.median(http_ms["hybrid"]) / statistics.median(http_ms["dense"])
    print(f"ratio of medians, hybrid / dense over HTTP: {hybrid_vs_dense:.2f}")
    n = len(questions)
    per_batch = statistics.median(batch_ms) / n
    per_single = statistics.median(sequential_ms) / n
    print(
        f"{n} questions: one /v1/ask/batch call {statistics.median(batch_ms):.1f} ms "
        f"({per_batch:.2f} ms/question) vs {n} /v1/ask calls {statistics.median(sequential_ms):.1f}"
        f" ms ({per_single:.2f} ms/question): batch is {per_single / per_batch:.1f}x faster"
    )


if __name__ == "__main__":
    main()
