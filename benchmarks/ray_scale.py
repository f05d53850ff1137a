"""Sharding at scale (issue 28): are answers over shards the single index's, and what do a Ray
build and Ray Serve cost against one process?

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

`serve`: the default corpus served by `qa serve` (one process) and by `qa serve --ray` over N
shards (a local Ray head started with 8 logical CPUs, so that every replica is placed; they share
this machine's cores), both with all-MiniLM-L6-v2 on ONNX: the share of the seed questions whose
top 10 over HTTP is identical, the p50 of one client's questions, and questions/s at 16 clients
(aiohttp, from this process), each as a ratio to the one process's in the same run.

    python benchmarks/ray_scale.py serve [--shards 1 2 4] [--seconds 20] [--corpus squad]

With `--corpus squad` the SQuAD slice's 1,048 paragraphs are the documents (the default corpus's
five cannot fill four shards by hash) and 200 of its questions are asked.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
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
os.environ["RAY_AUTH_MODE"] = "disabled"  # the local head below is on loopback, for this run

from embeddings import MINILM_MODEL, Encoder, VectorIndex, load_encoder  # noqa: E402
from embeddings.index import IndexConfig  # noqa: E402
from qa_service.config import Settings  # noqa: E402
from qa_service.corpus.chunking import Passage  # noqa: E402
from qa_service.corpus.documents import Document  # noqa: E402
from qa_service.errors import ClusterError  # noqa: E402
from qa_service.evaluation.datasets import load_squad  # noqa: E402
from qa_service.index.build import IndexSpec, build_index, index_documents  # noqa: E402
from qa_service.index.lexical import Analyzer, LexicalIndex  # noqa: E402
from qa_service.index.shard_lexical import TermCounts  # noqa: E402
from qa_service.index.shards import ShardLayout, shard_of  # noqa: E402
from qa_service.index.store import IndexData, save_index  # noqa: E402
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
    documents: list[Document] = []
    rows: list[Passage] = []
    terms: list[list[str]] = []
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
    model: IndexData, shard: bool = False,
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
        term_counts=TermCounts.from_terms(terms) if shard else None,
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
        corpus = _squad_files(Path(folder) / "corpus")
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


async def _drive(
    url: str, questions: list[str], clients: int, seconds: float
) -> tuple[float, float]:
    """Questions/s and p50 (ms) of `clients` asking in turn for `seconds`."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    asked = itertools.cycle(questions)

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.monotonic() < deadline:
            started = time.perf_counter()
            async with session.post("/v1/ask", json={"question": next(asked)}) as response:
                await response.read()
            if response.status == 200:
                latencies.append((time.perf_counter() - started) * 1000)
            else:
                errors += 1

    began = time.monotonic()
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(url, connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    if errors:
        print(f"    {errors} requests failed")
    return len(latencies) / (time.monotonic() - began), statistics.median(latencies)


def _top10(url: str, questions: list[str]) -> list[list[tuple[str, int, int]]]:
    tops = []
    for question in questions:
        found = httpx.post(f"{url}/v1/ask", json={"question": question, "top_k": K}, timeout=60)
        found.raise_for_status()
        tops.append([(p["document_id"], p["start"], p["end"]) for p in found.json()["passages"]])
    return tops


def _measure(name: str, url: str, questions: list[str], seconds: float,
             base: tuple[float, float] | None) -> tuple[float, float]:  # fmt: skip
    asyncio.run(_drive(url, questions, 4, 3))  # warm
    _, p50 = asyncio.run(_drive(url, questions, 1, seconds))
    rate, _ = asyncio.run(_drive(url, questions, 16, seconds))
    ratio = f" ({p50 / base[1]:.2f}x, {rate / base[0]:.2f}x)" if base else ""
    print(f"{name}: p50 one client {p50:.1f} ms, {rate:.1f} questions/s at 16 clients{ratio}")
    return rate, p50


def serve_benchmark(shard_counts: list[int], seconds: float, corpus_name: str) -> None:
    from _server import SHARED_EVAL, read_questions, start_server

    from qa_service.distributed.indexing import build_shards

    with tempfile.TemporaryDirectory() as folder:
        if corpus_name == "squad":  # enough documents for 4 shards; 200 of its questions
            corpus = _squad_files(Path(folder) / "corpus")
            questions = [q.text for q in load_squad(SQUAD).questions[:200]]
        else:
            corpus = ROOT / "corpus"
            questions = read_questions(SHARED_EVAL / "seed_dev_questions.jsonl",
                                       ROOT / "eval" / "seed_extra_questions.jsonl")  # fmt: skip
        minilm = {"QA_MODEL": MINILM_MODEL, "QA_ENCODER_BACKEND": "onnx"}
        process, url = start_server(corpus, Path(folder) / "single", minilm)
        single, base = _measure_process(process, url, questions, seconds)
        head, address = _ray_head()
        port = _free_port()  # Serve's proxy keeps the port it started with
        try:
            for count in shard_counts:
                settings = Settings(
                    corpus_dir=corpus, index_dir=Path(folder) / f"s{count}",
                    model=MINILM_MODEL, encoder_backend="onnx", host="127.0.0.1", port=port,
                )  # fmt: skip
                try:
                    build_shards(settings, count, address)
                except ClusterError as exc:
                    print(f"\n{count} shard(s): {exc}")
                    continue
                _measure_on_ray(settings, address, count, questions, single, seconds, base)
        finally:
            head.terminate()
            head.wait()


def _measure_process(
    process: subprocess.Popen[bytes], url: str, questions: list[str], seconds: float
) -> tuple[list[list[tuple[str, int, int]]], tuple[float, float]]:
    """The one-process server's top 10s and `_measure`; the server is stopped after."""
    try:
        return _top10(url, questions), _measure("one process", url, questions, seconds, None)
    finally:
        process.terminate()
        process.wait()


def _measure_on_ray(
    settings: Settings, address: str, count: int, questions: list[str],
    single: list[list[tuple[str, int, int]]], seconds: float, base: tuple[float, float],
) -> None:  # fmt: skip
    """`qa serve --ray` over the layout in settings.index_dir: the share of identical top 10s,
    then `_measure`."""
    from qa_service.distributed import serving

    serving.start(settings, address, 1, proxy_location="HeadOnly")
    url = f"http://127.0.0.1:{settings.port}"
    _wait_ready(url)
    same = sum(a == b for a, b in zip(_top10(url, questions), single, strict=True))
    print(f"\n{count} shard(s): identical top {K} {same}/{len(questions)}")
    _measure(f"Ray Serve, {count} shard(s)", url, questions, seconds, base)
    serving.stop()


def serve_synthetic(passages: int, shard_counts: list[int], seconds: float) -> None:
    """`serve` over the synthetic collection of `exactness`: one process serving it as one index
    (`_serve_index`), then Ray Serve over N flat shards of it."""

    documents, rows, vectors, terms = synthetic(passages)
    encoder = _encoder()
    template = index_documents(documents[:1], encoder, make_splitter(Settings(), encoder), "f",
                               sentence_vectors=False)  # fmt: skip
    questions = [q.text for q in load_squad(SQUAD).questions[:200]]
    with tempfile.TemporaryDirectory(dir=ROOT.parent) as folder:
        single_dir = Path(folder) / "single"
        save_index(single_dir, _index(documents, rows, vectors, terms, template))
        port = _free_port()
        process = subprocess.Popen([sys.executable, __file__, "_serve-index", str(single_dir),
                                    str(port)])  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url)
        single, base = _measure_process(process, url, questions, seconds)
        head, address = _ray_head()
        port = _free_port()
        try:
            for count in shard_counts:
                index_dir = Path(folder) / f"s{count}"
                owner = {d.id: shard_of(d.id, count) for d in documents}
                by_passage = np.array([owner[p.document_id] for p in rows])
                for n in range(count):
                    mine = np.flatnonzero(by_passage == n)
                    docs = [d for d in documents if owner[d.id] == n]
                    data = _index(docs, [rows[i] for i in mine], vectors[mine],
                                  [terms[i] for i in mine], template, shard=True)  # fmt: skip
                    save_index(index_dir / "shards" / "synthetic" / f"{n:03d}", data)
                built = template.manifest
                layout = ShardLayout(count, built.model, built.passage_settings,
                                     built.corpus_fingerprint, "shards/synthetic")  # fmt: skip
                layout.save(index_dir)
                settings = Settings(index_dir=index_dir, model=MINILM_MODEL, encoder_backend="onnx",
                                    host="127.0.0.1", port=port)  # fmt: skip
                _measure_on_ray(settings, address, count, questions, single, seconds, base)
                shutil.rmtree(index_dir)
        finally:
            head.terminate()
            head.wait()


