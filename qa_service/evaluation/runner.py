"""Runs an evaluation through the service itself, so every retrieval change is measured here too.

Two modes:
- a question set against the configured corpus and index, judged per passage (a passage is
  relevant when it contains a gold answer, or comes from a gold document when none is given);
- a benchmark (BEIR folder or SQuAD file), indexed with the service's own pipeline, cached, and
  judged per document (a document scores as its best passage), as BEIR and MTEB do.

Where gold answer texts exist (SQuAD), the answers are scored as the official SQuAD 2.0 script
does; where unanswerable questions exist, abstention is judged too (`answerability_summary`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from embeddings import Encoder
from qa_service.corpus.chunking import Passage, Splitter, WholeDocumentSplitter
from qa_service.errors import IndexCorruptError, IndexNotFoundError
from qa_service.evaluation.datasets import Benchmark, Question, QuestionSet
from qa_service.evaluation.metrics import (
    answer_curve,
    answer_scores,
    auroc,
    first_relevant_rank,
    mean_metrics,
    query_metrics,
)
from qa_service.index.build import index_documents, passage_settings
from qa_service.index.encode import ProgressFactory
from qa_service.index.store import IndexData, load_index, save_index
from qa_service.query.answering import Answer
from qa_service.query.pipeline import AskOptions
from qa_service.query.reading import PassageReader
from qa_service.query.retrieval import DENSE_WEIGHT
from qa_service.service import QAService, TimedAnswer

logger = logging.getLogger(__name__)

QUESTION_BATCH = 64
# Documents a benchmark run ranks: enough for map@100 and recall@100.
DOCUMENT_DEPTH = 100
QUESTION_SET_DEPTH = 100
# Ids and scores kept per question in per_question.jsonl.
KEEP_RETRIEVED = 100


def normalize(text: str) -> str:
    """Case- and whitespace-insensitive form: any whitespace run (NBSP too) becomes one space."""
    return " ".join(text.split()).casefold()


def contains_answer(text: str, answers: Sequence[str]) -> bool:
    norm = normalize(text)
    return any(a and a in norm for a in (normalize(x) for x in answers))


@dataclass
class QuestionResult:
    id: str
    question: str
    retrieved: list[str]  # passage ids (question set) or document ids (benchmark), best first
    scores: list[float]
    relevant: int  # relevant passages/documents that exist for this question
    first_relevant_rank: int | None
    top_score: float | None  # the best passage's support: what abstention judged
    unanswerable: bool
    abstained: bool
    answer: str | None  # the reader's span, or else the answer sentence; None: abstained
    answer_hit: bool | None  # None when there is no gold answer text to check
    took_ms: float
    metrics: dict[str, float] = field(default_factory=dict)
    language: str | None = None
    confidence: float | None = None  # the reader's; None when no reader ran
    # The official SQuAD scores of `answer` (benchmarks with gold answer texts only).
    exact: float | None = None
    f1: float | None = None
    # Whether the answer itself (a reader's span, else the sentence) contains a gold answer.
    span_hit: bool | None = None
    # Where it abstained after reading: the F1 of the answer it would have given (the curve).
    candidate_f1: float | None = None
    sentence: str | None = None  # the answer sentence, kept when a reader's span is the answer


@dataclass
class EvalReport:
    dataset: str
    kind: str  # "question-set" or "benchmark"
    settings: dict[str, Any]
    counts: dict[str, int]
    metrics: dict[str, float]
    latency: dict[str, float]
    top_scores: dict[str, list[float]]  # "answerable" / "unanswerable"
    notes: list[str] = field(default_factory=list)
    per_question: list[QuestionResult] = field(default_factory=list)
    # Question sets whose questions carry a `language`: counts and metrics per language.
    by_language: dict[str, dict[str, float]] = field(default_factory=dict)
    # Where there are unanswerable questions: the score abstention is judged on and, with
    # answer scores, the answered/wrong curve over its thresholds (`answerability_summary`).
    answerability: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalOptions:
    """Per-run choices. Every question is asked with `ask`, whose `top_k`, when None, is as deep
    as the metrics need; new retrieval options can be compared without touching this."""

    ask: AskOptions = field(default_factory=AskOptions)
    dense_weight: float = DENSE_WEIGHT  # benchmark runs; question sets use the service's own
    batch_size: int = QUESTION_BATCH


def _ask_all(
    service: QAService,
    questions: Sequence[Question],
    top_k: int,
    options: EvalOptions,
    progress: ProgressFactory | None,
) -> tuple[list[TimedAnswer], float]:
    """All answers, in order, asked in batches; returns them with the wall time in seconds."""
    update = progress("questions", len(questions)) if progress else None
    answers: list[TimedAnswer] = []
    started = time.perf_counter()
    for start in range(0, len(questions), options.batch_size):
        batch = [q.text for q in questions[start : start + options.batch_size]]
        answers.extend(service.ask_many(batch, replace(options.ask, top_k=top_k)))
        if update:
            update(len(batch))
    return answers, time.perf_counter() - started


def _run_settings(service: QAService, options: EvalOptions) -> dict[str, Any]:
    """The mode, threshold and other choices every question was asked with, for the report."""
    ask = options.ask
    settings: dict[str, Any] = {
        "mode": ask.mode or service.mode,
        "min_score": service.threshold(ask.mode) if ask.min_score is None else ask.min_score,
    }
    if ask.filters is not None:
        settings["filters"] = str(ask.filters)
    reader = service.reader
    settings["reader"] = (
        f"{reader.reader.name}, {reader.depth} passages, threshold {reader.threshold:.4f}"
        if reader
        else "off"
    )
    return settings | {"diversity": str(ask.diversity)}


def _latency(results: Sequence[QuestionResult], seconds: float) -> dict[str, float]:
    took = sorted(r.took_ms for r in results)
    if not took:
        return {}
    p95 = statistics.quantiles(took, n=20, method="inclusive")[18] if len(took) > 1 else took[0]
    return {
        "p50_ms": statistics.median(took),
        "p95_ms": p95,
        "questions_per_second": len(took) / seconds if seconds > 0 else 0.0,
        "seconds": seconds,
    }


def answerability_scores(results: Sequence[QuestionResult]) -> tuple[str, list[float]]:
    """What says how answerable each question looked, and its values: the reader's `confidence`
    when any question has one, else the best passage's support (`top_support`, what retrieval
    abstains on). A question without the score (not read, or nothing retrieved) gets -inf: it
    ranks below every other and no threshold answers it."""
    if any(r.confidence is not None for r in results):
        return "confidence", [-math.inf if r.confidence is None else r.confidence for r in results]
    return "top_support", [-math.inf if r.top_score is None else r.top_score for r in results]


def _answer_metrics(results: Sequence[QuestionResult]) -> dict[str, float]:
    """The official SQuAD 2.0 script's `exact` and `f1` (means over scored questions, as
    fractions rather than its percentages), split into HasAns and NoAns as it does."""
    scored = [r for r in results if r.exact is not None and r.f1 is not None]
    if not scored:
        return {}
    metrics: dict[str, float] = {
        "exact": sum(r.exact or 0.0 for r in scored) / len(scored),
        "f1": sum(r.f1 or 0.0 for r in scored) / len(scored),
    }
    has = [r for r in scored if not r.unanswerable]
    if has:
        metrics["HasAns_exact"] = sum(r.exact or 0.0 for r in has) / len(has)
        metrics["HasAns_f1"] = sum(r.f1 or 0.0 for r in has) / len(has)
    no = [r for r in scored if r.unanswerable]
    if no:
        metrics["NoAns_exact"] = sum(r.exact or 0.0 for r in no) / len(no)
    return metrics


def _summary(results: Sequence[QuestionResult]) -> tuple[dict[str, float], dict[str, int]]:
    """Mean retrieval metrics over judged questions, answer hit rate, answer scores and
    abstention figures."""
    judged = [r for r in results if r.metrics]
    metrics = mean_metrics(r.metrics for r in judged)
    checked = [r for r in results if r.answer_hit is not None]
    if checked:
        metrics["answer_hit_rate"] = sum(bool(r.answer_hit) for r in checked) / len(checked)
        # The answer sentence's own precision: among questions whose first result is relevant.
        first = [r for r in checked if r.first_relevant_rank == 1]
        if first:
            metrics["answer_hit_rate_at_rank1"] = sum(bool(r.answer_hit) for r in first) / len(
                first
            )
        # The same for the answer itself, where a reader's span is shorter than its sentence.
        if any(r.sentence is not None for r in checked):
            metrics["span_hit_rate"] = sum(bool(r.span_hit) for r in checked) / len(checked)
            if first:
                metrics["span_hit_rate_at_rank1"] = sum(bool(r.span_hit) for r in first) / len(
                    first
                )
    metrics |= _answer_metrics(results)
    metrics["abstention_rate"] = sum(r.abstained for r in results) / max(len(results), 1)
    unanswerable = [r for r in results if r.unanswerable]
    if unanswerable:
        abstained = [r for r in results if r.abstained]
        correct = sum(r.unanswerable for r in abstained)
        metrics["abstention_precision"] = correct / len(abstained) if abstained else 0.0
        metrics["abstention_recall"] = correct / len(unanswerable)
        answerable = [r for r in results if not r.unanswerable]
        if answerable:
            metrics["answered_answerable"] = sum(not r.abstained for r in answerable) / len(
                answerable
            )
        _, scores = answerability_scores(results)
        area = auroc(scores, [not r.unanswerable for r in results])
        if area is not None:
            metrics["answerability_auroc"] = area
    counts = {
        "questions": len(results),
        "judged": len(judged),
        "answer_checked": len(checked),
        "unanswerable": len(unanswerable),
    }
    if any(r.exact is not None for r in results):
        counts["answer_scored"] = sum(r.exact is not None for r in results)
    return metrics, counts


def _wrong(result: QuestionResult) -> bool:
    """Answering it would be wrong: it is unanswerable, or the answer it would give shares no word
    with any gold answer (an abstention without a candidate answer has none: F1 0)."""
    f1 = result.f1 if result.candidate_f1 is None else result.candidate_f1
    return result.unanswerable or f1 == 0.0


def answerability_summary(results: Sequence[QuestionResult]) -> dict[str, Any]:
    """For sets with unanswerable questions: which score (`answerability_scores`) judged them
    and, when every answerable question's answer was scored, `curve` (`metrics.answer_curve`)
    and `operating_point`, where the service's own decisions put it on the same axes.

    Below the service's threshold a question it abstained on counts with the answer it would
    have given (the reader's span); one abstained on without reading has none (F1 0), so there
    it over-counts wrong answers."""
    if not any(r.unanswerable for r in results):
        return {}
    name, scores = answerability_scores(results)
    summary: dict[str, Any] = {"score": name}
    answerable = [r for r in results if not r.unanswerable]
    if not answerable or any(r.f1 is None for r in answerable):
        return summary
    wrong = [_wrong(r) for r in results]
    summary["curve"] = answer_curve(scores, [not r.unanswerable for r in results], wrong)
    answered = [r for r in results if not r.abstained]
    summary["operating_point"] = {  # rounded as the curve's points are
        "answered": round(sum(not r.abstained for r in answerable) / len(answerable), 6),
        "wrong": round(sum(map(_wrong, answered)) / len(answered), 6) if answered else None,
    }
    return summary


def summary_by_language(results: Sequence[QuestionResult]) -> dict[str, dict[str, float]]:
    """`_summary` of each language's questions (in order of first appearance), with how many
    answerable and unanswerable questions were abstained on; questions without one are left out."""
    groups: dict[str, list[QuestionResult]] = {}
    for r in results:
        if r.language is not None:
            groups.setdefault(r.language, []).append(r)
    summaries: dict[str, dict[str, float]] = {}
    for language, group in groups.items():
        metrics, _ = _summary(group)
        summaries[language] = {
            "questions": len(group),
            "unanswerable": sum(r.unanswerable for r in group),
            "answerable_abstained": sum(r.abstained and not r.unanswerable for r in group),
            "unanswerable_abstained": sum(r.abstained and r.unanswerable for r in group),
            **metrics,
        }
    return summaries


def _top_scores(results: Sequence[QuestionResult]) -> dict[str, list[float]]:
    scores: dict[str, list[float]] = {"answerable": [], "unanswerable": []}
    for r in results:
        if r.top_score is not None:
            scores["unanswerable" if r.unanswerable else "answerable"].append(r.top_score)
    return scores


def _result(
    question: Question,
    timed: TimedAnswer,
    retrieved: list[str],
    scores: list[float],
    qrels: dict[str, int],
    score_answers: bool = False,
) -> QuestionResult:
    """One question's row; with `score_answers` (gold answer texts are answers, as in SQuAD, not
    phrases to find) its answer gets the official exact and F1 scores."""
    answer: Answer = timed.answer
    text, sentence = answer.answer_text, answer.sentence_text
    answer_hit = span_hit = None
    if question.answers:
        # The answer sentence, as documented, whether or not a reader cut a span from it.
        answer_hit = sentence is not None and contains_answer(sentence, question.answers)
        span_hit = text is not None and contains_answer(text, question.answers)
    exact = f1 = candidate_f1 = None
    if score_answers and (question.answers or question.unanswerable):
        exact, f1 = answer_scores(text, question.answers)
        if text is None and answer.candidate_text is not None:
            candidate_f1 = answer_scores(answer.candidate_text, question.answers)[1]
    return QuestionResult(
        id=question.id,
        question=question.text,
        retrieved=retrieved[:KEEP_RETRIEVED],
        scores=[round(s, 6) for s in scores[:KEEP_RETRIEVED]],
        relevant=len(qrels),
        first_relevant_rank=first_relevant_rank(retrieved, qrels),
        top_score=answer.passages[0].hit.support if answer.passages else None,
        unanswerable=question.unanswerable,
        abstained=not answer.answerable,
        answer=text,
        answer_hit=answer_hit,
        took_ms=timed.took_ms,
        metrics=query_metrics(retrieved, qrels) if qrels else {},
        language=question.language,
        confidence=answer.confidence,
        exact=exact,
        f1=f1,
        candidate_f1=candidate_f1,
        span_hit=span_hit,
        sentence=sentence if sentence != text else None,
    )


def _relevant(question: Question, passage: Passage, text: str | None = None) -> bool:
    """Contains a gold answer (`text`: the passage's normalized text, if known) or, for a
    question without answers, comes from one of its documents."""
    if question.unanswerable:
        return False
    if question.answers:
        norm = normalize(passage.text) if text is None else text
        return any(a and a in norm for a in (normalize(x) for x in question.answers))
    return passage.document_id in question.documents


def passage_qrels(
    question: Question, index: IndexData, retrieved: Sequence[Passage], texts: Sequence[str]
) -> dict[str, int]:
    """Relevant passages for a question-set entry (binary grades), by id.

    Retrieval may merge overlapping windows into one passage; such a passage is judged on its
    own text, and the windows it covers no longer count separately, so a perfect ranking still
    reaches recall 1. `texts` are the index passages' normalized texts, in index order.
    """
    hits = [p for p in retrieved if _relevant(question, p)]
    qrels = {p.id: 1 for p in hits}
    for passage, text in zip(index.passages, texts, strict=True):
        if _relevant(question, passage, text) and not any(
            h.document_id == passage.document_id and h.start < passage.end and passage.start < h.end
            for h in hits
        ):
            qrels[passage.id] = 1
    return qrels


def evaluate_question_set(
    question_set: QuestionSet,
    service: QAService,
    options: EvalOptions | None = None,
    progress: ProgressFactory | None = None,
) -> EvalReport:
    """Ask every question of the set against the service's index; judge each passage."""
    options = options or EvalOptions()
    index = service.index
    top_k = options.ask.top_k or min(QUESTION_SET_DEPTH, len(index.passages))
    questions = question_set.questions
    timed, seconds = _ask_all(service, questions, top_k, options, progress)
    results: list[QuestionResult] = []
    notes: list[str] = []
    texts = [normalize(p.text) for p in index.passages]
    for question, answer in zip(questions, timed, strict=True):
        hits = [rp.hit for rp in answer.answer.passages]
        qrels = passage_qrels(question, index, [h.passage for h in hits], texts)
        if not qrels and not question.unanswerable:
            notes.append(
                f"{question.id}: no passage of the corpus contains its answer or comes from its "
                "documents; left out of the retrieval metrics"
            )
        results.append(
            _result(question, answer, [h.passage.id for h in hits], [h.score for h in hits], qrels)
        )
    metrics, counts = _summary(results)
    counts |= {"documents": len(index.documents), "passages": len(index.passages)}
    return EvalReport(
        dataset=question_set.name,
        kind="question-set",
        settings={
            "model": service.encoder.name,
            **index.manifest.passage_settings,
            "top_k": top_k,
            **_run_settings(service, options),
            "level": "passage",
            "question_batch": options.batch_size,
        },
        counts=counts,
        metrics=metrics,
        latency=_latency(results, seconds),
        top_scores=_top_scores(results),
        notes=notes,
        per_question=results,
        by_language=summary_by_language(results),
        answerability=answerability_summary(results),
    )


def cache_key(benchmark: Benchmark, encoder: Encoder, splitter: Splitter, sentences: bool) -> str:
    """Changes with the corpus (file and the document texts made from it), model and splitting."""
    key = [benchmark.fingerprint, encoder.name, passage_settings(splitter, encoder.name), sentences]
    digest = hashlib.sha256()
    digest.update(json.dumps(key, sort_keys=True).encode())
    for document in benchmark.documents:
        digest.update(document.id.encode() + b"\0" + document.text.encode() + b"\0")
    return digest.hexdigest()[:20]


def benchmark_index(
    benchmark: Benchmark,
    encoder: Encoder,
    splitter: Splitter,
    cache_dir: Path | None,
    sentence_vectors: bool,
    batch_size: int = 32,
    progress: ProgressFactory | None = None,
) -> tuple[IndexData, bool]:
    """The benchmark's index from the cache, or built (and cached); True when it was cached."""
    folder = (
        cache_dir / cache_key(benchmark, encoder, splitter, sentence_vectors) if cache_dir else None
    )
    if folder is not None:
        try:
            return load_index(folder), True
        except IndexNotFoundError:
            pass
        except IndexCorruptError as exc:
            logger.warning("rebuilding the cached benchmark index: %s", exc)
    data = index_documents(
        benchmark.documents, encoder, splitter, benchmark.fingerprint, batch_size, progress,
        sentence_vectors=sentence_vectors,
    )  # fmt: skip
    if folder is not None:
        save_index(folder, data)
    return data, False


def evaluate_benchmark(
    benchmark: Benchmark,
    encoder: Encoder,
    splitter: Splitter,
    cache_dir: Path | None,
    options: EvalOptions | None = None,
    progress: ProgressFactory | None = None,
    encode_batch_size: int = 32,
    reader: PassageReader | None = None,
) -> EvalReport:
    """Index the benchmark corpus like the service would, ask every query, rank documents."""
    options = options or EvalOptions()
    # Sentence vectors serve ranking (sentence evidence) and answer sentences, as in the service;
    # the whole-document protocol reproduces MTEB's plain dense retrieval, so it goes without.
    sentences = not isinstance(splitter, WholeDocumentSplitter)
    started = time.perf_counter()
    index, cached = benchmark_index(
        benchmark, encoder, splitter, cache_dir, sentences, encode_batch_size, progress
    )
    index_seconds = time.perf_counter() - started
    passages_per_document = len(index.passages) / max(len(index.documents), 1)
    # Passages of one document crowd the top, so go deep enough to rank DOCUMENT_DEPTH documents.
    top_k = options.ask.top_k or min(
        len(index.passages), round(DOCUMENT_DEPTH * max(passages_per_document, 1.0)) + 100
    )
    service = QAService(
        encoder, index, options.ask.min_score, top_k, dense_weight=options.dense_weight,
        reader=reader,
    )  # fmt: skip
    questions = benchmark.questions
    timed, seconds = _ask_all(service, questions, top_k, options, progress)
    # SQuAD's gold texts are answers; BEIR has none.
    score_answers = any(q.answers for q in questions)
    results = []
    for question, answer in zip(questions, timed, strict=True):
        documents: dict[str, float] = {}
        for rp in answer.answer.passages:
            documents.setdefault(rp.hit.passage.document_id, rp.hit.score)
        retrieved = list(documents)[:DOCUMENT_DEPTH]
        scores = [documents[d] for d in retrieved]
        qrels = benchmark.qrels.get(question.id, {})  # none for an unanswerable question
        results.append(_result(question, answer, retrieved, scores, qrels, score_answers))
    metrics, counts = _summary(results)
    counts |= {"documents": len(index.documents), "passages": len(index.passages)}
    short = sum(1 for r in results if len(r.retrieved) < min(DOCUMENT_DEPTH, len(index.documents)))
    notes = []
    unanswerable = sum(q.unanswerable for q in questions)
    if unanswerable:
        notes.append(
            f"{unanswerable} unanswerable questions are left out of the retrieval metrics and "
            "counted in the answer and abstention figures"
        )
    if short:
        notes.append(
            f"{short} questions ranked fewer than {DOCUMENT_DEPTH} documents at top_k={top_k}; "
            "raise --top-k for exact map@100/recall@100"
        )
    return EvalReport(
        dataset=benchmark.name,
        kind="benchmark",
        settings={
            "model": encoder.name,
            **passage_settings(splitter, encoder.name),
            "split": benchmark.split,
            "top_k": top_k,
            **_run_settings(service, options),
            "level": "document",
            "question_batch": options.batch_size,
            "index_cached": cached,
            "index_seconds": round(index_seconds, 1),
            **benchmark.info,
        },
        counts=counts,
        metrics=metrics,
        latency=_latency(results, seconds),
        top_scores=_top_scores(results),
        notes=notes,
        per_question=results,
        answerability=answerability_summary(results),
    )
