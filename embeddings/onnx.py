"""A sentence-transformers model folder run by onnxruntime instead of torch.

The folder's weights are exported once with `torch.onnx.export` into a cache folder (beside the
index: `<index_dir>/models/`), with mean pooling and L2 normalisation inside the graph, then
fused by onnxruntime's transformer optimiser and, for `int8`, dynamically quantised. Later loads
need neither torch nor transformers: onnxruntime and the folder's `tokenizer.json` (the fast
tokenizer sentence-transformers itself uses) load in well under a second, against seconds for
torch. Only BERT-style folders with mean pooling are supported (all-MiniLM-L6-v2 is one);
anything else is refused with the reason.

A cached file is named by model, precision and a fingerprint of everything the export reads (the
weights, the model and pooling configuration, the export code's version), so a changed model is
exported again. It is written to a temporary file and renamed into place, with a sidecar that
holds its sha256, written last; a file whose sidecar is missing or disagrees is exported again,
so neither a crash during an export nor a damaged file is ever loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from embeddings.base import ModelNotAvailableError, Span, Vectors, span_means
from embeddings.files import locked as file_lock
from embeddings.files import replace_file

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "int8"]

# Bump when the exported graph changes (export code, fusion, quantisation): old files then no
# longer match and are exported again.
EXPORT_VERSION = 2  # 2: the token embeddings are an output too (late chunking)
OPSET = 17
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_OUTPUT = "sentence_embedding"
# Each word piece's output embedding, before pooling: a span's vector in its context.
_TOKENS = "token_embeddings"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_TRANSFORMER = "sentence_transformers.models.Transformer"
_POOLING = "sentence_transformers.models.Pooling"
_NORMALIZE = "sentence_transformers.models.Normalize"
# An export whose graph disagrees with torch by more than this is refused, never cached.
_EXPORT_MIN_COSINE = 0.9999


@dataclass(frozen=True)
class ModelFolder:
    """What the ONNX path needs from a sentence-transformers folder, checked on reading."""

    path: Path
    max_seq_length: int  # word pieces per input, [CLS] and [SEP] included
    dimension: int
    lower_case: bool  # sentence-transformers lower-cases the text before tokenising
    num_heads: int
    hidden_size: int
    fingerprinted: tuple[Path, ...]  # every file the exported graph depends on

    @classmethod
    def read(cls, path: Path) -> ModelFolder:
        def refuse(why: str) -> ModelNotAvailableError:
            return ModelNotAvailableError(
                f"the ONNX encoder cannot run the model in {path}: {why}. "
                "Use QA_ENCODER_BACKEND=torch for it."
            )

        def load(name: str) -> Any:
            try:
                return json.loads((path / name).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise refuse(f"{name} is missing or unreadable ({exc})") from exc

        modules = load("modules.json")
        types = [m.get("type") for m in modules]
        if types not in ([_TRANSFORMER, _POOLING], [_TRANSFORMER, _POOLING, _NORMALIZE]):
            raise refuse(f"its modules are {types}, not a transformer, pooling and normalize")
        if modules[0].get("path", "") != "":
            raise refuse("its transformer is not at the folder's top level")
        pooling_dir = modules[1].get("path", "1_Pooling")
        pooling = load(f"{pooling_dir}/config.json")
        modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v)
        if modes != ["pooling_mode_mean_tokens"]:
            raise refuse(f"it pools with {modes}; only mean pooling is exported")
        config = load("config.json")
        if config.get("model_type") != "bert":
            raise refuse(f"its model type is {config.get('model_type')!r}, not bert")
        if not (path / "tokenizer.json").is_file():
            raise refuse("it has no tokenizer.json (a fast tokenizer)")
        weights = next((path / f for f in _WEIGHT_FILES if (path / f).is_file()), None)
        if weights is None:
            raise refuse(f"it holds none of {', '.join(_WEIGHT_FILES)}")
        st_config = (
            load("sentence_bert_config.json")
            if (path / "sentence_bert_config.json").is_file()
            else {}
        )
        max_seq_length = st_config.get("max_seq_length")
        if max_seq_length is None:  # as sentence-transformers derives it
            tokenizer_config = (
                load("tokenizer_config.json") if (path / "tokenizer_config.json").is_file() else {}
            )
            max_seq_length = min(
                int(config["max_position_embeddings"]),
                int(tokenizer_config.get("model_max_length", 10**9)),
            )
        return cls(
            path=path,
            max_seq_length=int(max_seq_length),
            dimension=int(pooling.get("word_embedding_dimension", config["hidden_size"])),
            lower_case=bool(st_config.get("do_lower_case", False)),
            num_heads=int(config["num_attention_heads"]),
            hidden_size=int(config["hidden_size"]),
            fingerprinted=(
                path / "modules.json",
                path / "config.json",
                path / pooling_dir / "config.json",
                weights,
            ),
        )

    def fingerprint(self, precision: Precision) -> str:
        """Identifies the exported file: the model's files, the precision, the export code."""
        digest = hashlib.sha256(f"qa-onnx {EXPORT_VERSION} {OPSET} {precision}\0".encode())
        for file in self.fingerprinted:
            digest.update(file.relative_to(self.path).as_posix().encode() + b"\0")
            with file.open("rb") as f:
                digest.update(hashlib.file_digest(f, "sha256").digest())
        return digest.hexdigest()[:16]


