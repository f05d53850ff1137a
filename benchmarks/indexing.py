"""Indexing throughput: `qa index` end to end against the bare encoder on the same passages.

For each corpus (the default one, and SciFact abstracts cut to --scifact-docs documents) it runs,
each in a process of its own so that peak memory is that step's alone:

1. `qa index` itself (the command's own code, in a fresh index folder, so nothing is reused),
   with every stage of the build timed from outside by wrapping the functions it calls: hashing
   the corpus files, loading the documents, splitting (of which tokenizing), encoding passages
   (their sentences' vectors are read off the same forward pass), the FAISS and BM25 indexes,
   writing the generation. Wall time is taken
   by this process from the start of the child to its exit, so it includes Python's start-up,
   the imports and the model load, as a user sees it;
2. the bare encoder on the exact texts that build encoded (read back from its index):
   the configured encoder's `encode_passages` in batches of 32, once in corpus order (one model
   call per batch, no sorting) and once as one call (sorted by length, as the build does);
3. `qa index` again, in a new folder that holds only the first build's ONNX export: the build
   as it runs once the model is exported, without the export earlier in the same process.

It prints passages/s, the share of each stage, the ratio end to end / bare, and
peak resident memory (ru_maxrss of each process; VmHWM after each stage of the build).

    flock /tmp/bench.lock python benchmarks/indexing.py [--scifact-docs 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, Protocol, TypeVar

from _server import ROOT, SHARED_EVAL

if TYPE_CHECKING:
    from embeddings import Encoder
    from embeddings.base import Span
    from embeddings.base import Vectors as VectorArray
    from embeddings.index import Ids, IndexConfig
    from qa_service.config import Settings
    from qa_service.corpus.chunking import PassageSplitter
    from qa_service.index.encode import Progress

SCIFACT = SHARED_EVAL / "scifact" / "corpus.jsonl"
BATCH = 32

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class TextsFunction(Protocol[P, R_co]):
    """A function of texts and more, such as `Encoder.encode_passages`."""

    def __call__(self, texts: Sequence[str], *args: P.args, **kwargs: P.kwargs) -> R_co: ...


def run_measured(args: list[str], log: Path) -> tuple[float, float]:
    """Run a child process to its end: (wall seconds, peak resident MiB)."""
    started = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({process.returncode}); see {log}")
    return seconds, usage.ru_maxrss / 1024  # KiB on Linux


def vm_hwm_mib() -> float:
    """This process's peak resident memory so far."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------------------------------------
# Child: `qa index` with its stages timed


def _patch(owner: object, name: str, value: object) -> None:
    """`owner.name = value`, where mypy allows no assignment: a method of an object, or a name
    that a module imports from another (strict mypy re-exports no imported name). `timed` keeps
    each wrapped function's type, so `value` has the type of what it replaces."""
    setattr(owner, name, value)


