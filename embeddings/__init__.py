"""Models and vectors: loading an embedding model offline, encoding, and the FAISS index."""

from embeddings.base import (
    E5_MODEL,
    MINILM_MODEL,
    Encoder,
    ModelNotAvailableError,
    Span,
    Vectors,
)
from embeddings.factory import ENCODER_BACKENDS, EncoderBackend, load_encoder
from embeddings.index import IndexConfig, IndexFormatError, VectorIndex

__all__ = [
    "E5_MODEL",
    "ENCODER_BACKENDS",
    "MINILM_MODEL",
    "Encoder",
    "EncoderBackend",
    "IndexConfig",
    "IndexFormatError",
    "ModelNotAvailableError",
    "Span",
    "VectorIndex",
    "Vectors",
    "load_encoder",
]
