"""Prometheus metrics, one registry per app, served at `GET /metrics`.

Request counts and latencies are labelled by route template, never by raw path, so that document
ids cannot multiply the series. The index size, load times and model calls are read from the
service when scraped, so they are absent until it is loaded and follow it if it is replaced.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence

from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from qa_service.service import AnsweringService

questions_logger = logging.getLogger("qa_service.questions")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _ServiceCollector:
    """Index size, load times and question-encoding calls of the service the app holds, read at
    scrape time. The calls show how well questions are batched (texts per call) and how busy the
    model is (the rate of its seconds)."""

    def __init__(self, service: Callable[[], AnsweringService | None]) -> None:
        self.service = service

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterator[Metric]:
        service = self.service()
        families = self._families()
        if service is not None:
            documents, passages, model_seconds, index_seconds, calls, texts, busy = families
            documents.add_metric([], len(service.index.documents))
            passages.add_metric([], len(service.index.passages))
            if "model" in service.load_seconds:
                model_seconds.add_metric([], service.load_seconds["model"])
            if "index" in service.load_seconds:
                index_seconds.add_metric([], service.load_seconds["index"])
            calls.add_metric([], service.queries.calls)
            texts.add_metric([], service.queries.texts)
            busy.add_metric([], service.queries.busy_seconds)
        yield from (family for family in families if family.samples)

    @staticmethod
    def _families() -> list[GaugeMetricFamily | CounterMetricFamily]:
        return [
            GaugeMetricFamily("qa_index_documents", "Documents in the loaded index."),
            GaugeMetricFamily("qa_index_passages", "Passages in the loaded index."),
            GaugeMetricFamily("qa_model_load_seconds", "Time it took to load the embedding model."),
            GaugeMetricFamily(
                "qa_index_load_seconds", "Time it took to load the index (or build it, if stale)."
            ),
            CounterMetricFamily(
                "qa_model_query_calls", "Model calls that encoded questions (several per call)."
            ),
            CounterMetricFamily("qa_model_query_texts", "Question texts those calls encoded."),
            CounterMetricFamily("qa_model_query_seconds", "Time spent in those calls."),
        ]


class Metrics:
    def __init__(
        self,
        service: Callable[[], AnsweringService | None],
        questions_in_flight: Callable[[], int] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        labels = ("method", "route", "status")
        self.requests = Counter(
            "qa_http_requests", "HTTP requests answered.", labels, registry=self.registry
        )
        self.latency = Histogram(
            "qa_http_request_duration_seconds",
            "Time from receiving a request to sending the last byte of its response.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "qa_http_requests_in_flight", "HTTP requests being served.", registry=self.registry
        )
        self.questions = Counter(
            "qa_questions",
            "Questions answered or abstained on (answerable false), per endpoint.",
            ("endpoint", "outcome"),
            registry=self.registry,
        )
        if questions_in_flight is not None:
            Gauge(
                "qa_question_requests_in_flight",
                "Question requests holding an admission slot (limit: QA_MAX_CONCURRENT_REQUESTS).",
                registry=self.registry,
            ).set_function(questions_in_flight)
        self.registry.register(_ServiceCollector(service))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        labels = (method, route, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def record_answers(
    request: Request, endpoint: str, answerable: Sequence[bool], question: str | None = None
) -> None:
    """Count the questions a route answered and abstained on.

    The question text is sensitive: it is logged only when the operator turned on
    `QA_LOG_QUESTIONS`, and then `question` (a single question) or else the number of questions.
    """
    metrics: Metrics | None = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        answered = sum(answerable)
        if answered:
            metrics.questions.labels(endpoint, "answered").inc(answered)
        if len(answerable) - answered:
            metrics.questions.labels(endpoint, "abstained").inc(len(answerable) - answered)
    if getattr(request.app.state, "log_questions", False):
        request_id = getattr(request.state, "request_id", None)
        if question is not None:
            questions_logger.info(
                "%s question %r request_id=%s", endpoint, question, request_id,
                extra={"endpoint": endpoint, "question": question, "request_id": request_id},
            )  # fmt: skip
        else:
            questions_logger.info(
                "%s %d questions request_id=%s", endpoint, len(answerable), request_id,
                extra={"endpoint": endpoint, "questions": len(answerable),
                       "request_id": request_id},
            )  # fmt: skip


router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "Prometheus text exposition format 0.0.4.",
        }
    },
)
async def prometheus_metrics(request: Request) -> Response:
    """Request counts and latencies per route and status, questions answered and abstained,
    index size and load times, requests in flight."""
    app_metrics: Metrics = request.app.state.metrics
    return Response(app_metrics.render(), media_type=CONTENT_TYPE_PLAIN_0_0_4)
