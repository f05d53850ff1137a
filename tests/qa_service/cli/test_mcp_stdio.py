"""`qa mcp`: the MCP tools over stdio, driven by the SDK's client against a real process."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from qa_service.config import Settings
from qa_service.service import QAService
from tests.qa_service.api.test_mcp_http import exercise_tools

pytestmark = pytest.mark.slow


def test_tools_over_stdio(settings: Settings, service: QAService, tmp_path: Path) -> None:
    # `service` built the index already, so `qa mcp` only loads it.
    parameters = StdioServerParameters(
        command=sys.executable,
        args=["-m", "qa_service.cli", "mcp", "--corpus-dir", str(settings.corpus_dir),
              "--index-dir", str(settings.index_dir)],
        env={"QA_READ_API_KEYS": "ignored-over-stdio"},
    )  # fmt: skip
    log = tmp_path / "stderr.log"

    async def run() -> dict[str, Any]:
        with log.open("w") as errlog, anyio.fail_after(300):
            async with (
                stdio_client(parameters, errlog=errlog) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                return await exercise_tools(session)

    answered = anyio.run(run)
    expected = service.ask("What was the objective of the Regional Expert Group Meeting?")
    assert answered["answer"] == expected.answer.sentence_text
    # Nothing of the questions is logged (QA_LOG_QUESTIONS is off).
    assert "Regional Expert Group" not in log.read_text()
