"""A real `qa serve` that needs a read key, shared by the OpenAI and MCP tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from qa_service.config import Settings
from qa_service.service import QAService
from tests.qa_service.conftest import launch

READ_KEY = "reader-key-for-tests"


@pytest.fixture(scope="session")
def keyed_server(settings: Settings, service: QAService) -> Iterator[str]:
    """`qa serve` with QA_READ_API_KEYS set; `service` built the index already."""
    process, url = launch(settings, {"QA_READ_API_KEYS": READ_KEY})
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