def _index_child(corpus: Path, index_dir: Path, out: Path) -> None:
    started = time.perf_counter()
    import numpy as np

    import qa_service.cli.main as cli
    import qa_service.index.build as ix
    import qa_service.service as service
    from embeddings import VectorIndex
    from qa_service.cli.common import ProgressBars
    from qa_service.corpus.documents import load_corpus
    from qa_service.corpus.fingerprint import corpus_files
    from qa_service.index.encode import previous_index_cache
    from qa_service.index.lexical import LexicalIndex
    from qa_service.index.store import save_index

    imported = time.perf_counter() - started
    seconds: dict[str, float] = defaultdict(float)
    memory: dict[str, float] = {}
    counts: dict[str, int] = defaultdict(int)
    label = ["encoding"]

    def timed(name: str, fn: Callable[P, R]) -> Callable[P, R]:
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[name] += time.perf_counter() - t0
                memory[name] = vm_hwm_mib()

        return wrapper

    # The originals come from the modules that define them: the objects cli and ix imported.
    load_encoder = service.load_configured_encoder

    def timed_encoder(settings: Settings) -> Encoder:
        encoder = timed("loading the model", load_encoder)(settings)
        token_spans = encoder.token_spans
        encode_passages, encode_in_context = encoder.encode_passages, encoder.encode_in_context

        def spans(texts: Sequence[str]) -> list[list[Span]]:
            t0 = time.perf_counter()
            try:
                return token_spans(texts)
            finally:
                seconds["  of which tokenizing"] += time.perf_counter() - t0

        def counted(fn: TextsFunction[P, R]) -> TextsFunction[P, R]:
            def encode(texts: Sequence[str], *args: P.args, **kwargs: P.kwargs) -> R:
                counts[label[0]] += len(texts)
                return timed(label[0], fn)(texts, *args, **kwargs)

            return encode

        _patch(encoder, "token_spans", spans)
        _patch(encoder, "encode_passages", counted(encode_passages))
        _patch(encoder, "encode_in_context", counted(encode_in_context))
        return encoder

    make_splitter = service.make_splitter

    def timed_splitter(settings: Settings, encoder: Encoder) -> PassageSplitter:
        splitter = make_splitter(settings, encoder)
        _patch(splitter, "split", timed("splitting", splitter.split))
        return splitter

    class Bars(ProgressBars):
        def __call__(self, name: str, total: int) -> Progress:
            label[0] = f"encoding {name}"
            return super().__call__(name, total)

    class Lexical(LexicalIndex):
        @classmethod
        def build(cls, texts: Sequence[str]) -> LexicalIndex:
            return timed("BM25 index", super().build)(texts)

    class Vectors(VectorIndex):
        @classmethod
        def build(
            cls, vectors: VectorArray, ids: Ids | None = None, config: IndexConfig | None = None
        ) -> VectorIndex:
            return timed("FAISS index", super().build)(vectors, ids, config)

    _patch(cli, "load_configured_encoder", timed_encoder)
    service.make_splitter = timed_splitter
    _patch(cli, "ProgressBars", Bars)
    _patch(ix, "LexicalIndex", Lexical)
    _patch(ix, "VectorIndex", Vectors)
    _patch(ix, "corpus_files", timed("hashing the corpus files", corpus_files))
    _patch(ix, "load_corpus", timed("loading the documents", load_corpus))
    _patch(ix, "previous_index_cache", timed("reading a previous index", previous_index_cache))
    _patch(ix, "save_index", timed("writing the generation", save_index))

    t0 = time.perf_counter()
    cli.app(["index", "--corpus-dir", str(corpus), "--index-dir", str(index_dir)],
            standalone_mode=False)  # fmt: skip
    command = time.perf_counter() - t0
    from qa_service.index.store import load_index

    data = load_index(index_dir)
    unit_vectors = data.unit_vectors if data.unit_vectors is not None else np.empty((0, 0))
    out.write_text(json.dumps({
        "imports": imported, "command": command, "seconds": seconds, "memory": memory,
        "counts": counts, "documents": len(data.documents), "passages": len(data.passages),
        "sentences": int(unit_vectors.shape[0]),
    }))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Child: the bare encoder on the same texts


def _bare_child(texts_path: Path, out: Path) -> None:
    from qa_service.config import Settings
    from qa_service.service import load_configured_encoder

    texts = json.loads(texts_path.read_text())
    passages = texts["passages"]
    t0 = time.perf_counter()
    # The configured backend, its export cached by the `qa index` run beside these texts.
    encoder = load_configured_encoder(Settings(index_dir=texts_path.parent / "index"))
    encoder.encode_passages(passages[:BATCH], batch_size=BATCH)  # warm up
    loading = time.perf_counter() - t0
    result: dict[str, float] = {"loading the model": loading}

    t0 = time.perf_counter()
    for start in range(0, len(passages), BATCH):
        encoder.encode_passages(passages[start : start + BATCH], batch_size=BATCH)
    result["passages, corpus order"] = time.perf_counter() - t0
    result["memory after unsorted"] = vm_hwm_mib()
    t0 = time.perf_counter()
    encoder.encode_passages(passages, batch_size=BATCH)
    result["passages, sorted by length"] = time.perf_counter() - t0
    out.write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# Orchestration


def scifact_corpus(folder: Path, documents: int) -> Path:
    """The first `documents` SciFact abstracts as a corpus folder of JSON documents."""
    folder.mkdir(parents=True)
    with SCIFACT.open() as f:
        for i, line in enumerate(f):
            if i >= documents:
                break
            row = json.loads(line)
            body = {"title": row.get("title") or None, "text": row["text"]}
            (folder / f"{row['_id']}.json").write_text(json.dumps(body))
    return folder


