"""Encoder backends side by side: torch, ONNX fp32 and ONNX int8 (QA_ENCODER_BACKEND).

In one run, for each backend: the model load (a fresh process each time, imports included; for
ONNX the export is made first and is cached, so this is the load a restarted server pays), texts
per second on the default corpus's passages and sentences (batches of 32), the latency of encoding
one seed dev question (median, p95), and the cosine of each vector to torch's (min, mean). With
--scifact, also SciFact nDCG@10 per backend through the project's own evaluation (whole
documents, dense: the protocol that reproduces MTEB's 0.6602 with torch), never from a cache.

    flock /tmp/bench.lock python benchmarks/encoders.py [--rounds 5] [--scifact train]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _server import ROOT, SHARED_EVAL, read_questions

QUESTIONS = SHARED_EVAL / "seed_dev_questions.jsonl"
SCIFACT = SHARED_EVAL / "scifact"
BACKENDS = ("torch", "onnx", "onnx-int8")

_LOAD = """
import sys, time
started = time.perf_counter()
from pathlib import Path
from embeddings import load_encoder
encoder = load_encoder(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
encoder.encode_queries(["warm"])
print(time.perf_counter() - started)
"""


def load_seconds(model: str, backend: str, cache: Path, repeats: int) -> float:
    """Median seconds to import, load and first encode, each time in a fresh process."""
    times = []
    for _ in range(repeats):
        done = subprocess.run(
            [sys.executable, "-c", _LOAD, model, backend, str(cache)],
            capture_output=True, text=True, check=True, cwd=ROOT,
        )  # fmt: skip
        times.append(float(done.stdout.strip().splitlines()[-1]))
    return statistics.median(times)


def throughput(encode: Callable[..., Any], texts: list[str], rounds: int) -> float:
    """Median texts/s over `rounds` passes (batches of 32)."""
    rates = []
    for _ in range(rounds):
        started = time.perf_counter()
        encode(texts, batch_size=32)
        rates.append(len(texts) / (time.perf_counter() - started))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="passes over texts and questions")
    parser.add_argument("--load-repeats", type=int, default=3)
    parser.add_argument("--scifact", metavar="SPLIT", help="also SciFact nDCG@10 on this split")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    args = parser.parse_args()

    from embeddings import MINILM_MODEL, Encoder, load_encoder
    from embeddings.onnx import OnnxEncoder
    from qa_service.corpus.chunking import PassageSplitter
    from qa_service.corpus.documents import load_corpus

    work = Path(tempfile.mkdtemp(prefix="qa-bench-encoders-"))
    cache = work / "models"
    questions = read_questions(QUESTIONS)

    encoders: dict[str, Encoder] = {}
    for backend in args.backends:
        started = time.perf_counter()
        encoder = load_encoder(MINILM_MODEL, backend, cache)
        seconds = time.perf_counter() - started
        if isinstance(encoder, OnnxEncoder):
            print(f"{backend}: exported to {encoder.model_path.name} in {seconds:.1f} s "
                  f"({encoder.model_path.stat().st_size / 1e6:.1f} MB)")  # fmt: skip
        encoders[backend] = encoder

    first = next(iter(encoders.values()))
    splitter = PassageSplitter(first, 96, 1)
    chunked = [splitter.split(d) for d in load_corpus(ROOT / "corpus").documents]
    passages = [p.text for c in chunked for p in c.passages]
    sentences = [c.document.text[a:b] for c in chunked for a, b in c.units]
    print(
        f"corpus: {len(passages)} passages (mean {np.mean([len(t) for t in passages]):.0f} "
        f"characters), {len(sentences)} sentences (mean "
        f"{np.mean([len(t) for t in sentences]):.0f}); {len(questions)} dev questions"
    )

    reference = None
    if "torch" in encoders:
        reference = encoders["torch"].encode_passages(passages + sentences + questions)
    rows: list[dict[str, Any]] = []
    for backend, encoder in encoders.items():
        encoder.encode_passages(passages[:32])  # warm
        row: dict[str, Any] = {"backend": backend, "name": encoder.name}
        row["load_s"] = load_seconds(MINILM_MODEL, backend, cache, args.load_repeats)
        row["passages_per_s"] = throughput(encoder.encode_passages, passages, args.rounds)
        row["sentences_per_s"] = throughput(encoder.encode_passages, sentences, args.rounds)
        latencies = []
        for _ in range(args.rounds):
            for q in questions:
                started = time.perf_counter()
                encoder.encode_queries([q])
                latencies.append((time.perf_counter() - started) * 1000)
        row["question_ms_median"] = statistics.median(latencies)
        row["question_ms_p95"] = float(np.percentile(latencies, 95))
        if reference is not None:
            cosines = np.sum(
                encoder.encode_passages(passages + sentences + questions) * reference, axis=1
            )
            row["cos_min"], row["cos_mean"] = float(cosines.min()), float(cosines.mean())
        rows.append(row)
        print(json.dumps(row))

    print()
    print(f"{'backend':<10} {'load s':>7} {'passages/s':>11} {'sentences/s':>12} "
          f"{'question ms (p50/p95)':>22} {'cos min/mean':>16}")  # fmt: skip
    base = rows[0]
    for row in rows:
        cos = f"{row['cos_min']:.5f}/{row['cos_mean']:.5f}" if "cos_min" in row else "-"
        print(
            f"{row['backend']:<10} {row['load_s']:>7.2f} {row['passages_per_s']:>11.1f} "
            f"{row['sentences_per_s']:>12.1f} "
            f"{row['question_ms_median']:>11.2f} / {row['question_ms_p95']:<8.2f} {cos:>16}"
        )
    for row in rows[1:]:
        print(
            f"{row['backend']} vs {base['backend']}: passages "
            f"{row['passages_per_s'] / base['passages_per_s']:.2f}x, sentences "
            f"{row['sentences_per_s'] / base['sentences_per_s']:.2f}x, one question "
            f"{base['question_ms_median'] / row['question_ms_median']:.2f}x faster, load "
            f"{base['load_s'] / row['load_s']:.1f}x faster"
        )

    if args.scifact:
        scifact(encoders, args.scifact)


def scifact(encoders: dict[str, Any], split: str) -> None:
    from qa_service.corpus.chunking import WholeDocumentSplitter
    from qa_service.evaluation.datasets import load_beir
    from qa_service.evaluation.runner import EvalOptions, evaluate_benchmark
    from qa_service.query.pipeline import AskOptions

    benchmark = load_beir(SCIFACT, split, " ")  # MTEB joins title and text with a space
    print(f"\nSciFact {split}: {len(benchmark.documents)} documents, "
          f"{len(benchmark.questions)} questions; whole documents, dense")  # fmt: skip
    for backend, encoder in encoders.items():
        started = time.perf_counter()
        report = evaluate_benchmark(
            benchmark, encoder, WholeDocumentSplitter(encoder), None,
            EvalOptions(AskOptions(mode="dense")),
        )  # fmt: skip
        print(
            f"{backend:<10} nDCG@10 {report.metrics['ndcg@10']:.4f}   "
            f"({time.perf_counter() - started:.0f} s, index {report.settings['index_seconds']} s)"
        )


if __name__ == "__main__":
    main()
