"""Throughput and tail latency under concurrent load, against the bare batched floor.

Starts `qa serve` on the default corpus (or uses --url with --pid), then from this separate
process drives it over HTTP for a fixed time at each concurrency level with a mix of requests:
the seed question sets (answerable and unanswerable) as `/v1/ask`, and two-turn conversations as
`/v1/chat`. Prints per level: requests/s, p50/p95/p99 latency, errors (any non-2xx or transport
failure; 503s are counted apart as shed load), and the server's resident memory at the start
and end, and this process's own CPU time per request. With --writes-per-minute, a writer
replaces and removes documents meanwhile (the server runs on a copy of the corpus). In the same
run and process it measures the floor: the same questions encoded in batches of 64 by the bare
model plus an exact FAISS search, in questions/s.

The load generator shares the machine's cores with the server, so it is aiohttp: about 0.5 ms
of CPU per request here, against about 2.2 ms for httpx's async client, which took a sixth of
what the server could use at 16 clients.

    python benchmarks/load.py [--seconds 30] [--levels 1 4 16 64]
    python benchmarks/load.py --soak 600 --levels 16 --writes-per-minute 6   # with writes
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import shutil
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import faiss
import httpx
import numpy as np
from _server import ROOT, SHARED_EVAL, read_questions, rss_mib, start_server

QUESTION_SETS = [
    SHARED_EVAL / "seed_dev_questions.jsonl",
    ROOT / "eval" / "seed_extra_questions.jsonl",
]
CONVERSATIONS = [
    ("Where was the Second Country Workshop held?", "How many people attended it?"),
    ("What is GRETA?", "What do its reports highlight?"),
    ("Which workshop established a joint investigation team?", "Who supported it?"),
]
CHAT_SHARE = 0.2


@dataclass
class Level:
    concurrency: int
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    shed: int = 0
    writes: int = 0
    write_errors: int = 0
    error_kinds: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    client_cpu: float = 0.0  # seconds of this process's CPU time while driving the level
    rss_start: float = 0.0
    rss_end: float = 0.0
    rss_samples: list[tuple[float, float]] = field(default_factory=list)

    def line(self) -> str:
        lat = self.latencies_ms or [float("nan")]
        p = np.percentile(lat, [50, 95, 99])
        return (
            f"{self.concurrency:>5}  {len(self.latencies_ms) / self.seconds:8.1f}  "
            f"{p[0]:8.1f} {p[1]:8.1f} {p[2]:8.1f}  {self.errors:6d} {self.shed:6d}  "
            f"{self.rss_start:8.0f} {self.rss_end:8.0f}  "
            f"{1000 * self.client_cpu / max(len(self.latencies_ms), 1):8.2f}"
        )


def request_mix(questions: list[str], seed: int) -> itertools.cycle[tuple[str, dict[str, object]]]:
    rng = random.Random(seed)
    mix: list[tuple[str, dict[str, object]]] = []
    for question in questions:
        mix.append(("/v1/ask", {"question": question}))
        if rng.random() < CHAT_SHARE:
            first, follow_up = rng.choice(CONVERSATIONS)
            messages = [{"role": "user", "content": first},
                        {"role": "assistant", "content": "…"},
                        {"role": "user", "content": follow_up}]  # fmt: skip
            mix.append(("/v1/chat", {"messages": messages}))
    rng.shuffle(mix)
    return itertools.cycle(mix)


API_KEY = "load-benchmark-key"
TIMEOUT = aiohttp.ClientTimeout(total=120)


async def write_documents(url: str, level: Level, deadline: float, per_minute: float) -> None:
    """Replace one of three documents with new text, or remove it, at a steady pace."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession(url, timeout=TIMEOUT, headers=headers) as client:
        i = 0
        while time.monotonic() < deadline:
            doc = f"soak-{i % 3}"
            if i % 4 == 3:
                async with client.delete(f"/v1/documents/{doc}") as response:
                    ok = response.status in (204, 404)
            else:
                text = f"Soak note {i}. The benchmark wrote the code word zq{i} into this text."
                async with client.put(f"/v1/documents/{doc}", json={"text": text}) as response:
                    ok = response.ok
            level.writes += 1
            level.write_errors += not ok
            i += 1
            await asyncio.sleep(60 / per_minute)


