from __future__ import annotations

import numpy as np
import pytest

from embeddings import MINILM_MODEL, Encoder, ModelNotAvailableError, load_encoder


def test_default_model_loads_offline_with_its_limits(encoder: Encoder) -> None:
    assert encoder.name == MINILM_MODEL
    assert encoder.dimension == 384
    assert encoder.max_tokens == 254  # 256 positions less [CLS] and [SEP]


def test_vectors_are_normalised_float32(encoder: Encoder) -> None:
    vectors = encoder.encode_passages(["Trafficking of children.", "A second, longer text here."])
    assert vectors.dtype == np.float32
    assert vectors.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_related_texts_score_higher_than_unrelated(encoder: Encoder) -> None:
    query = encoder.encode_queries(["Who leads the anti-trafficking convention secretariat?"])[0]
    passages = encoder.encode_passages(
        [
            "Petya Nestorova is Executive Secretary of the Convention on Action against "
            "Trafficking in Human Beings.",
            "Water boils at 100 degrees Celsius at sea level.",
        ]
    )
    related, unrelated = passages @ query
    assert related > unrelated + 0.2


def test_progress_callback_sees_every_text_and_order_is_kept(encoder: Encoder) -> None:
    texts = ["short", "a much longer text than the others, with many words in it", "mid length"]
    seen: list[int] = []
    with_progress = encoder.encode_passages(texts, batch_size=2, on_batch=seen.append)
    plain = encoder.encode_passages(texts)
    assert sum(seen) == len(texts)
    np.testing.assert_allclose(with_progress, plain, atol=1e-5)


def test_token_spans_point_into_the_text(encoder: Encoder) -> None:
    text = "Petya Nestorova, Executive Secretary."
    (spans,) = encoder.token_spans([text])
    assert spans[0] == (0, 3)  # "pet" + "##ya": word pieces, not words
    assert all(0 <= a < b <= len(text) for a, b in spans)
    assert text[spans[-1][0] : spans[-1][1]] == "."


def test_unknown_model_is_a_clear_error_not_a_download() -> None:
    with pytest.raises(ModelNotAvailableError, match="neither a known model"):
        load_encoder("some-org/not-a-local-model")


def test_broken_model_folder_names_the_fix(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelNotAvailableError, match="QA_MODEL"):
        load_encoder(str(tmp_path))
