"""Shared by the API tests: a real `qa serve` that needs a read key (the OpenAI and MCP tests),
and private copies of the session's corpus and index for tests that write."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from qa_service.config import Settings
from qa_service.service import QAService
from tests.qa_service.conftest import launch

READ_KEY = "reader-key-for-tests"


def writable_copy(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory, **update: Any
) -> Settings:
    """Copies of the session corpus and its built index: the shared ones are never written."""
    root = tmp_path_factory.mktemp("writable")
    shutil.copytree(settings.corpus_dir, root / "corpus")
    shutil.copytree(settings.index_dir, root / "idx", symlinks=True)
    return settings.model_copy(
        update={"corpus_dir": root / "corpus", "index_dir": root / "idx", **update}
    )


@pytest.fixture(scope="session")
def keyed_server(settings: Settings, service: QAService) -> Iterator[str]:
    """`qa serve` with QA_READ_API_KEYS set; `service` built the index already."""
    process, url = launch(settings, {"QA_READ_API_KEYS": READ_KEY})
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
