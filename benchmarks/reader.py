"""What the reader costs per question, in-process, on the default corpus.

One service per setting over one index (all-MiniLM-L6-v2, as the other benchmarks, unless
QA_MODEL says otherwise): the reader off, then on at each depth (passages read per question).
The seed dev and extra questions are asked one at a time, every setting in turn for each
question, so load from elsewhere skews their ratios less. Prints each setting's median and p95
`QAService.ask` time, its ratio of medians to the reader off, and the reader's own time.

    python benchmarks/reader.py [--rounds 5] [--depths 1 3 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_EVAL = ROOT.parent / "shared" / "eval"

from _server import read_questions  # noqa: E402

from embeddings.reader import Reader  # noqa: E402
from qa_service.config import Settings  # noqa: E402
from qa_service.query.reading import PassageReader  # noqa: E402
from qa_service.service import QAService  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="passes over the questions")
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 3, 5])
    args = parser.parse_args()
    questions = read_questions(
        SHARED_EVAL / "seed_dev_questions.jsonl", ROOT / "eval" / "seed_extra_questions.jsonl"
    )
    work = Path(tempfile.mkdtemp(prefix="qa-reader-bench-"))
    settings = Settings(corpus_dir=ROOT / "corpus", index_dir=work / "index", reader=False)
    base = QAService.from_settings(settings)
    reader = Reader()
    services = {"reader off": base} | {
        f"reader, {d} passages": QAService(
            base.encoder,
            base.index,
            settings.min_score,
            settings.top_k,
            settings.mode,
            settings.dense_weight,
            reader=PassageReader(reader, d),
        )
        for d in args.depths
    }
    for service in services.values():  # warm up: first calls allocate
        for question in questions[:3]:
            service.ask(question)
    times: dict[str, list[float]] = {name: [] for name in services}
    for _ in range(args.rounds):
        for question in questions:
            for name, service in services.items():
                started = time.perf_counter()
                service.ask(question)
                times[name].append((time.perf_counter() - started) * 1000)
    # The reader alone: one call over the first passages `ask` would read.
    alone: dict[int, list[float]] = {d: [] for d in args.depths}
    for question in questions:
        passages = [p.hit.passage.text for p in base.ask(question).answer.passages]
        for depth in args.depths:
            started = time.perf_counter()
            reader.read([(question, p) for p in passages[:depth]])
            alone[depth].append((time.perf_counter() - started) * 1000)

    print(f"model {base.encoder.name}, reader {reader.name}, {len(base.index.passages)} passages")
    print(f"{len(questions)} questions x {args.rounds} rounds, one at a time\n")
    floor = statistics.median(times["reader off"])
    print(f"{'setting':<22} {'median ms':>10} {'p95 ms':>8} {'x off':>6}")
    for name, values in times.items():
        median = statistics.median(values)
        p95 = float(np.percentile(values, 95))
        print(f"{name:<22} {median:10.2f} {p95:8.2f} {median / floor:6.2f}")
    print("\nthe reader's call alone (median ms):")
    for depth, values in alone.items():
        print(f"  {depth} passages: {statistics.median(values):.2f}")


if __name__ == "__main__":
    main()