def cached_model_path(
    folder: ModelFolder, model_name: str, precision: Precision, cache_dir: Path
) -> Path:
    """Where the exported graph of this model and precision lives in `cache_dir`."""
    return cache_dir / f"{_slug(model_name)}.{precision}.{folder.fingerprint(precision)}.onnx"


def _slug(model_name: str) -> str:
    last = model_name.split("@", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", last).strip("._") or "model"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def load_or_export(
    folder: ModelFolder,
    model_name: str,
    precision: Precision,
    cache_dir: Path,
    locked: bool = False,
) -> tuple[bytes, bool]:
    """The exported graph's bytes, verified against its checksum; exported first if the cache
    holds no intact copy. Also True when this call exported it. `locked`: the caller holds the
    cache folder's lock."""
    target = cached_model_path(folder, model_name, precision, cache_dir)
    cached = _read_verified(target, quiet=True)
    if cached is not None:
        return cached, False
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Another process (a server starting beside `qa index`) may be exporting the same file.
    with contextlib.nullcontext() if locked else file_lock(cache_dir / ".lock"):
        cached = _read_verified(target)
        if cached is not None:
            return cached, False
        logger.info("exporting %s (%s) to ONNX, once, into %s", model_name, precision, cache_dir)
        started = time.perf_counter()
        data = _export(folder, model_name, precision, cache_dir)
        _write_atomically(target, data)
        _remove_superseded(target)
        logger.info(
            "exported %s (%s) to %s in %.1f s",
            model_name, precision, target, time.perf_counter() - started,
        )  # fmt: skip
        return data, True


def _read_verified(path: Path, quiet: bool = False) -> bytes | None:
    """The file's bytes when its sidecar vouches for them; None (and why, logged) otherwise."""
    if not path.exists():
        return None
    try:
        meta = json.loads(_sidecar(path).read_text(encoding="utf-8"))
        data = path.read_bytes()
    except (OSError, ValueError) as exc:
        problem = f"has no readable checksum ({exc})"
    else:
        if len(data) == meta.get("bytes") and hashlib.sha256(data).hexdigest() == meta.get(
            "sha256"
        ):
            return data
        problem = "is damaged (its checksum does not match)"
    if not quiet:
        logger.warning("cached ONNX model %s %s: exporting it again", path, problem)
    return None


