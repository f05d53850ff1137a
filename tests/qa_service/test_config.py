"""Settings: defaults, then `.env`, then `QA_*` variables, then flags; list fields; validation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from embeddings import IndexConfig
from qa_service.cli.common import settings_from_flags
from qa_service.config import Settings
from qa_service.query.retrieval import DENSE_WEIGHT


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No QA_* (or API_KEYS) variable from the calling shell, and an empty working folder (no
    `.env`)."""
    for name in list(os.environ):
        if name.upper().startswith("QA_") or name.upper() == "API_KEYS":
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults() -> None:
    settings = Settings()
    assert settings.corpus_dir == Path("corpus")
    assert settings.index_dir == Path(".qa-index")
    assert settings.model is None  # the index's own model, or the default for a new one
    assert settings.encoder_backend == "onnx"
    assert (settings.top_k, settings.mode, settings.dense_weight) == (5, "hybrid", DENSE_WEIGHT)
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.min_score is None
    assert settings.rate_limit is None
    # Nothing is opened by default: no cross-origin pages, no writes, reads open.
    assert settings.cors_origins == [] and settings.api_keys == [] and settings.read_api_keys == []
    assert not settings.log_questions
    assert settings.rebuild_stale_index


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QA_TOP_K", "7")
    monkeypatch.setenv("QA_MODE", "lexical")
    monkeypatch.setenv("QA_INDEX_DIR", "/srv/qa/index")
    monkeypatch.setenv("QA_LOG_JSON", "true")
    monkeypatch.setenv("QA_MIN_SCORE", "0.31")
    settings = Settings()
    assert settings.top_k == 7
    assert settings.mode == "lexical"
    assert settings.index_dir == Path("/srv/qa/index")
    assert settings.log_json is True
    assert settings.min_score == pytest.approx(0.31)


def test_keyword_arguments_and_flags_override_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QA_TOP_K", "7")
    monkeypatch.setenv("QA_API_KEYS", "from-env")
    assert Settings(top_k=9).top_k == 9
    assert Settings(api_keys=["from-flag"]).api_keys == ["from-flag"]
    # A flag left unset (None) does not hide the variable.
    assert settings_from_flags(top_k=3, mode=None).top_k == 3
    assert settings_from_flags(top_k=None).top_k == 7


def test_a_dotenv_file_is_read_and_the_environment_beats_it(
    monkeypatch: pytest.MonkeyPatch, clean_environment: Path
) -> None:
    (clean_environment / ".env").write_text(
        "QA_TOP_K=11\nQA_PORT=9000\nQA_CORS_ORIGINS=https://a.example,https://b.example\n"
        "UNRELATED_SETTING=ignored\n",
        encoding="utf-8",
    )
    settings = Settings()
    assert (settings.top_k, settings.port) == (11, 9000)
    assert settings.cors_origins == ["https://a.example", "https://b.example"]

    monkeypatch.setenv("QA_TOP_K", "4")
    settings = Settings()
    assert settings.top_k == 4  # the variable wins
    assert settings.port == 9000  # the file still fills what the environment leaves
    assert Settings(top_k=2).top_k == 2  # and a flag beats both


def test_a_dotenv_file_elsewhere_is_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `.env` is looked up in the working folder only.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".env").write_text("QA_TOP_K=11\n", encoding="utf-8")
    assert Settings().top_k == 5
    monkeypatch.chdir(elsewhere)
    assert Settings().top_k == 11


