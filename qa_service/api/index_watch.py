"""Takes up index generations that another process (`qa add`, `qa index`) made current."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from qa_service.service import AnsweringService

logger = logging.getLogger(__name__)


async def watch_index(service: Callable[[], AnsweringService | None], every_seconds: float) -> None:
    """Every `every_seconds`, one readlink; a reload only when the generation changed."""
    while True:
        await asyncio.sleep(every_seconds)
        current = service()
        if current is None:
            continue
        try:
            await asyncio.to_thread(current.refresh)
        except Exception:  # refresh reports what it refuses itself; anything else is a bug
            logger.exception("could not take up the index written by another process")