def measure(name: str, corpus: Path, work: Path) -> None:
    from qa_service.index.store import load_index

    here = str(Path(__file__).resolve())
    index_dir = work / "index"
    stages_path = work / "stages.json"
    wall, index_peak = run_measured(
        [sys.executable, here, "_index", str(corpus), str(index_dir), str(stages_path)],
        work / "index.log",
    )
    stages = json.loads(stages_path.read_text())
    data = load_index(index_dir)
    passages = [p.text for p in data.passages]  # no title context by default: what was encoded
    (work / "texts.json").write_text(json.dumps({"passages": passages}))
    _, bare_peak = run_measured(
        [sys.executable, here, "_bare", str(work / "texts.json"), str(work / "bare.json")],
        work / "bare.log",
    )
    bare = json.loads((work / "bare.json").read_text())
    # Again in a new folder holding only the first build's ONNX export: the build a user runs
    # once the model is exported, without the export's work earlier in the same process.
    exported = work / "index-exported"
    if (index_dir / "models").is_dir():
        shutil.copytree(index_dir / "models", exported / "models")
    run_measured(
        [sys.executable, here, "_index", str(corpus), str(exported), str(work / "stages2.json")],
        work / "index2.log",
    )
    stages2 = json.loads((work / "stages2.json").read_text())

    n_p, n_s = len(passages), stages["sentences"]
    seconds: dict[str, float] = stages["seconds"]
    model_load = seconds.get("loading the model", 0.0)
    build_only = stages["command"] - model_load  # the build: the command less the model load
    print(f"\n=== {name}: {stages['documents']} documents, {n_p} passages, {n_s} sentences ===")
    encoded = ", ".join(f"{k} {v}" for k, v in stages["counts"].items())
    print(f"texts the build encoded (distinct ones only): {encoded}")
    print(f"`qa index` wall, process start to exit: {wall:.2f} s "
          f"(imports {stages['imports']:.2f} s, command {stages['command']:.2f} s)")  # fmt: skip
    print(f"{'stage of the command':<36} {'seconds':>9} {'share':>7} {'peak RSS MiB':>13}")
    accounted = 0.0
    for stage, value in seconds.items():
        share = value / stages["command"]
        peak = stages["memory"].get(stage)
        peak_text = f"{peak:13.0f}" if peak is not None else ""
        print(f"{stage:<36} {value:9.2f} {share:7.1%} {peak_text}")
        if not stage.startswith(" "):
            accounted += value
    other = stages["command"] - accounted
    print(
        f"{'other (caching, manifest, Python)':<36} {other:9.2f} {other / stages['command']:7.1%}"
    )
    encode_p = seconds.get("encoding passages", 0.0)
    bare_p = bare["passages, sorted by length"]
    bare_u = bare["passages, corpus order"]
    print(f"{'bare encoder, batches of ' + str(BATCH):<36} {'seconds':>9} {'texts/s':>9}")
    for label, value, count in (("passages, corpus order", bare_u, n_p),
                                ("passages, sorted by length", bare_p, n_p)):  # fmt: skip
        print(f"{label:<36} {value:9.2f} {count / value:9.1f}")
    print(f"length sorting: {bare_u / bare_p:.2f}x faster on passages")
    print(f"{'throughput':<52} {'passages/s':>10}")
    rates = [
        ("bare encoder, passages (sorted)", n_p / bare_p),
        ("`qa index` build (command less model load)", n_p / build_only),
        ("`qa index` wall (process start to exit)", n_p / wall),
    ]
    for label, rate in rates:
        print(f"{label:<52} {rate:10.1f}")
    print(f"ratio end to end / bare, passages/s: build {bare_p / build_only:.2f}, "
          f"wall {bare_p / wall:.2f} (target >= 0.90)")  # fmt: skip
    build2 = stages2["command"] - stages2["seconds"].get("loading the model", 0.0)
    encode2 = stages2["seconds"].get("encoding passages", 0.0)
    print(f"a second build, the export cached: {build2:.2f} s, ratio to bare "
          f"{bare_p / build2:.2f}; its encoding {encode2 / bare_p:.2f}x the bare time")  # fmt: skip
    print(f"encoding in the build (passages and their sentences) against bare passages: "
          f"{encode_p / bare_p:.2f}x the bare time")  # fmt: skip
    print(f"peak RSS: `qa index` {index_peak:.0f} MiB, bare encoder {bare_peak:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scifact-docs", type=int, default=2000,
                        help="SciFact abstracts in the larger corpus (0: skip it)")  # fmt: skip
    parser.add_argument("--skip-default", action="store_true", help="only the larger corpus")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qa-bench-indexing-"))
    print(f"work folder: {work}; load average at start {os.getloadavg()[0]:.1f}")
    if not args.skip_default:
        (work / "default").mkdir()
        measure("default corpus", ROOT / "corpus", work / "default")
    if args.scifact_docs:
        corpus = scifact_corpus(work / "scifact-corpus", args.scifact_docs)
        (work / "scifact").mkdir()
        measure(f"SciFact, first {args.scifact_docs} abstracts", corpus, work / "scifact")
    print(f"\nload average at the end {os.getloadavg()[0]:.1f} (2 cores)")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "_index":
        _index_child(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    elif len(sys.argv) == 4 and sys.argv[1] == "_bare":
        _bare_child(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        main()