@pytest.mark.parametrize("variable", ["QA_CORS_ORIGINS", "QA_API_KEYS", "QA_READ_API_KEYS"])
@pytest.mark.parametrize(
    "value",
    [
        "https://a.example,http://localhost:3000",
        " https://a.example , , http://localhost:3000 ",
        '["https://a.example", "http://localhost:3000"]',
        ' ["https://a.example","http://localhost:3000"]',
    ],
)
def test_lists_are_comma_separated_or_json(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    # Origins are used as values for every field, since they are valid keys too.
    monkeypatch.setenv(variable, value)
    field = variable.removeprefix("QA_").lower()
    assert getattr(Settings(), field) == ["https://a.example", "http://localhost:3000"]


def test_an_empty_list_variable_is_an_empty_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QA_API_KEYS", "")
    monkeypatch.setenv("QA_CORS_ORIGINS", " , ")
    monkeypatch.setenv("QA_READ_API_KEYS", "[]")
    settings = Settings()
    assert settings.api_keys == [] and settings.cors_origins == [] and settings.read_api_keys == []


def test_keyword_lists_accept_the_same_forms() -> None:
    assert Settings(api_keys="k1, k2").api_keys == ["k1", "k2"]
    assert Settings(read_api_keys=["r"]).read_api_keys == ["r"]


def test_qa_api_key_is_a_synonym_and_qa_api_keys_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    # QA_API_KEY is what the `qa add --url` client reads; the server takes it too.
    monkeypatch.setenv("QA_API_KEY", "single")
    assert Settings().api_keys == ["single"]
    monkeypatch.setenv("QA_API_KEYS", "one,two")
    assert Settings().api_keys == ["one", "two"]


def test_only_prefixed_variables_set_the_write_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEYS", "meant-for-another-program")
    assert Settings().api_keys == []


def test_origins_lose_a_trailing_slash_and_must_be_origins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QA_CORS_ORIGINS", "https://a.example/,*")
    assert Settings().cors_origins == ["https://a.example", "*"]
    for bad in ["https://a.example/path", "a.example", "ftp://a.example"]:
        monkeypatch.setenv("QA_CORS_ORIGINS", bad)
        with pytest.raises(ValidationError, match="is not a web origin") as caught:
            Settings()
        assert [e["loc"] for e in caught.value.errors()] == [("cors_origins",)]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("top_k", "0"),
        ("top_k", "51"),
        ("top_k", "five"),
        ("mode", "semantic"),
        ("port", "0"),
        ("port", "65536"),
        ("dense_weight", "1.5"),
        ("passage_tokens", "15"),
        ("passage_overlap", "6"),
        ("vector_index", "ivf"),
        ("hnsw_m", "3"),
        ("max_wait_seconds", "0"),
        ("rate_limit", "lots"),
        ("rate_limit", "60/fortnight"),
    ],
)
def test_invalid_values_are_rejected_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str
) -> None:
    monkeypatch.setenv(f"QA_{field.upper()}", value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert [e["loc"] for e in caught.value.errors()] == [(field,)]


@pytest.mark.parametrize(("field", "value"), [("top_k", 1), ("top_k", 50), ("dense_weight", 0.0)])
def test_bounds_are_inclusive(field: str, value: Any) -> None:
    assert getattr(Settings(**{field: value}), field) == value


def test_rate_limit_keeps_a_valid_string_and_blank_means_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QA_RATE_LIMIT", "5/second;300/hour")
    assert Settings().rate_limit == "5/second;300/hour"
    monkeypatch.setenv("QA_RATE_LIMIT", "   ")
    assert Settings().rate_limit is None
    with pytest.raises(ValidationError, match="60/minute"):  # the message shows the notation
        Settings(rate_limit="sixty a minute")


def test_index_config_defaults_agree() -> None:
    # The service's defaults are the vector index's own.
    assert Settings().index_config() == IndexConfig()


def test_index_config_carries_the_vector_index_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QA_VECTOR_INDEX", "hnsw")
    monkeypatch.setenv("QA_ANN_THRESHOLD", "1000")
    monkeypatch.setenv("QA_HNSW_M", "16")
    monkeypatch.setenv("QA_HNSW_EF_CONSTRUCTION", "80")
    monkeypatch.setenv("QA_HNSW_EF_SEARCH", "64")
    config = Settings().index_config()
    assert config == IndexConfig(
        kind="hnsw", ann_threshold=1000, m=16, ef_construction=80, ef_search=64
    )
    assert config.kind_for(10) == "hnsw"

    auto = Settings(vector_index="auto", ann_threshold=100).index_config()
    assert (auto.kind_for(99), auto.kind_for(100)) == ("flat", "hnsw")
