"""`qa eval`: evaluate the service on a question set or a benchmark, or compare two reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from qa_service.cli.common import (
    ProgressBars,
    err,
    fail,
    load_service,
    out,
    settings_from_flags,
    user_errors,
)
from qa_service.evaluation.datasets import (
    is_squad_file,
    load_beir,
    load_question_set,
    load_squad,
)
from qa_service.evaluation.report import (
    compare_dict,
    load_report,
    print_comparison,
    print_report,
    report_dict,
    write_outputs,
)
from qa_service.evaluation.runner import (
    QUESTION_BATCH,
    EvalOptions,
    evaluate_benchmark,
    evaluate_question_set,
)
from qa_service.models import MODES
from qa_service.query.pipeline import AskOptions


def evaluate(
    path: Annotated[
        Path | None,
        typer.Argument(
            help="A question set (.jsonl), a BEIR folder (corpus.jsonl, queries.jsonl, "
            "qrels/<split>.tsv) or a SQuAD v1.1 file (.json).",
        ),
    ] = None,
    split: Annotated[str, typer.Option(help="Qrels split of a BEIR folder.")] = "test",
    top_k: Annotated[
        int | None,
        typer.Option(
            "--top-k",
            "-k",
            min=1,
            help="Passages retrieved per question "
            "(default: enough to rank 100 documents / 100 passages).",
        ),
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(help=f"Retrieval mode: {', '.join(MODES)} [default: QA_MODE or hybrid]."),
    ] = None,
    min_score: Annotated[
        float | None, typer.Option(help="Abstain below this score (default: calibrated).")
    ] = None,
    diversity: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Maximal marginal relevance: 0 ranks by score alone."),
    ] = 0.0,
    whole_documents: Annotated[
        bool,
        typer.Option(
            "--whole-documents",
            help="Benchmarks only: one passage per document, cut at the model's input limit "
            "(how MTEB scores retrieval).",
        ),
    ] = False,
    batch_size: Annotated[
        int,
        typer.Option(
            min=1,
            help="Questions per service call; 1 times each question on its own (slower).",
        ),
    ] = QUESTION_BATCH,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    output: Annotated[
        Path | None,
        typer.Option(help="Write report.json, per_question.jsonl and report.html here."),
    ] = None,
    compare: Annotated[
        tuple[Path, Path] | None,
        typer.Option(help="Show two saved reports (report.json or its folder) side by side."),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Where benchmark indexes are cached [default: <index-dir>/eval-cache]."),
    ] = None,
    corpus_dir: Annotated[
        Path | None, typer.Option(help="Corpus for question sets [env QA_CORPUS_DIR].")
    ] = None,
    index_dir: Annotated[
        Path | None, typer.Option(help="Where the index lives [env QA_INDEX_DIR].")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model name or local folder [env QA_MODEL].")
    ] = None,
) -> None:
    """Measure retrieval and answers on a question set or benchmark; compare two reports."""
    if compare is not None:
        if path is not None:
            fail("give either PATH to evaluate or --compare A B, not both")
        with user_errors():
            comparison = compare_dict(load_report(compare[0]), load_report(compare[1]))
        if as_json:
            print(json.dumps(comparison, indent=2, ensure_ascii=False))
        else:
            print_comparison(comparison, out, (str(compare[0]), str(compare[1])))
        return
    if path is None:
        fail("give a question file, a BEIR folder or a SQuAD file (or --compare A B)")
    if not path.exists():
        fail(f"{path} does not exist")
    if mode is not None and mode not in MODES:
        fail(f"--mode must be one of {', '.join(MODES)}, not {mode!r}")
    settings = settings_from_flags(corpus_dir=corpus_dir, index_dir=index_dir, model=model)
    options = EvalOptions(
        AskOptions(top_k, min_score, mode or settings.mode, diversity=diversity),
        dense_weight=settings.dense_weight,
        batch_size=batch_size,
    )
    bars = ProgressBars()
    try:
        with user_errors():
            if path.is_dir() or is_squad_file(path):
                from qa_service.corpus.chunking import WholeDocumentSplitter
                from qa_service.service import (
                    load_configured_encoder,
                    load_configured_reader,
                    make_splitter,
                )

                # MTEB joins title and text with a space; for sentence splitting a line break
                # keeps the title a sentence of its own.
                joiner = " " if whole_documents else "\n"
                benchmark = load_beir(path, split, joiner) if path.is_dir() else load_squad(path)
                encoder = load_configured_encoder(settings)
                splitter = (
                    WholeDocumentSplitter(encoder)
                    if whole_documents
                    else make_splitter(settings, encoder)
                )
                report = evaluate_benchmark(
                    benchmark, encoder, splitter, cache_dir or settings.index_dir / "eval-cache",
                    options, bars, settings.batch_size, load_configured_reader(settings),
                )  # fmt: skip
            else:
                if whole_documents:
                    fail("--whole-documents applies to benchmark folders, not question sets")
                question_set = load_question_set(path)
                service = load_service(settings)
                report = evaluate_question_set(question_set, service, options, bars)
    finally:
        bars.close()
    data = report_dict(report)
    if as_json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        print_report(data, out)
    if output is not None:
        paths = write_outputs(report, output)
        (err if as_json else out).print("Wrote " + ", ".join(str(p) for p in paths))
