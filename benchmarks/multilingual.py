"""What the multilingual model costs against the English one, in-process, on the same corpus.

For each model, on the backend the service uses: load time; an index build of the corpus with the
service's settings (each encoding stage timed as texts per second: passages, and for e5 its
sentences and passages read in context; plus passages per second of the whole build); the latency
of one question (the model's encode alone, and `QAService.ask` in hybrid mode, so encode plus
ranking and the answer sentence), over the English and multilingual seed dev questions.

    python benchmarks/multilingual.py [--rounds 5] [--corpus-dir corpus]

Run it on an idle machine: both engines use every core, so anything else running skews them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embeddings import E5_MODEL, MINILM_MODEL, load_encoder  # noqa: E402
from qa_service.config import Settings  # noqa: E402
from qa_service.index.build import IndexSpec, build_index  # noqa: E402
from qa_service.query.pipeline import AskOptions  # noqa: E402
from qa_service.service import QAService, make_splitter  # noqa: E402

MODEL_CACHE = Path(tempfile.gettempdir()) / "qa-bench-models"
QUESTION_FILES = (
    ROOT.parent / "shared" / "eval" / "seed_dev_questions.jsonl",
    ROOT / "eval" / "seed_dev_multilingual.jsonl",
)


def questions() -> list[str]:
    return [
        json.loads(line)["question"]
        for path in QUESTION_FILES
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]


def ms(values: list[float]) -> str:
    return f"median {statistics.median(values):7.2f} ms, p95 {np.percentile(values, 95):7.2f} ms"


def measure(model: str, corpus: Path, rounds: int, asked: list[str]) -> None:
    started = time.perf_counter()
    # The configured backend, as the service loads it (ONNX for sentence-transformers folders),
    # with its export kept between runs: the first run's load includes the one-off export.
    encoder = load_encoder(model, Settings().encoder_backend, MODEL_CACHE)
    load_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(corpus_dir=corpus, index_dir=Path(tmp) / "index", model=model)
        splitter = make_splitter(settings, encoder)
        encoded: dict[str, tuple[int, float]] = {}
        last = [time.perf_counter()]

        def progress(label: str, total: int):  # type: ignore[no-untyped-def]
            last[0] = time.perf_counter()

            def update(n: int) -> None:
                count, seconds = encoded.get(label, (0, 0.0))
                now = time.perf_counter()
                encoded[label] = (count + n, seconds + now - last[0])
                last[0] = now

            return update

        spec = IndexSpec(corpus, settings.index_dir, encoder, splitter)
        data, report = build_index(spec, progress)
        service = QAService(encoder, data, None, 5)
        for q in asked[:3]:  # warm up
            service.ask(q)
        encode_ms: list[float] = []
        ask_ms: list[float] = []
        for _ in range(rounds):
            for q in asked:
                t0 = time.perf_counter()
                encoder.encode_queries([q])
                encode_ms.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                service.ask(q, AskOptions(mode="hybrid"))
                ask_ms.append((time.perf_counter() - t0) * 1000)
    print(f"== {model}")
    print(f"load: {load_seconds:.2f} s; corpus: {report.documents} documents, {report.passages} "
          f"passages (passage_tokens={splitter.target_tokens})")  # fmt: skip
    for label, (count, seconds) in encoded.items():
        print(f"encode {label}: {count} in {seconds:.2f} s = {count / seconds:.1f} texts/s")
    rate = report.passages / report.seconds
    print(f"index build: {report.seconds:.2f} s = {rate:.1f} passages/s (sentences included)")
    print(f"one question, encode only ({len(encode_ms)}): {ms(encode_ms)}")
    print(f"one question, QAService.ask hybrid ({len(ask_ms)}): {ms(ask_ms)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--corpus-dir", type=Path, default=ROOT / "corpus")
    parser.add_argument("--models", nargs="+", default=[MINILM_MODEL, E5_MODEL])
    args = parser.parse_args()
    asked = questions()
    for model in args.models:
        measure(model, args.corpus_dir, args.rounds, asked)


if __name__ == "__main__":
    main()
