"""Cold start: seconds from starting `qa serve` on a prebuilt index to `/readyz` answering 200.

    flock /tmp/bench.lock python benchmarks/cold_start.py --runs 5 --large 200000

Builds the default corpus's index once, then starts `qa serve` on it `--runs` times and polls
`/readyz` every 10 ms; prints the median and the breakdown the server reports on `/metrics`
(model load, index load), and the bare cost of the imports. With `--large N`, it does the same on
a synthetic index of about N passages (SciFact abstracts copied under new ids, their vectors
perturbed: see benchmarks/ann.py), so that the vector index is HNSW, and it times the parts of
loading it in-process: checksums, the corpus check, documents, vectors (memory map), BM25.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# docs/benchmarks.md measures the English model (the default when most of its figures were
# taken); QA_MODEL=intfloat/multilingual-e5-small measures the product's default.
os.environ.setdefault("QA_MODEL", "sentence-transformers/all-MiniLM-L6-v2")

from _server import rss_mib  # noqa: E402

from embeddings import MINILM_MODEL, VectorIndex, load_encoder  # noqa: E402
from embeddings.files import file_sha256  # noqa: E402
from embeddings.index import IndexConfig  # noqa: E402
from qa_service.config import Settings  # noqa: E402
from qa_service.corpus.acronyms import definitions  # noqa: E402
from qa_service.corpus.chunking import Passage, PassageSplitter, Span  # noqa: E402
from qa_service.corpus.documents import Document  # noqa: E402
from qa_service.corpus.fingerprint import MEMO_FILE, corpus_files, fingerprint_of  # noqa: E402
from qa_service.index.build import IndexSpec, build_index, passage_settings  # noqa: E402
from qa_service.index.lexical import LexicalIndex  # noqa: E402
from qa_service.index.store import (  # noqa: E402
    IndexData,
    current_generation,
    load_index,
    new_manifest,
    read_manifest,
    save_index,
)


def start_and_wait(corpus: Path, index_dir: Path) -> tuple[float, dict[str, float], float]:
    """Seconds from process start to ready, the server's own load times, and its RSS (MiB)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "QA_CORPUS_DIR": str(corpus), "QA_INDEX_DIR": str(index_dir),
           "QA_REBUILD_STALE_INDEX": "false"}  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "qa_service.cli", "serve", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        while True:
            if process.poll() is not None:
                assert process.stderr is not None
                raise SystemExit(f"server exited: {process.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.perf_counter() - started > 600:
                raise SystemExit("not ready after 600 s")
            time.sleep(0.01)
        ready = time.perf_counter() - started
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        parts = {
            name: float(m.group(1))
            for name in ("model", "index")
            if (m := re.search(rf"^qa_{name}_load_seconds (\S+)$", metrics, re.M))
        }
        return ready, parts, rss_mib(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)


def import_seconds(runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", "import qa_service.cli.main, qa_service.api.app"], check=True
        )
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def report(label: str, corpus: Path, index_dir: Path, runs: int) -> None:
    results = [start_and_wait(corpus, index_dir) for _ in range(runs)]
    ready = [r[0] for r in results]
    model = [r[1].get("model", float("nan")) for r in results]
    index = [r[1].get("index", float("nan")) for r in results]
    print(
        f"{label}: process start to /readyz 200, median of {runs}: {statistics.median(ready):.2f} s"
        f" (min {min(ready):.2f}, max {max(ready):.2f}); of which model load "
        f"{statistics.median(model):.2f} s, index check and load {statistics.median(index):.2f}"
        f" s; server RSS when ready {statistics.median(r[2] for r in results):.0f} MiB"
    )


def large_index(corpus: Path, index_dir: Path, passages: int) -> None:
    """A synthetic index of about `passages` passages: SciFact copied under new ids."""
    from ann import _cached_scifact

    encoder = load_encoder(MINILM_MODEL)
    base = _cached_scifact(encoder.name)
    if base is None:
        raise SystemExit("no cached SciFact index: run `python benchmarks/ann.py` first")
    copies = max(1, round(passages / len(base.passages)))
    documents: dict[str, Document] = {}
    units: dict[str, list[Span]] = {}
    rows: list[Passage] = []
    for c in range(copies):
        for doc_id, document in base.documents.items():
            new_id = f"c{c}/{doc_id}"
            documents[new_id] = replace(document, id=new_id, source=f"{new_id}.txt")
            units[new_id] = base.units[doc_id]
        rows.extend(
            replace(p, id=f"c{c}/{p.id}", document_id=f"c{c}/{p.document_id}")
            for p in base.passages
        )
    real = np.asarray(base.vectors.vectors(np.arange(len(base.passages), dtype=np.int64)))
    rng = np.random.default_rng(1)
    vectors = np.tile(real, (copies, 1))  # each copy's passage near its real vector
    vectors += rng.normal(scale=0.03, size=vectors.shape).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for doc_id, document in documents.items():
        path = corpus / f"{doc_id}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(document.text, encoding="utf-8")
    files = corpus_files(corpus, index_dir / MEMO_FILE)  # as `qa index` does
    started = time.perf_counter()
    config = Settings().index_config()
    data = IndexData(
        documents=documents,
        units=units,
        acronyms={doc_id: definitions(d.text) for doc_id, d in documents.items()},
        passages=rows,
        vectors=VectorIndex.build(vectors, config=config),
        lexical=LexicalIndex.build([p.text for p in rows]),
        unit_vectors=None,
        manifest=new_manifest(
            encoder.name,
            encoder.dimension,
            fingerprint_of(files),
            passage_settings(PassageSplitter(encoder, 96, 1), encoder.name),
            len(documents),
            len(rows),
            files,
        ),
    )
    save_index(index_dir, data)
    print(
        f"large index: {len(documents):,} documents, {len(rows):,} passages, vector index "
        f"{data.vectors.params}, built in {time.perf_counter() - started:.0f} s"
    )


def load_breakdown(corpus: Path, index_dir: Path) -> None:
    """The parts of loading the index, in-process (warm page cache, as after a first start)."""
    folder = current_generation(index_dir)
    manifest = read_manifest(index_dir)
    sizes = sum((folder / name).stat().st_size for name in manifest.files)
    t = time.perf_counter()
    for name in manifest.files:
        file_sha256(folder / name)
    checksums = time.perf_counter() - t
    t = time.perf_counter()
    corpus_files(corpus)
    corpus_check = time.perf_counter() - t
    t = time.perf_counter()
    corpus_files(corpus, index_dir / MEMO_FILE)  # the servers started above left it current
    memo_check = time.perf_counter() - t
    t = time.perf_counter()
    VectorIndex.load(folder / "passages.faiss", manifest.dimension, manifest.vector_index,
                     IndexConfig())  # fmt: skip
    vectors = time.perf_counter() - t
    t = time.perf_counter()
    LexicalIndex.load(folder / "bm25")
    bm25 = time.perf_counter() - t
    t = time.perf_counter()
    load_index(index_dir)
    whole = time.perf_counter() - t
    print(
        f"  in-process: load_index {whole:.2f} s, of which sha256 of {sizes / 2**20:.0f} MiB "
        f"{checksums:.2f} s, vectors by memory map {vectors * 1000:.1f} ms, BM25 {bm25:.2f} s, "
        f"documents and passages (JSON) the rest; the start-up corpus check (sha256 of every "
        f"corpus file) {corpus_check:.2f} s more, {memo_check:.2f} s with the index's memo of "
        f"unchanged files"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--large", type=int, default=0, help="passages of a synthetic index")
    args = parser.parse_args()
    print(f"imports (qa_service.cli.main, api.app), median of {args.runs}: "
          f"{import_seconds(args.runs):.2f} s")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="qa-bench-cold-") as tmp:
        index_dir = Path(tmp) / "default-index"
        encoder = load_encoder(MINILM_MODEL)
        spec = IndexSpec(ROOT / "corpus", index_dir, encoder, PassageSplitter(encoder, 96, 1))
        _, built = build_index(spec)
        print(f"default corpus: {built.documents} documents, {built.passages} passages")
        report("default corpus", ROOT / "corpus", index_dir, args.runs)
        load_breakdown(ROOT / "corpus", index_dir)
        if args.large:
            corpus, large_dir = Path(tmp) / "large-corpus", Path(tmp) / "large-index"
            corpus.mkdir()
            large_index(corpus, large_dir, args.large)
            report(f"synthetic {args.large:,}", corpus, large_dir, args.runs)
            load_breakdown(corpus, large_dir)


if __name__ == "__main__":
    main()
