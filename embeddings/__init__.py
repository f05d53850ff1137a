"""Models and vectors: loading an embedding model offline, encoding, and the FAISS index."""

from embeddings.base import (
    DEFAULT_MODEL,
    E5_MODEL,
    Encoder,
    ModelNotAvailableError,
    Span,
    Vectors,
)
from embeddings.factory import ENCODER_BACKENDS, EncoderBackend, load_encoder
from embeddings.index import IndexConfig, IndexFormatError, VectorIndex

__all__ = [
    "DEFAULT_MODEL",
    "E5_MODEL",
    "ENCODER_BACKENDS",
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
