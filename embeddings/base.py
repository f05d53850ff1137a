"""What every embedding model offers the service: one small interface, its types and errors.

Every vector an `Encoder` returns is float32 and L2-normalised, so inner product is cosine
similarity and FAISS scores mean the same thing across models.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

# Weights come from local folders; a hub lookup could only hang or fail on a closed network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

Vectors = npt.NDArray[np.float32]
Span = tuple[int, int]

# English; fast on the ONNX backend.
MINILM_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Multilingual (Albanian, South Slavic, ... questions over English text); embeddings/e5.py.
E5_MODEL = "intfloat/multilingual-e5-small"


class ModelNotAvailableError(RuntimeError):
    """The configured model cannot be loaded from local files."""


class Encoder(Protocol):
    """What the rest of the service needs from an embedding model."""

    @property
    def name(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    @property
    def max_tokens(self) -> int:
        """Word pieces of text one input may hold (special tokens excluded)."""
        ...

    def token_spans(self, texts: Sequence[str]) -> list[list[Span]]:
        """Character span of every word piece of each text, so callers can cut text to fit."""
        ...

    def encode_queries(self, texts: Sequence[str], batch_size: int = 32) -> Vectors: ...

    def encode_passages(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        on_batch: Callable[[int], None] | None = None,
    ) -> Vectors: ...

    def encode_in_context(
        self,
        texts: Sequence[str],
        spans: Sequence[Sequence[Span]],
        batch_size: int = 32,
        on_batch: Callable[[int], None] | None = None,
    ) -> tuple[Vectors, list[Vectors]]:
        """`encode_passages(texts)`, and for each text the vectors of its character `spans`
        (sentences) as the model read them in that text, from the same forward pass."""
        ...


def span_sums(
    tokens: npt.NDArray[np.float32], offsets: npt.NDArray[np.int32], spans: Sequence[Span]
) -> Vectors:
    """Per character span of a text, the sum of the output embeddings of the word pieces inside
    it; a zero row for a span with no word piece (cut off by the input limit). Sums, so that a
    text read in several windows adds up its windows' pieces before normalising."""
    out = np.zeros((len(spans), tokens.shape[1]), dtype=np.float32)
    tokens = tokens[: len(offsets)]  # without the batch's padding
    starts, ends = offsets[:, 0], offsets[:, 1]
    real = ends > starts  # special tokens have empty offsets
    for j, (a, b) in enumerate(spans):
        inside = real & (starts >= a) & (ends <= b)
        if inside.any():
            out[j] = tokens[inside].sum(axis=0)
    return out


def normalised(vectors: Vectors) -> Vectors:
    """Rows scaled to unit length; zero rows stay zero."""
    norms = np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    out: Vectors = (vectors / norms).astype(np.float32, copy=False)
    return out


def span_means(
    tokens: npt.NDArray[np.float32], offsets: npt.NDArray[np.int32], spans: Sequence[Span]
) -> Vectors:
    """Per character span of a text, the normalised mean of the output embeddings of the word
    pieces inside it: the span's vector in its text's context (late chunking). A zero row for a
    span with no word piece (cut off by the input limit)."""
    return normalised(span_sums(tokens, offsets, spans))
