"""Models and vectors: loading an embedding model offline, encoding, and the FAISS index."""

from embeddings.encoder import (
    DEFAULT_MODEL,
    E5_MODEL,
    ENCODER_BACKENDS,
    Encoder,
    EncoderBackend,
    ModelNotAvailableError,
    Vectors,
    load_encoder,
)
from embeddings.index import IndexFormatError, VectorIndex

__all__ = [
    "DEFAULT_MODEL",
    "E5_MODEL",
    "ENCODER_BACKENDS",
    "Encoder",
    "EncoderBackend",
    "IndexFormatError",
    "ModelNotAvailableError",
    "VectorIndex",
    "Vectors",
    "load_encoder",
]
