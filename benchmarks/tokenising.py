"""Memory of tokenising a corpus for the ONNX encoder: all texts at once against slices.

    python benchmarks/tokenising.py --texts 50000

Each way runs in a fresh process and prints its peak RSS above the process's own before
tokenising. "at once" keeps the tokenizer's encodings of every text, as the encoder did before
it tokenised in slices; "slices" is what `OnnxEncoder._encode` does (slices of
`_TOKENIZE_SLICE` texts, word pieces kept as int32 arrays). The texts are SciFact abstracts cut
into 520-character pieces, repeated to reach `--texts`.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "eval" / "scifact" / "corpus.jsonl"


def texts(count: int) -> list[str]:
    pieces: list[str] = []
    with SCIFACT.open(encoding="utf-8") as f:
        for line in f:
            text: str = json.loads(line)["text"]
            pieces.extend(text[i : i + 520].lower() for i in range(0, len(text), 500))
    return (pieces * (count // len(pieces) + 1))[:count]


def measure(way: str, count: int) -> None:
    import numpy as np
    from tokenizers import Tokenizer

    from embeddings.factory import resolve_model
    from embeddings.onnx import _TOKENIZE_SLICE

    folder = resolve_model("sentence-transformers/all-MiniLM-L6-v2").path
    assert folder is not None
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(256)
    tokenizer.no_padding()
    inputs = texts(count)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    if way == "at once":
        encoded = tokenizer.encode_batch(inputs)
        pieces = sum(len(e.ids) for e in encoded)
    else:
        kept: list[np.ndarray] = []
        for first in range(0, len(inputs), _TOKENIZE_SLICE):
            batch = tokenizer.encode_batch(inputs[first : first + _TOKENIZE_SLICE])
            kept.extend(np.asarray(e.ids, dtype=np.int32) for e in batch)
        pieces = sum(len(k) for k in kept)
    seconds = time.perf_counter() - started
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"{way:<8} {count:,} texts, {pieces:,} word pieces: {seconds:.1f} s, "
          f"peak RSS +{grown:.0f} MiB")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=50_000)
    parser.add_argument("--way", choices=["at once", "slices"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.way:
        sys.path.insert(0, str(ROOT))
        measure(args.way, args.texts)
        return
    for way in ("at once", "slices"):
        command = [sys.executable, __file__, "--texts", str(args.texts), "--way", way]
        subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
