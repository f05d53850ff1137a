"""Metric definitions against hand-computed cases and against pytrec_eval (BEIR's backend)."""

from __future__ import annotations

import math
import random

import pytest

from qa_service.evaluation.metrics import (
    METRIC_NAMES,
    average_precision_at,
    evaluate_run,
    first_relevant_rank,
    ndcg_at,
    query_metrics,
    recall_at,
    reciprocal_rank_at,
)

RANKED = ["d1", "d2", "d3", "d4"]
QRELS = {"d2": 2, "d4": 1, "d9": 1, "d7": 0}


def test_hand_computed_graded_case() -> None:
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    idcg = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at(RANKED, QRELS, 10) == pytest.approx(dcg / idcg)
    assert ndcg_at(RANKED, QRELS, 10) == pytest.approx(0.540586, abs=1e-6)
    # Precision 1/2 at rank 2 and 2/4 at rank 4, over all 3 relevant (the 0 grade is not).
    assert average_precision_at(RANKED, QRELS, 100) == pytest.approx(1 / 3)
    assert average_precision_at(RANKED, QRELS, 3) == pytest.approx(0.5 / 3)
    assert recall_at(RANKED, QRELS, 1) == 0.0
    assert recall_at(RANKED, QRELS, 5) == pytest.approx(2 / 3)
    assert reciprocal_rank_at(RANKED, QRELS, 10) == 0.5
    assert reciprocal_rank_at(RANKED, QRELS, 1) == 0.0
    assert first_relevant_rank(RANKED, QRELS) == 2
    scores = query_metrics(RANKED, QRELS)
    assert list(scores) == list(METRIC_NAMES)
    assert (scores["accuracy@1"], scores["accuracy@3"]) == (0.0, 1.0)


def test_perfect_and_empty_rankings() -> None:
    qrels = {"a": 1, "b": 1}
    perfect = query_metrics(["a", "b", "x"], qrels)
    assert all(v == 1.0 for k, v in perfect.items() if k != "recall@1")
    assert perfect["recall@1"] == 0.5
    assert all(v == 0.0 for v in query_metrics([], qrels).values())
    assert first_relevant_rank(["x"], qrels) is None


def test_repeated_ids_count_once_at_their_best_rank() -> None:
    assert query_metrics(["a", "a", "b"], {"b": 1})["mrr@10"] == 0.5


def test_cutoffs_ignore_relevant_beyond_k() -> None:
    ranked = [f"d{i}" for i in range(20)]
    scores = query_metrics(ranked, {"d12": 1})
    assert scores["mrr@10"] == 0.0
    assert scores["ndcg@10"] == 0.0
    assert scores["recall@100"] == 1.0
    assert scores["map@100"] == pytest.approx(1 / 13)


def test_mean_skips_queries_without_relevant_documents() -> None:
    run = {"q1": ["a"], "q2": ["b"], "q3": ["c"]}
    qrels = {"q1": {"a": 1}, "q2": {"a": 1}, "q3": {"c": 0}}
    assert evaluate_run(run, qrels)["accuracy@1"] == 0.5


def test_agrees_with_pytrec_eval_on_random_runs() -> None:
    pytrec_eval = pytest.importorskip("pytrec_eval")
    rng = random.Random(7)
    docs = [f"doc{i}" for i in range(300)]
    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, dict[str, float]] = {}
    for q in range(60):
        qid = f"q{q}"
        judged = rng.sample(docs, rng.randint(1, 25))
        qrels[qid] = {d: rng.choice([0, 1, 1, 2, 3]) for d in judged}
        qrels[qid][judged[0]] = rng.randint(1, 3)  # at least one relevant
        retrieved = rng.sample(docs, rng.randint(5, 150))
        # Distinct scores: trec_eval breaks ties by document id, a ranked list has no ties.
        scores = rng.sample(range(10_000), len(retrieved))
        run[qid] = {d: s / 10_000 for d, s in zip(retrieved, scores, strict=True)}
    ranked = {q: sorted(r, key=r.__getitem__, reverse=True) for q, r in run.items()}
    ours = {q: query_metrics(ranked[q], qrels[q]) for q in qrels}

    measures = {"ndcg_cut.10", "map_cut.100", "recall.1,5,10,100", "success.1,5,10"}
    reference = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    top10 = {q: {d: run[q][d] for d in ranked[q][:10]} for q in run}
    mrr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    names = {
        "ndcg@10": "ndcg_cut_10", "map@100": "map_cut_100", "recall@1": "recall_1",
        "recall@5": "recall_5", "recall@10": "recall_10", "recall@100": "recall_100",
        "accuracy@1": "success_1", "accuracy@5": "success_5", "accuracy@10": "success_10",
    }  # fmt: skip
    for qid in qrels:
        for ours_name, trec_name in names.items():
            assert ours[qid][ours_name] == pytest.approx(reference[qid][trec_name], abs=1e-9), (
                qid,
                ours_name,
            )
        assert ours[qid]["mrr@10"] == pytest.approx(mrr[qid]["recip_rank"], abs=1e-9)
    assert evaluate_run(ranked, qrels)["ndcg@10"] == pytest.approx(
        sum(r["ndcg_cut_10"] for r in reference.values()) / len(reference)
    )
