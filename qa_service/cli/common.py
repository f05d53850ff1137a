"""What every `qa` command shares: settings from flags, clear errors, progress bars."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from tqdm import tqdm

from embeddings import ModelNotAvailableError
from qa_service.config import Settings
from qa_service.errors import QAError
from qa_service.index.encode import Progress
from qa_service.service import QAService

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

CorpusOpt = Annotated[
    Path | None, typer.Option("--corpus-dir", help="Documents to index [env QA_CORPUS_DIR].")
]
IndexOpt = Annotated[
    Path | None, typer.Option("--index-dir", help="Where the index lives [env QA_INDEX_DIR].")
]
ModelOpt = Annotated[
    str | None, typer.Option("--model", help="Model name or local folder [env QA_MODEL].")
]


def settings_from_flags(**flags: Any) -> Settings:
    """Flags override `QA_*` variables, which override `.env`."""
    try:
        return Settings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        fail(f"invalid setting: {exc}")


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Errors a user can fix become one clear line instead of a traceback."""
    try:
        yield
    except (QAError, ModelNotAvailableError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))


class ProgressBars:
    """Opens one tqdm bar per encoding stage; closes them all at the end."""

    def __init__(self) -> None:
        self._bars: list[tqdm[Any]] = []

    def __call__(self, label: str, total: int) -> Progress:
        bar = tqdm(total=total, desc=f"encoding {label}", unit=" texts", dynamic_ncols=True)
        self._bars.append(bar)
        update: Progress = bar.update
        return update

    def close(self) -> None:
        for bar in self._bars:
            bar.close()


def load_service(settings: Settings) -> QAService:
    bars = ProgressBars()
    try:
        with user_errors():
            return QAService.from_settings(settings, progress=bars)
    finally:
        bars.close()
