"""SQuAD 2.0 through `evaluate_benchmark` with the real model: unanswerable questions stay out of
the retrieval metrics, answers get the official exact/F1 scores, report.html draws the curve."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from embeddings import Encoder
from qa_service.corpus.chunking import PassageSplitter
from qa_service.evaluation.datasets import EvaluationDataError, load_squad
from qa_service.evaluation.metrics import answer_scores, mean_metrics
from qa_service.evaluation.report import write_outputs
from qa_service.evaluation.runner import EvalOptions, EvalReport, evaluate_benchmark
from qa_service.query.pipeline import AskOptions

# fmt: off
PARAGRAPHS = [
    ("Honey bees", "Honey bees live in colonies with a single queen. Worker bees collect nectar "
     "and pollen and turn nectar into honey. A colony can hold up to 60,000 bees in summer.", [
        ("b1", "What do worker bees collect?", ["nectar and pollen", "nectar and pollen"]),
        ("b2", "How many bees can a colony hold in summer?", ["up to 60,000", "60,000"]),
        ("b3", "What do drone bees collect?", None),
    ]),
    ("Golden Gate", "The Golden Gate Bridge is a suspension bridge in San Francisco. It opened in "
     "1937 and is painted in international orange.", [
        ("g1", "When did the Golden Gate Bridge open?", ["1937", "in 1937"]),
        ("g2", "When did the Golden Gate Bridge close?", None),
    ]),
    ("Python", "Python is a programming language created by Guido van Rossum. It emphasises "
     "readable code and has a large standard library.", [
        ("p1", "Who created the Python programming language?", ["Guido van Rossum"]),
        ("p2", "Who created the Java programming language?", None),
    ]),
]
# fmt: on
ANSWERABLE = {q for _, _, qas in PARAGRAPHS for q, _, answers in qas if answers}
UNANSWERABLE = {q for _, _, qas in PARAGRAPHS for q, _, answers in qas if not answers}


def squad2(path: Path) -> Path:
    """The official v2.0 layout: impossible questions have no answers, only plausible ones."""
    data = []
    for title, context, qas in PARAGRAPHS:
        rows: list[dict[str, Any]] = []
        for qid, question, answers in qas:
            row: dict[str, Any] = {"id": qid, "question": question, "is_impossible": not answers}
            row["answers"] = [{"text": a, "answer_start": context.find(a)} for a in answers or []]
            if not answers:
                row["plausible_answers"] = [{"text": "nectar", "answer_start": 0}]
            rows.append(row)
        data.append({"title": title, "paragraphs": [{"context": context, "qas": rows}]})
    path.write_text(json.dumps({"version": "v2.0", "data": data}), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def squad_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return squad2(tmp_path_factory.mktemp("squad2") / "dev-v2.0.json")


def run(path: Path, encoder: Encoder, cache: Path, min_score: float | None = None) -> EvalReport:
    options = EvalOptions(AskOptions(min_score=min_score))
    return evaluate_benchmark(load_squad(path), encoder, PassageSplitter(encoder, 96, 1), cache,
                              options)  # fmt: skip


def test_impossible_questions_load_as_unanswerable(squad_file: Path) -> None:
    benchmark = load_squad(squad_file)
    assert benchmark.info == {"format": "SQuAD v2.0"}
    questions = {q.id: q for q in benchmark.questions}
    assert {q for q in questions if questions[q].unanswerable} == UNANSWERABLE
    assert all(questions[q].answers == () for q in UNANSWERABLE)  # plausible answers left out
    assert questions["b1"].answers == ("nectar and pollen",)
    assert set(benchmark.qrels) == ANSWERABLE
    assert benchmark.qrels["g1"] == {"Golden Gate/0": 1}


def test_impossible_questions_with_answers_are_refused(tmp_path: Path) -> None:
    data = json.loads(squad2(tmp_path / "a.json").read_text())
    data["data"][1]["paragraphs"][0]["qas"][1]["answers"] = [{"text": "1937"}]
    (tmp_path / "b.json").write_text(json.dumps(data))
    with pytest.raises(EvaluationDataError, match="'g2' is marked `is_impossible` but has"):
        load_squad(tmp_path / "b.json")
    data["data"][1]["paragraphs"][0]["qas"][1]["is_impossible"] = "yes"
    (tmp_path / "b.json").write_text(json.dumps(data))
    with pytest.raises(EvaluationDataError, match="`is_impossible` must be true or false"):
        load_squad(tmp_path / "b.json")


def test_squad2_end_to_end(squad_file: Path, encoder: Encoder, tmp_path: Path) -> None:
    report = run(squad_file, encoder, tmp_path / "cache")
    assert report.counts == {
        "questions": 7, "judged": 4, "answer_checked": 4, "unanswerable": 3, "answer_scored": 7,
        "documents": 3, "passages": 3,
    }  # fmt: skip
    results = {r.id: r for r in report.per_question}
    # Retrieval metrics: answerable questions only, unanswerable ones not judged at all.
    assert all(results[q].metrics == {} and results[q].relevant == 0 for q in UNANSWERABLE)
    assert all(results[q].metrics for q in ANSWERABLE)
    retrieval = mean_metrics(results[q].metrics for q in sorted(ANSWERABLE))
    assert {k: report.metrics[k] for k in retrieval} == pytest.approx(retrieval)
    assert report.metrics["accuracy@1"] == 1.0  # each paragraph is about something else
    assert any("3 unanswerable questions" in note for note in report.notes)

    # exact and f1 follow from each question's answer (None: abstained).
    golds = {q.id: q.answers for q in load_squad(squad_file).questions}
    for r in report.per_question:
        assert (r.exact, r.f1) == answer_scores(r.answer, golds[r.id])
        assert r.confidence is None  # no reader yet
    has = [results[q] for q in ANSWERABLE]
    no = [results[q] for q in UNANSWERABLE]
    m = report.metrics
    assert m["exact"] == pytest.approx(sum(r.exact or 0 for r in has + no) / 7)
    assert m["f1"] == pytest.approx(sum(r.f1 or 0 for r in has + no) / 7)
    assert m["HasAns_f1"] == pytest.approx(sum(r.f1 or 0 for r in has) / 4)
    # An unanswerable question scores 1 exactly when the service abstained on it.
    assert m["NoAns_exact"] == pytest.approx(sum(r.abstained for r in no) / 3)
    assert m["abstention_recall"] == m["NoAns_exact"]
    assert m["answered_answerable"] == sum(not r.abstained for r in has) / 4
    assert 0.0 <= m["answerability_auroc"] <= 1.0

    # Without a reader, the curve is over the best passage's support: what abstention compares
    # with min_score, so the service's own decisions are a point of it.
    answerability = report.answerability
    assert answerability["score"] == "top_support"
    threshold = report.settings["min_score"]
    at = [p for p in answerability["curve"] if p["threshold"] >= threshold]
    answered_at = at[0]["answered"] if at else 0.0
    assert answerability["operating_point"]["answered"] == answered_at
    answered = [r for r in report.per_question if not r.abstained]
    wrong = [r.unanswerable or r.f1 == 0 for r in answered]
    assert answerability["operating_point"]["wrong"] == (
        round(sum(wrong) / len(answered), 6) if answered else None
    )

    out = tmp_path / "out"
    write_outputs(report, out)
    summary = json.loads((out / "report.json").read_text())
    assert summary["answerability"]["curve"] == answerability["curve"]
    rows = {
        r["id"]: r for r in map(json.loads, (out / "per_question.jsonl").read_text().splitlines())
    }
    assert all({"exact", "f1"} <= set(row) and "confidence" not in row for row in rows.values())
    page = (out / "report.html").read_text()
    curve = re.search(r'<svg[^>]*id="answer-curve".*?</svg>', page, re.S)
    assert curve is not None
    assert "<polyline" in curve.group() and 'class="operating-point"' in curve.group()
    assert "the best passage&#x27;s support (no reader ran)" in page
    assert "src=" not in page and "href=" not in page
    assert ">EM<" in page and ">F1<" in page


def test_abstaining_on_everything_and_on_nothing(
    squad_file: Path, encoder: Encoder, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    silent = run(squad_file, encoder, cache, min_score=1e9).metrics
    assert silent["exact"] == silent["f1"] == pytest.approx(3 / 7)
    assert silent["HasAns_exact"] == silent["HasAns_f1"] == 0.0
    assert silent["NoAns_exact"] == 1.0 and silent["answered_answerable"] == 0.0
    assert silent["abstention_precision"] == pytest.approx(3 / 7)
    assert silent["abstention_recall"] == 1.0
    everything = run(squad_file, encoder, cache, min_score=-1e9)
    m = everything.metrics
    assert m["NoAns_exact"] == 0.0 and m["answered_answerable"] == 1.0
    assert m["abstention_recall"] == 0.0
    assert everything.settings["index_cached"] is True
    assert everything.answerability["operating_point"]["answered"] == 1.0
    # The lowest threshold answers every question: the service's decisions here.
    assert everything.answerability["curve"][0]["answered"] == 1.0
    assert (
        everything.answerability["curve"][0]["wrong"]
        == (everything.answerability["operating_point"]["wrong"])
    )