async def drive(
    url: str,
    level: Level,
    seconds: float,
    pid: int | None,
    questions: list[str],
    writes_per_minute: float = 0,
) -> None:
    mix = request_mix(questions, seed=level.concurrency)
    deadline = time.monotonic() + seconds
    if pid is not None:
        level.rss_start = rss_mib(pid)

    async def worker(client: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            path, body = next(mix)
            t0 = time.perf_counter()
            try:
                async with client.post(path, json=body) as response:
                    await response.read()  # a streamed chat's events, to the last
            except (aiohttp.ClientError, TimeoutError) as exc:
                level.errors += 1
                level.error_kinds[type(exc).__name__] += 1
                continue
            if response.status == 503:
                level.shed += 1
                await asyncio.sleep(float(response.headers.get("retry-after", "1")))
            elif response.ok:
                level.latencies_ms.append((time.perf_counter() - t0) * 1000)
            else:
                level.errors += 1
                level.error_kinds[f"HTTP {response.status}"] += 1

    async def sample_memory() -> None:
        start = time.monotonic()
        while pid is not None and time.monotonic() < deadline:
            level.rss_samples.append((time.monotonic() - start, rss_mib(pid)))
            await asyncio.sleep(min(30.0, seconds / 10))

    started, cpu = time.monotonic(), os.times()
    connector = aiohttp.TCPConnector(limit=level.concurrency)
    async with aiohttp.ClientSession(url, timeout=TIMEOUT, connector=connector) as client:
        writer = (
            [write_documents(url, level, deadline, writes_per_minute)]
            if writes_per_minute > 0
            else []
        )
        await asyncio.gather(
            sample_memory(), *writer, *(worker(client) for _ in range(level.concurrency))
        )
    level.seconds = time.monotonic() - started
    now = os.times()
    level.client_cpu = now.user + now.system - cpu.user - cpu.system
    if pid is not None:
        level.rss_end = rss_mib(pid)


def bare_batched_throughput(index_dir: Path, questions: list[str], seconds: float) -> float:
    """Questions/s of the bare model encoding batches of 64 plus an exact FAISS search, with the
    encoder the server runs (the configured backend, its export cached in the index folder)."""
    from qa_service.config import Settings
    from qa_service.index.store import load_index
    from qa_service.service import load_configured_encoder

    encoder = load_configured_encoder(Settings(index_dir=index_dir))
    index = load_index(index_dir)
    vectors = index.vectors.vectors(np.arange(len(index.passages), dtype=np.int64))
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(np.ascontiguousarray(vectors))
    batch = list(itertools.islice(itertools.cycle(questions), 64))
    flat.search(encoder.encode_queries(batch[:4]), 5)  # warm
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        flat.search(encoder.encode_queries(batch, batch_size=64), 5)
        done += len(batch)
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30, help="duration of each level")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--soak", type=float, help="one run of this many seconds per level")
    parser.add_argument("--writes-per-minute", type=float, default=0, help="document writes")
    parser.add_argument("--url", help="a running server to measure instead of starting one")
    parser.add_argument("--pid", type=int, help="the running server's process id, for memory")
    args = parser.parse_args()
    seconds = args.soak or args.seconds
    questions = read_questions(*QUESTION_SETS)

    work = Path(tempfile.mkdtemp(prefix="qa-load-"))
    index_dir = work / "index"
    process, url, pid = None, args.url, args.pid
    if url is None:
        corpus = work / "corpus"  # writes change the corpus folder: never the shipped one
        shutil.copytree(ROOT / "corpus", corpus)
        process, url = start_server(corpus, index_dir, {"QA_API_KEYS": API_KEY})
        pid = process.pid
    levels = []
    try:
        with httpx.Client(base_url=url, timeout=60) as client:  # warm the model and caches
            for q in questions[:8]:
                client.post("/v1/ask", json={"question": q}).raise_for_status()
        for concurrency in args.levels:
            level = Level(concurrency)
            asyncio.run(drive(url, level, seconds, pid, questions, args.writes_per_minute))
            levels.append(level)
            print(f"level {concurrency} done: {len(level.latencies_ms)} requests", flush=True)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=60)
    bare = bare_batched_throughput(index_dir, questions, 20) if args.url is None else None

    print(f"\n{len(questions)} questions, {CHAT_SHARE:.0%} of them followed by a /v1/chat turn; "
          f"{seconds:.0f} s per level")  # fmt: skip
    print(" conc.    req/s    p50 ms   p95 ms   p99 ms  errors   shed  RSS MiB start / end"
          "  client CPU ms/req")  # fmt: skip
    for level in levels:
        print(level.line())
    for level in levels:
        if level.error_kinds:
            print(f"concurrency {level.concurrency} errors: {dict(level.error_kinds)}")
        if level.writes:
            print(f"concurrency {level.concurrency}: {level.writes} document writes, "
                  f"{level.write_errors} failed")  # fmt: skip
    if bare is not None:
        print(f"\nbare batched encode + FAISS search (batches of 64): {bare:.1f} questions/s")
        for level in levels:
            rate = len(level.latencies_ms) / level.seconds
            print(f"concurrency {level.concurrency:>3}: {rate / bare:.2f}x the bare throughput")
    if args.soak:
        for level in levels:
            samples = ", ".join(f"{t:.0f}s {m:.0f}" for t, m in level.rss_samples)
            print(f"memory (MiB) during the {level.concurrency}-client soak: {samples}")
            p50s = statistics.median(level.latencies_ms) if level.latencies_ms else float("nan")
            print(f"median latency {p50s:.1f} ms over {len(level.latencies_ms)} requests")


if __name__ == "__main__":
    main()