def _write_atomically(target: Path, data: bytes) -> None:
    """The model file, then its sidecar (which vouches for it), each replaced atomically."""
    meta = {
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "export_version": EXPORT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    replace_file(target, data)
    replace_file(_sidecar(target), json.dumps(meta).encode())


def _remove_superseded(target: Path) -> None:
    """Earlier exports of the same model and precision (other fingerprints) are dead weight."""
    stem = target.name.rsplit(".", 2)[0]  # <slug>.<precision>
    for path in target.parent.glob(f"{stem}.*.onnx*"):
        if path.name not in (target.name, _sidecar(target).name):
            with contextlib.suppress(OSError):
                path.unlink()


def _export(folder: ModelFolder, model_name: str, precision: Precision, cache_dir: Path) -> bytes:
    """Export (fp32) or quantise the fp32 export (int8), in a child process: torch and
    transformers are needed only for this, and would otherwise stay in the server's memory; the
    tools' log output stays out of the server's log."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="qa-onnx-") as tmp:
        out = Path(tmp) / "model.onnx"
        if precision == "fp32":
            command = ["export", str(folder.path), str(out)]
        else:
            fp32, _ = load_or_export(folder, model_name, "fp32", cache_dir, locked=True)
            source = Path(tmp) / "fp32.onnx"
            source.write_bytes(fp32)
            command = ["quantise", str(source), str(out)]
        return run_export("embeddings.onnx", command, out, f"{model_name} ({precision})")


def run_export(module: str, arguments: list[str], out: Path, what: str) -> bytes:
    """Run `python -m module arguments` (an export writing `out`) and return what it wrote; a
    failure names the export's last error line and the way around it."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", module, *arguments], capture_output=True, text=True, check=False
    )
    if done.returncode != 0 or not out.is_file():
        detail = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise ModelNotAvailableError(
            f"could not export {what} to ONNX: {detail[0]}. Set QA_ENCODER_BACKEND=torch to run "
            "it without onnxruntime."
        )
    return out.read_bytes()


def export_fp32(path: Path, target: Path) -> None:
    """The child's export: torch to ONNX, fused, checked against torch's own output."""
    folder = ModelFolder.read(path)
    raw = target.with_name("raw.onnx")
    inputs, expected = _torch_export(folder, raw)
    _fuse(raw, target, folder)
    raw.unlink()
    got = _session(target.read_bytes(), 1).run([_OUTPUT], inputs)[0]
    cosine = float(np.min(np.sum(got * expected, axis=1)))
    if cosine < _EXPORT_MIN_COSINE:
        target.unlink()
        raise ModelNotAvailableError(
            f"the ONNX export of {path} disagrees with torch (cosine {cosine:.5f})"
        )


def _torch_export(
    folder: ModelFolder, target: Path
) -> tuple[dict[str, npt.NDArray[np.int64]], Vectors]:
    """The transformer with mean pooling and normalisation, as sentence-transformers runs it;
    returns sample inputs and torch's own outputs for them, to check the export against."""
    try:
        import torch
        from transformers import AutoModel
        from transformers.utils import logging as transformers_logging
    except ImportError as exc:
        raise ModelNotAvailableError(
            f"exporting {folder.path} to ONNX needs torch and transformers: {exc}"
        ) from exc

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    class Pooled(torch.nn.Module):
        def __init__(self, transformer: torch.nn.Module) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(
            self, input_ids: Any, attention_mask: Any, token_type_ids: Any
        ) -> Any:  # the same arithmetic as sentence_transformers.models.Pooling and Normalize
            hidden = self.transformer(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )[0]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * mask).sum(1)
            pooled = summed / torch.clamp(mask.sum(1), min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1), hidden

    try:
        transformer = AutoModel.from_pretrained(
            str(folder.path), local_files_only=True, attn_implementation="eager"
        )
    except Exception as exc:  # the library raises many types for a broken folder
        raise ModelNotAvailableError(f"could not load {folder.path} to export it: {exc}") from exc
    model = Pooled(transformer).eval()
    # A padded row, so the trace keeps the attention mask general.
    ids = torch.tensor([[101, 2023, 2003, 1037, 7099, 6251, 1012, 102], [101, 7592, 102] + [0] * 5])
    mask = (torch.arange(8) < torch.tensor([[8], [3]])).long()
    types = torch.zeros_like(ids)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's tracer warnings are expected
        expected = model(ids, mask, types)[0].numpy()
        axes = {name: {0: "batch", 1: "sequence"} for name in _INPUTS}
        torch.onnx.export(
            model,
            (ids, mask, types),
            str(target),
            input_names=list(_INPUTS),
            output_names=[_OUTPUT, _TOKENS],
            dynamic_axes={**axes, _OUTPUT: {0: "batch"}, _TOKENS: {0: "batch", 1: "sequence"}},
            opset_version=OPSET,
            do_constant_folding=True,
            # The TorchScript exporter: the dynamo one needs onnxscript, one more dependency.
            dynamo=False,
        )
    inputs = {
        "input_ids": ids.numpy(),
        "attention_mask": mask.numpy(),
        "token_type_ids": types.numpy(),
    }
    return inputs, np.asarray(expected, dtype=np.float32)