def _serve_index(index_dir: Path, port: int) -> None:
    """One process serving a saved index as `qa serve` does, without a corpus folder."""
    import uvicorn

    from qa_service.api import create_app
    from qa_service.index.store import load_index
    from qa_service.service import QAService

    settings = Settings(index_dir=index_dir, model=MINILM_MODEL, encoder_backend="onnx")
    service = QAService(_encoder(), load_index(index_dir), None, settings.top_k)
    uvicorn.run(create_app(settings, service), host="127.0.0.1", port=port, log_level="warning")


def _squad_files(corpus: Path) -> Path:
    """The SQuAD slice's paragraphs as text files, one document each."""
    for document in load_squad(SQUAD).documents:
        path = corpus / f"{document.id}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(document.text, encoding="utf-8")
    return corpus


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not become ready")


def _ray_head() -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={port}",
         "--node-ip-address=127.0.0.1", "--num-cpus=8", "--include-dashboard=false",
         "--disable-usage-stats", "--block"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return head, address
        except OSError:
            if time.monotonic() > deadline or head.poll() is not None:
                raise SystemExit("the Ray head did not start") from None
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    if sys.argv[1:2] == ["_serve-index"]:
        _serve_index(Path(sys.argv[2]), int(sys.argv[3]))
        return
    parser.add_argument("part", choices=["exactness", "build", "serve"])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--corpus", choices=["default", "squad", "synthetic"], default="default")
    parser.add_argument("--passages", type=int, default=200_000)
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--address", default=None)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.part == "exactness":
        exactness(args.passages, args.shards)
    elif args.part == "build":
        build(args.shards, args.address, args.workers)
    elif args.corpus == "synthetic":
        serve_synthetic(args.passages, args.shards, args.seconds)
    else:
        serve_benchmark(args.shards, args.seconds, args.corpus)


if __name__ == "__main__":
    main()
