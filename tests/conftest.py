"""Shared fixtures: the real model loads once per session; the default corpus is indexed once."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from embeddings import E5_MODEL, MINILM_MODEL, Encoder, load_encoder
from qa_service.api import create_app
from qa_service.config import Settings
from qa_service.service import QAService, load_configured_reader

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "corpus"
SHARED = ROOT.parent / "shared"
DEV_QUESTIONS = SHARED / "eval" / "seed_dev_questions.jsonl"


@pytest.fixture(scope="session")
def encoder() -> Encoder:
    return load_encoder(MINILM_MODEL)


@pytest.fixture(scope="session")
def corpus_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the default corpus, so no test can change the shipped one."""
    target = tmp_path_factory.mktemp("corpus") / "corpus"
    shutil.copytree(CORPUS, target)
    return target


@pytest.fixture(scope="session")
def settings(corpus_copy: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(corpus_dir=corpus_copy, index_dir=tmp_path_factory.mktemp("index") / "idx")


@pytest.fixture(scope="session")
def service(settings: Settings, encoder: Encoder) -> QAService:
    return QAService.from_settings(settings, encoder=encoder)


@pytest.fixture(scope="session")
def read_service(service: QAService) -> QAService:
    """The same index and model with the reader on (QA_READER), as `from_settings` loads it."""
    reader = load_configured_reader(Settings(reader=True))
    return QAService(service.encoder, service.index, None, service.top_k, reader=reader)


@pytest.fixture(scope="session")
def e5_settings(corpus_copy: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The default corpus with the multilingual model (questions in the region's languages)."""
    index_dir = tmp_path_factory.mktemp("e5") / "idx"
    return Settings(corpus_dir=corpus_copy, index_dir=index_dir, model=E5_MODEL)


@pytest.fixture(scope="session")
def e5_service(e5_settings: Settings) -> QAService:
    return QAService.from_settings(e5_settings, encoder=load_encoder(E5_MODEL))


@pytest.fixture(scope="session")
def client(settings: Settings, service: QAService) -> Iterator[TestClient]:
    with TestClient(create_app(settings, service)) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def dev_questions() -> list[dict[str, Any]]:
    return [json.loads(line) for line in DEV_QUESTIONS.read_text().splitlines() if line.strip()]
