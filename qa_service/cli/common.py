"""What every `qa` command shares: settings from flags, clear errors, progress bars."""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
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
UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="QA_URL",
        help="Use the server at this address instead of the index folder [env QA_URL].",
    ),
]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="QA_API_KEY",
        help="API key for --url [env QA_API_KEY].",
        show_default=False,
    ),
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
    """One tqdm bar per encoding stage. The stages run one after the other, so a new bar closes
    the one before: an open bar is drawn again under every new one."""

    def __init__(self) -> None:
        self._bar: tqdm[Any] | None = None

    def __call__(self, label: str, total: int) -> Progress:
        self.close()
        self._bar = tqdm(total=total, desc=f"encoding {label}", unit=" texts", dynamic_ncols=True)
        update: Progress = self._bar.update
        return update

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def load_service(settings: Settings, owner: bool = False) -> QAService:
    """The query service over the configured index. Only `qa serve` is its `owner`: the other
    commands never rebuild it for another model or other settings (a server may be serving it),
    they refuse with the fix."""
    bars = ProgressBars()
    try:
        with user_errors():
            return QAService.from_settings(settings, progress=bars, owner=owner)
    finally:
        bars.close()


def remote(
    method: str, url: str, api_key: str | None, body: bytes | None = None, content_type: str = ""
) -> Any:
    headers = {"Accept": "application/json"}
    if content_type:
        headers["Content-Type"] = content_type
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            text = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        with contextlib.suppress(ValueError, KeyError, TypeError):
            detail = str(json.loads(detail)["detail"])
        fail(f"{method} {url}: {exc.code}: {detail}", code=1)
    except urllib.error.URLError as exc:
        fail(f"cannot reach {url}: {exc.reason}", code=1)
    return json.loads(text) if text else None