def _fuse(source: Path, target: Path, folder: ModelFolder) -> None:
    """Attention, layer norms and GELU fused into onnxruntime's own kernels (faster on CPU)."""
    from onnxruntime.transformers.optimizer import optimize_model

    optimised = optimize_model(
        str(source),
        model_type="bert",
        num_heads=folder.num_heads,
        hidden_size=folder.hidden_size,
        opt_level=1,
    )
    optimised.save_model_to_file(str(target))


def _quantise(source: Path, target: Path) -> None:
    """int8 weights, one scale per output channel (per-tensor scales cost far more accuracy);
    activations quantised on the fly."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul", "Attention"],
        # The fused graph's contrib ops defeat shape inference; their outputs are float.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


# Texts tokenised per call of the tokenizer when encoding (see `OnnxEncoder._encode`).
_TOKENIZE_SLICE = 1024


def _session(data: bytes, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Intra-op threads spin between the operators of a call, which is what makes a lone question
    # fast, but by default they keep spinning after it: a core burnt for nothing while the server
    # parses the next request (measured: latency over HTTP 15.8 -> 11.3 ms when they stop).
    options.add_session_config_entry("session.force_spinning_stop", "1")
    options.log_severity_level = 3  # warnings about the fused graph's shapes are noise
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _core_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class OnnxEncoder:
    """An `Encoder` for a sentence-transformers folder, run by onnxruntime on the CPU.

    Calls are serialised, per batch, as with the torch encoder: one call already uses every core
    (intra-op threads = the core count), and a lock per batch lets a question through between the
    batches of an index build.
    """

    def __init__(
        self,
        path: Path,
        name: str,
        cache_dir: Path,
        precision: Precision = "fp32",
        threads: int | None = None,
    ) -> None:
        try:
            import onnxruntime  # noqa: F401
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ModelNotAvailableError(
                f"the ONNX encoder needs onnxruntime and tokenizers: {exc}. Run "
                "`pip install onnxruntime onnx`, or set QA_ENCODER_BACKEND=torch."
            ) from exc
        self._folder = ModelFolder.read(path)
        self.dimension: Final = self._folder.dimension
        self.max_tokens: Final = self._folder.max_seq_length - 2  # [CLS] and [SEP]
        self.name: Final = name
        self.precision: Precision = precision
        self.model_path = cached_model_path(self._folder, name, precision, cache_dir)
        data, self.exported = load_or_export(self._folder, name, precision, cache_dir)
        try:
            self._session = _session(data, threads or _core_count())
        except Exception as exc:  # onnxruntime raises its own types for a graph it cannot run
            raise ModelNotAvailableError(
                f"onnxruntime cannot run {self.model_path}: {exc}. Delete it to export it "
                "again, or set QA_ENCODER_BACKEND=torch."
            ) from exc
        tokenizer_file = str(path / "tokenizer.json")
        # Two tokenizers: spans see whole texts; the model's input is cut at its limit, as
        # sentence-transformers cuts it (tokenizer.json's own truncation and padding are unused).
        self._spans = Tokenizer.from_file(tokenizer_file)
        self._spans.no_truncation()
        self._spans.no_padding()
        self._inputs = Tokenizer.from_file(tokenizer_file)
        self._inputs.enable_truncation(self._folder.max_seq_length)
        self._inputs.no_padding()
        self._lock = threading.Lock()

    def token_spans(self, texts: Sequence[str]) -> list[list[Span]]:
        if not texts:
            return []
        with self._lock:
            encoded = self._spans.encode_batch(list(texts), add_special_tokens=False)
        return [[(int(a), int(b)) for a, b in e.offsets] for e in encoded]

    def encode_queries(self, texts: Sequence[str], batch_size: int = 32) -> Vectors:
        return self._encode(texts, batch_size)[0]

    def encode_passages(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        on_batch: Callable[[int], None] | None = None,
    ) -> Vectors:
        return self._encode(texts, batch_size, on_batch)[0]

    def encode_in_context(
        self,
        texts: Sequence[str],
        spans: Sequence[Sequence[Span]],
        batch_size: int = 32,
        on_batch: Callable[[int], None] | None = None,
    ) -> tuple[Vectors, list[Vectors]]:
        if self._folder.lower_case:  # the word pieces' offsets index the lower-cased text
            spans = [_lowered_spans(t, s) for t, s in zip(texts, spans, strict=True)]
        return self._encode(texts, batch_size, on_batch, spans)

    def _encode(
        self,
        texts: Sequence[str],
        batch_size: int,
        on_batch: Callable[[int], None] | None = None,
        spans: Sequence[Sequence[Span]] | None = None,
    ) -> tuple[Vectors, list[Vectors]]:
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        in_context: list[Vectors] = []
        if not texts:
            return out, in_context
        inputs = [t.lower() for t in texts] if self._folder.lower_case else list(texts)
        # Word pieces kept as compact arrays, tokenised a slice at a time: the tokenizer's own
        # encodings take about 170 bytes per word piece (814 MiB for 50,000 passages at once,
        # benchmarks/tokenising.py). Their character offsets only when spans are asked for.
        pieces: list[npt.NDArray[np.int32]] = []
        offsets: list[npt.NDArray[np.int32]] = []
        for first in range(0, len(inputs), _TOKENIZE_SLICE):
            with self._lock:
                encoded = self._inputs.encode_batch(inputs[first : first + _TOKENIZE_SLICE])
            pieces.extend(np.asarray(e.ids, dtype=np.int32) for e in encoded)
            if spans is not None:
                offsets.extend(np.asarray(e.offsets, np.int32).reshape(-1, 2) for e in encoded)
        if spans is not None:
            in_context = [np.zeros((len(s), self.dimension), np.float32) for s in spans]
        outputs = [_OUTPUT] if spans is None else [_OUTPUT, _TOKENS]
        # Batches of similar lengths: padding is work the model does for nothing.
        order = sorted(range(len(texts)), key=lambda i: len(pieces[i]))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = max(len(pieces[i]) for i in rows)
            ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros_like(ids)
            for row, i in enumerate(rows):
                ids[row, : len(pieces[i])] = pieces[i]
                mask[row, : len(pieces[i])] = 1
            # One text per input, so every token is of segment 0.
            types = np.zeros_like(ids)
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            with self._lock:
                result = self._session.run(outputs, feed)
            out[rows] = result[0]
            if spans is not None:
                for row, i in enumerate(rows):
                    in_context[i] = span_means(result[1][row], offsets[i], spans[i])
            if on_batch is not None:
                on_batch(len(rows))
        return out, in_context


def _lowered_spans(text: str, spans: Sequence[Span]) -> Sequence[Span]:
    """`spans` of `text` in `text.lower()`, which a few letters lengthen (`İ` lower-cases to two
    code points)."""
    if len(text.lower()) == len(text):
        return spans
    starts = np.concatenate([[0], np.cumsum([len(c.lower()) for c in text])])
    return [(int(starts[a]), int(starts[b])) for a, b in spans]


def _main(argv: list[str]) -> int:
    """`python -m embeddings.onnx export FOLDER OUT` or `... quantise SOURCE OUT`."""
    command, source, target = argv
    if command == "export":
        export_fp32(Path(source), Path(target))
    elif command == "quantise":
        _quantise(Path(source), Path(target))
    else:
        raise SystemExit(f"unknown command {command!r}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
