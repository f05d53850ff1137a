"""Answer scores as the official SQuAD 2.0 script computes them, AUROC and the answered/wrong
curve, on cases small enough to check by hand."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from qa_service.evaluation.metrics import (
    answer_curve,
    answer_f1,
    answer_scores,
    auroc,
    average_ranks,
    curve_thresholds,
    exact_match,
    normalize_answer,
)
from qa_service.evaluation.runner import (
    QuestionResult,
    _summary,
    answerability_scores,
    answerability_summary,
)


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("The Cat", "cat"),
        ("  A  big\u00a0dog. ", "big dog"),
        ("U.S. (1998)!", "us 1998"),
        ("Another theory", "another theory"),  # articles are whole words only
        ("an apple, the pear", "apple pear"),
        ("", ""),
    ],
)
def test_the_official_normalisation(text: str, normal: str) -> None:
    assert normalize_answer(text) == normal


def test_exact_match_and_f1_by_hand() -> None:
    assert exact_match("The Cat", "cat") == 1.0
    assert exact_match("cats", "cat") == 0.0
    # "a big dog" → big dog; "big red dog": 2 shared words, precision 1, recall 2/3.
    assert answer_f1("a big dog", "big red dog") == pytest.approx(0.8)
    assert answer_f1("dog dog", "dog") == pytest.approx(2 * 0.5 * 1 / 1.5)  # counts clip
    assert answer_f1("Paris", "London") == 0.0
    assert answer_f1("", "") == 1.0 and answer_f1("the", "") == 1.0  # both empty once normal
    assert answer_f1("Paris", "") == 0.0 and answer_f1("", "Paris") == 0.0


def test_answer_scores_take_the_best_gold_and_abstention_is_empty() -> None:
    golds = ["1998", "Following a referendum in 1997"]
    exact, f1 = answer_scores("in 1998", golds)
    # vs "1998": precision 1/2, recall 1 → 2/3; vs the other: 1/2 and 1/4 → 1/3.
    assert exact == 0.0 and f1 == pytest.approx(2 / 3)
    assert answer_scores("the 1998.", golds) == (1.0, 1.0)
    assert answer_scores(None, golds) == (0.0, 0.0)  # abstained on an answerable question
    assert answer_scores(None, ()) == (1.0, 1.0)  # abstained on an unanswerable one
    assert answer_scores("Paris", ()) == (0.0, 0.0)
    assert answer_scores("", ["The"]) == (1.0, 1.0)  # a gold that normalises away is dropped


def test_average_ranks_share_ties() -> None:
    assert average_ranks([3, 1, 3, 2]).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert average_ranks([-math.inf, 0.5, -math.inf]).tolist() == [1.5, 3.0, 1.5]


def test_auroc_hand_cases() -> None:
    labels = [True, True, False, False]
    assert auroc([0.9, 0.8, 0.2, 0.1], labels) == 1.0  # perfect separation
    assert auroc([0.1, 0.2, 0.8, 0.9], labels) == 0.0  # reversed
    assert auroc([0.5, 0.5, 0.5, 0.5], labels) == 0.5  # all tied
    # The positive ties one negative (half) and beats the other: (0.5 + 1) / 2.
    assert auroc([0.5, 0.5, 0.1], [True, False, False]) == 0.75
    assert auroc([-math.inf, 0.3], [False, True]) == 1.0  # no score ranks lowest
    assert auroc([0.1, 0.2], [True, True]) is None  # one class only


def test_auroc_is_the_share_of_ordered_pairs() -> None:
    rng = random.Random(7)
    for _ in range(20):
        scores = [rng.choice([0.1, 0.2, 0.3, 0.4]) for _ in range(15)]
        labels = [rng.random() < 0.5 for _ in range(15)]
        pairs = [
            1.0 if p > n else 0.5 if p == n else 0.0
            for (p, lp), (n, ln) in itertools.product(zip(scores, labels, strict=True), repeat=2)
            if lp and not ln
        ]
        expected = sum(pairs) / len(pairs) if pairs else None
        assert auroc(scores, labels) == pytest.approx(expected)


def test_answer_curve_by_hand() -> None:
    scores = [0.9, 0.8, 0.7, 0.6, -math.inf]
    answerable = [True, False, True, True, True]
    wrong = [False, True, False, True, True]
    assert answer_curve(scores, answerable, wrong) == [
        {"threshold": 0.6, "answered": 0.75, "wrong": 0.5},
        {"threshold": 0.7, "answered": 0.5, "wrong": round(1 / 3, 6)},
        {"threshold": 0.8, "answered": 0.25, "wrong": 0.5},
        {"threshold": 0.9, "answered": 0.25, "wrong": 0.0},
    ]


def test_many_scores_give_quantile_thresholds_that_are_scores() -> None:
    scores = [i / 1000 for i in range(1000)]
    thresholds = curve_thresholds(scores, points=50)
    assert len(thresholds) == 51 and thresholds == sorted(thresholds)
    assert thresholds[0] == 0.0 and thresholds[-1] == 0.999
    assert set(thresholds) <= set(scores)


def row(
    qid: str,
    *,
    unanswerable: bool = False,
    abstained: bool = False,
    top: float | None = 0.5,
    confidence: float | None = None,
    f1: float | None = None,
) -> QuestionResult:
    return QuestionResult(
        id=qid, question="?", retrieved=[], scores=[], relevant=0, first_relevant_rank=None,
        top_score=top, unanswerable=unanswerable, abstained=abstained,
        answer=None if abstained else "x", answer_hit=None, took_ms=1.0,
        confidence=confidence, exact=None if f1 is None else float(f1 == 1.0), f1=f1,
    )  # fmt: skip


def test_the_reader_confidence_is_used_when_there_is_one() -> None:
    rows = [row("a", top=0.9, f1=1.0), row("u", unanswerable=True, top=0.1, f1=0.0)]
    assert answerability_scores(rows) == ("top_support", [0.9, 0.1])
    assert _summary(rows)[0]["answerability_auroc"] == 1.0
    # With a reader, its confidence decides; a question it did not read ranks lowest.
    rows = [
        row("a", top=0.2, confidence=0.8, f1=1.0),
        row("u", unanswerable=True, top=0.1, confidence=0.7, f1=0.0),
        row("b", abstained=True, top=0.05, f1=0.0),
    ]
    assert answerability_scores(rows) == ("confidence", [0.8, 0.7, -math.inf])
    metrics, counts = _summary(rows)
    assert metrics["answerability_auroc"] == 0.5  # a outscores u, b (not read) does not
    assert metrics["answered_answerable"] == 0.5
    assert metrics["abstention_precision"] == 0.0 and metrics["abstention_recall"] == 0.0
    assert metrics["HasAns_f1"] == 0.5 and metrics["NoAns_exact"] == 0.0
    assert counts["answer_scored"] == 3
    summary = answerability_summary(rows)
    assert summary["score"] == "confidence"
    assert summary["curve"] == [  # b, not read, is never answered
        {"threshold": 0.7, "answered": 0.5, "wrong": 0.5},
        {"threshold": 0.8, "answered": 0.5, "wrong": 0.0},
    ]
    assert summary["operating_point"] == {"answered": 0.5, "wrong": 0.5}


def test_no_curve_without_unanswerable_questions_or_answer_scores() -> None:
    assert answerability_summary([row("a", f1=1.0)]) == {}
    unscored = [row("a"), row("u", unanswerable=True)]
    assert answerability_summary(unscored) == {"score": "top_support"}
    assert "exact" not in _summary(unscored)[0]
