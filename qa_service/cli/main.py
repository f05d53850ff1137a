"""The `qa` command: build the index, serve the API, ask questions from the terminal."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.markup import escape

from qa_service.api.schemas import AskRequest, AskResponse
from qa_service.cli.common import (
    CorpusOpt,
    IndexOpt,
    KeyOpt,
    ModelOpt,
    ProgressBars,
    UrlOpt,
    fail,
    load_service,
    out,
    remote,
    settings_from_flags,
    user_errors,
)
from qa_service.cli.documents import add, remove
from qa_service.cli.eval import evaluate
from qa_service.config import Settings
from qa_service.corpus.documents import SkippedFile
from qa_service.index.build import build_index
from qa_service.service import index_spec, load_configured_encoder

M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)

app = typer.Typer(
    no_args_is_help=True,
    # Help texts are plain: "[env QA_CORPUS_DIR]" must not be read as Rich markup and vanish.
    rich_markup_mode=None,
    add_completion=False,
    help="Semantic question answering over a document corpus, with exact citations.",
)


AddressOpt = Annotated[
    str | None,
    typer.Option(help="With --ray: host:port of the cluster's head (default: a local one)."),
]


@app.command()
def index(
    corpus_dir: CorpusOpt = None,
    index_dir: IndexOpt = None,
    model: ModelOpt = None,
    ray: Annotated[
        bool, typer.Option("--ray", help="Index into shards on a Ray cluster (the [ray] extra).")
    ] = False,
    address: AddressOpt = None,
    shards: Annotated[
        int, typer.Option(min=1, help="With --ray: how many shards to split the index into.")
    ] = 1,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="With --ray: encoding actors (default: one per node)."),
    ] = None,
) -> None:
    """Build (or rebuild) the index from a corpus folder."""
    settings = settings_from_flags(corpus_dir=corpus_dir, index_dir=index_dir, model=model)
    if not ray:
        if address is not None or shards != 1 or workers is not None:
            fail("--address, --shards and --workers go with --ray")
        _index_here(settings)
        return
    from qa_service.distributed.indexing import build_shards

    with user_errors():
        report = build_shards(settings, shards, address, workers)
    out.print(
        f"Indexed [bold]{sum(report.documents)}[/] documents as [bold]{sum(report.passages)}[/] "
        f"passages into [bold]{report.layout.count}[/] shards in {report.seconds:.1f}s "
        f"({', '.join(map(str, report.passages))} passages) under "
        f"{escape(str(report.index_dir / report.layout.folder))}."
    )
    _print_skipped(settings.corpus_dir, report.skipped)


def _index_here(settings: Settings) -> None:
    bars = ProgressBars()
    with user_errors():
        _, report = build_index(index_spec(settings, load_configured_encoder(settings)), bars)
    bars.close()
    out.print(
        f"Indexed [bold]{report.documents}[/] documents as [bold]{report.passages}[/] passages "
        f"in {report.seconds:.1f}s into {escape(str(report.index_dir))}."
    )
    _print_skipped(settings.corpus_dir, report.skipped)


def _print_skipped(corpus_dir: Path, skipped: list[SkippedFile]) -> None:
    if skipped:
        out.print(f"[yellow]Skipped {len(skipped)} file(s) in {corpus_dir}:[/]")
        for file in skipped:
            name = file.path.relative_to(corpus_dir)
            out.print(f"  {escape(str(name))}: {escape(file.reason)}", soft_wrap=True)


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas, unless the operator set MALLOC_ARENA_MAX.

    By default each worker thread may get an arena of its own, which batches of many shapes
    fragment: under steady load the server kept growing (docs/benchmarks.md, soak). Set here, the
    cap misses arenas made before it; MALLOC_ARENA_MAX=2 in the environment (the Dockerfile and
    scripts/serve.sh set it) does best.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [env QA_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [env QA_PORT].")] = None,
    corpus_dir: CorpusOpt = None,
    index_dir: IndexOpt = None,
    model: ModelOpt = None,
    ray: Annotated[
        bool,
        typer.Option("--ray", help="Serve shards built by `qa index --ray` on Ray Serve."),
    ] = False,
    address: AddressOpt = None,
    replicas: Annotated[
        int, typer.Option(min=1, help="With --ray: replicas of each shard and of the app.")
    ] = 1,
) -> None:
    """Serve the HTTP API, building the index first if there is none."""
    import uvicorn

    from qa_service.api import create_app
    from qa_service.api.middleware import configure_logging

    settings = settings_from_flags(
        host=host, port=port, corpus_dir=corpus_dir, index_dir=index_dir, model=model
    )
    configure_logging(json_lines=settings.log_json)
    if ray:
        _serve_on_ray(settings, address, replicas)
        return
    if address is not None or replicas != 1:
        fail("--address and --replicas go with --ray")
    _limit_malloc_arenas()
    service = load_service(settings, owner=True)
    out.print(
        f"Serving {len(service.index.documents)} documents on http://{settings.host}:{settings.port}"
    )
    # The app logs one access line per request, with its request id; uvicorn's own would
    # duplicate it. log_config=None: uvicorn's loggers go through the root handler set above.
    uvicorn.run(
        create_app(settings, service),
        host=settings.host,
        port=settings.port,
        access_log=False,
        log_config=None,
    )


def _serve_on_ray(settings: Settings, address: str | None, replicas: int) -> None:
    from qa_service.distributed import serving

    with user_errors():
        layout = serving.start(settings, address, replicas)
    out.print(
        f"Serving {layout.count} shards with {replicas} replica(s) each on Ray Serve at "
        f"http://{settings.host}:{settings.port} (ready once /readyz says so); Ctrl-C stops it."
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serving.stop()


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question to answer.")],
    top_k: Annotated[int | None, typer.Option("--top-k", "-k", help="Passages to show.")] = None,
    min_score: Annotated[
        float | None, typer.Option(help="Abstain below this score (default: calibrated).")
    ] = None,
    mode: Annotated[
        str | None, typer.Option(help="dense, lexical or hybrid [env QA_MODE].")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON.")] = False,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    corpus_dir: CorpusOpt = None,
    index_dir: IndexOpt = None,
    model: ModelOpt = None,
) -> None:
    """Answer a question and print the passages with their citations."""
    try:
        request = AskRequest.model_validate(
            {"question": question, "top_k": top_k, "min_score": min_score, "mode": mode}
        )
    except ValidationError as exc:
        fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    threshold = min_score
    if url:  # the server's model, index and threshold
        body = request.model_dump_json(exclude_none=True).encode()
        found = remote("POST", f"{url.rstrip('/')}/v1/ask", api_key, body, "application/json")
        response = AskResponse.model_validate(found)
    else:
        settings = settings_from_flags(corpus_dir=corpus_dir, index_dir=index_dir, model=model)
        service = load_service(settings)
        with user_errors():
            timed = service.ask(request.question, request.options())
        response = AskResponse.from_answer(timed.answer, timed.documents, timed.took_ms)
        threshold = service.threshold(request.mode) if min_score is None else min_score
    if as_json:
        print(response.model_dump_json(indent=2))
        return
    _print_answer(response, threshold)


def _print_answer(response: AskResponse, min_score: float | None) -> None:
    if (answer := response.answer) is not None:
        out.print(f"[bold]Answer[/] [{answer.passage_rank}]: {escape(answer.text)}")
        if answer.sentence.text != answer.text:
            out.print(f"  [dim]from:[/] {escape(answer.sentence.text)}")
        out.print()
    elif response.passages:
        best = response.passages[0].score
        out.print(
            f"[bold yellow]No passage is relevant enough to answer[/] (best score {best:.2f}, "
            + ("below the server's threshold" if min_score is None else f"< {min_score:.2f}")
            + "). The nearest passages:\n"
        )
    for p in response.passages:
        page = f", page {p.page}" if p.page is not None else ""
        out.print(
            f"[bold][{p.rank}][/] score {p.score:.3f}  [cyan]{escape(p.title or p.document_id)}[/]"
            f"\n    {escape(p.document_id)}, characters {p.start}–{p.end}{page}"
        )
        text = escape(p.text)
        if p.highlight is not None:
            h = p.highlight
            text = (
                f"{escape(p.text[: h.start])}[bold]{escape(p.text[h.start : h.end])}[/]"
                f"{escape(p.text[h.end :])}"
            )
        out.print(f"    {text}\n")


@app.command(name="mcp")
def mcp_stdio(
    corpus_dir: CorpusOpt = None, index_dir: IndexOpt = None, model: ModelOpt = None
) -> None:
    """Serve the MCP tools (search, ask, get_document) over stdio, for a local agent."""
    from qa_service.api.mcp import build_server
    from qa_service.api.middleware import configure_logging

    settings = settings_from_flags(corpus_dir=corpus_dir, index_dir=index_dir, model=model)
    configure_logging(json_lines=settings.log_json)  # on stderr: stdout carries the protocol
    with contextlib.redirect_stdout(sys.stderr):  # nothing printed while loading may corrupt it
        service = load_service(settings)
    build_server(lambda: service).run("stdio")


app.command(name="eval")(evaluate)
app.command(name="add")(add)
app.command(name="remove")(remove)
