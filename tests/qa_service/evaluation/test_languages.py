"""Question sets tagged with a `language`: loading, and metrics broken down per language."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from qa_service.evaluation.datasets import EvaluationDataError, load_question_set
from qa_service.evaluation.report import print_report, render_html, write_outputs
from qa_service.evaluation.runner import EvalReport, QuestionResult, summary_by_language

ROOT = Path(__file__).resolve().parents[3]
MULTILINGUAL = ROOT / "eval" / "seed_dev_multilingual.jsonl"


def result(qid: str, language: str | None, rank: int | None, abstained: bool) -> QuestionResult:
    unanswerable = rank is None
    return QuestionResult(
        id=qid, question="?", retrieved=["p1", "p2"], scores=[0.9, 0.8],
        relevant=0 if unanswerable else 1, first_relevant_rank=rank, top_score=0.9,
        unanswerable=unanswerable, abstained=abstained,
        answer=None, answer_hit=None, took_ms=1.0,
        metrics={} if unanswerable else {"accuracy@1": float(rank == 1), "accuracy@5": 1.0},
        language=language,
    )  # fmt: skip


def test_language_is_read_and_other_fields_ignored(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    rows = [
        {"id": "a", "question": "Šta je GRETA?", "answers": ["GRETA"], "language": "sh-Latn",
         "english": "What is GRETA?"},
        {"id": "b", "question": "What is GRETA?", "answers": ["GRETA"]},
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    a, b = load_question_set(path).questions
    assert (a.language, b.language) == ("sh-Latn", None)
    path.write_text('{"question": "x", "language": 3}\n')
    with pytest.raises(EvaluationDataError, match="line 1: `language` must be a non-empty string"):
        load_question_set(path)


def test_the_shipped_multilingual_set_loads_with_every_language() -> None:
    questions = load_question_set(MULTILINGUAL).questions
    languages = {q.language for q in questions}
    assert languages == {"sq", "sh-Latn", "sr-Cyrl", "mk"}
    for language in languages:
        own = [q for q in questions if q.language == language]
        assert sum(q.unanswerable for q in own) >= 2
        assert all(q.answers and q.documents for q in own if not q.unanswerable)


def test_metrics_and_abstentions_per_language() -> None:
    results = [
        result("a-sq", "sq", 1, False),
        result("b-sq", "sq", 3, True),  # answerable, abstained: a miss
        result("u-sq", "sq", None, True),
        result("a-mk", "mk", 1, False),
        result("u-mk", "mk", None, False),  # unanswerable, answered: a miss
        result("a-en", None, 1, False),  # untagged: left out of the breakdown
    ]
    summaries = summary_by_language(results)
    assert list(summaries) == ["sq", "mk"]
    sq, mk = summaries["sq"], summaries["mk"]
    assert (sq["questions"], sq["unanswerable"]) == (3, 1)
    assert (sq["answerable_abstained"], sq["unanswerable_abstained"]) == (1, 1)
    assert sq["accuracy@1"] == 0.5 and sq["abstention_recall"] == 1.0
    assert (mk["answerable_abstained"], mk["unanswerable_abstained"]) == (0, 0)
    assert mk["accuracy@1"] == 1.0 and mk["abstention_recall"] == 0.0
    assert summary_by_language([result("x", None, 1, False)]) == {}


def test_reports_show_the_breakdown(tmp_path: Path) -> None:
    results = [result("a-sq", "sq", 1, False), result("u-sq", "sq", None, True)]
    report = EvalReport(
        dataset="set", kind="question-set", settings={}, counts={"questions": 2}, metrics={},
        latency={}, top_scores={}, per_question=results, by_language=summary_by_language(results),
    )  # fmt: skip
    write_outputs(report, tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["by_language"]["sq"]["answerable_abstained"] == 0
    rows = [json.loads(line) for line in (tmp_path / "per_question.jsonl").read_text().splitlines()]
    assert [r["language"] for r in rows] == ["sq", "sq"]
    console = Console(file=io.StringIO(), width=200)
    print_report(data, console)
    printed = console.file.getvalue()  # type: ignore[attr-defined]
    assert "sq" in printed and "0/1" in printed and "1/1" in printed
    assert "Per language" in render_html(data)
