"""Ranking metrics with the definitions of BEIR (pytrec_eval) and sentence-transformers.

- ndcg@k: graded gain `rel`, discount log2(rank + 1), ideal DCG from the judged relevances.
- map@k: trec_eval's map_cut: precision at each relevant rank up to k, over all relevant.
- recall@k: relevant in the top k over all relevant.
- mrr@k: reciprocal rank of the first relevant within k (BEIR's and sentence-transformers').
- accuracy@k: 1 when any relevant item is in the top k (hit rate).

A judgement counts as relevant when its grade is above 0, as pytrec_eval's default.

Answers are scored as the official SQuAD 2.0 script does (`exact`, `f1`), and abstention as a
ranking of questions by a score (`auroc`) and as a curve of answered against wrong answers over
thresholds of that score (`answer_curve`).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

NDCG_AT = (10,)
MRR_AT = (10,)
MAP_AT = (100,)
RECALL_AT = (1, 5, 10, 100)
ACCURACY_AT = (1, 3, 5, 10)

# The order reports list them in.
METRIC_NAMES: tuple[str, ...] = (
    *(f"ndcg@{k}" for k in NDCG_AT),
    *(f"mrr@{k}" for k in MRR_AT),
    *(f"map@{k}" for k in MAP_AT),
    *(f"recall@{k}" for k in RECALL_AT),
    *(f"accuracy@{k}" for k in ACCURACY_AT),
)


def ndcg_at(ranked: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    dcg = sum(
        qrels.get(doc, 0) / math.log2(rank + 1)
        for rank, doc in enumerate(ranked[:k], start=1)
        if qrels.get(doc, 0) > 0
    )
    ideal = sorted((r for r in qrels.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(rank + 1) for rank, r in enumerate(ideal, start=1))
    return dcg / idcg if idcg > 0 else 0.0


def average_precision_at(ranked: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    relevant = sum(1 for r in qrels.values() if r > 0)
    if relevant == 0:
        return 0.0
    hits, total = 0, 0.0
    for rank, doc in enumerate(ranked[:k], start=1):
        if qrels.get(doc, 0) > 0:
            hits += 1
            total += hits / rank
    return total / relevant


def recall_at(ranked: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    relevant = sum(1 for r in qrels.values() if r > 0)
    if relevant == 0:
        return 0.0
    return sum(1 for doc in ranked[:k] if qrels.get(doc, 0) > 0) / relevant


def first_relevant_rank(ranked: Sequence[str], qrels: Mapping[str, int]) -> int | None:
    """1-based rank of the first relevant item, or None when none was retrieved."""
    for rank, doc in enumerate(ranked, start=1):
        if qrels.get(doc, 0) > 0:
            return rank
    return None


def reciprocal_rank_at(ranked: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    rank = first_relevant_rank(ranked[:k], qrels)
    return 1.0 / rank if rank is not None else 0.0


def accuracy_at(ranked: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    return 1.0 if first_relevant_rank(ranked[:k], qrels) is not None else 0.0


def dedupe(ranked: Iterable[str]) -> list[str]:
    """Keep each id's first (best) position: a run lists an item once, as trec_eval expects."""
    return list(dict.fromkeys(ranked))


def query_metrics(ranked: Sequence[str], qrels: Mapping[str, int]) -> dict[str, float]:
    """Every metric of METRIC_NAMES for one query's ranking (best first)."""
    ranked = dedupe(ranked)
    scores: dict[str, float] = {}
    for k in NDCG_AT:
        scores[f"ndcg@{k}"] = ndcg_at(ranked, qrels, k)
    for k in MRR_AT:
        scores[f"mrr@{k}"] = reciprocal_rank_at(ranked, qrels, k)
    for k in MAP_AT:
        scores[f"map@{k}"] = average_precision_at(ranked, qrels, k)
    for k in RECALL_AT:
        scores[f"recall@{k}"] = recall_at(ranked, qrels, k)
    for k in ACCURACY_AT:
        scores[f"accuracy@{k}"] = accuracy_at(ranked, qrels, k)
    return scores


def mean_metrics(per_query: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Macro average over queries, as BEIR reports; empty when there are no queries."""
    rows = list(per_query)
    if not rows:
        return {}
    return {name: sum(row[name] for row in rows) / len(rows) for name in rows[0]}


def evaluate_run(
    run: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]]
) -> dict[str, float]:
    """Mean metrics over the queries that have a relevant judgement (as BEIR/pytrec_eval)."""
    return mean_metrics(
        query_metrics(run.get(qid, []), judged)
        for qid, judged in qrels.items()
        if any(r > 0 for r in judged.values())
    )


# --- answers: the official SQuAD 2.0 evaluation script's definitions -------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """The official normalisation: lower-case, drop ASCII punctuation, drop the articles a/an/the,
    collapse whitespace, so that answers differing only in these count as the same."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def answer_f1(prediction: str, gold: str) -> float:
    """Token-overlap F1 of the normalised texts; an empty side scores 1 only against another."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)
    same = sum((Counter(predicted) & Counter(expected)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(expected)
    return 2 * precision * recall / (precision + recall)


def answer_scores(prediction: str | None, golds: Sequence[str]) -> tuple[float, float]:
    """(exact, f1) against the best-matching gold answer, as the official script.

    An abstention (None) is the empty prediction. Gold answers that normalise to nothing are
    dropped; with none left (an unanswerable question) the only gold answer is the empty one, so
    an abstention scores 1 there and any answer 0.
    """
    predicted = prediction or ""
    expected = [g for g in golds if normalize_answer(g)] or [""]
    return (
        max(exact_match(predicted, g) for g in expected),
        max(answer_f1(predicted, g) for g in expected),
    )


# --- answerability: how well a score separates answerable from unanswerable questions --------


def average_ranks(values: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """1-based ranks in ascending order, tied values sharing their average rank."""
    array = np.asarray(values, dtype=np.float64)
    order = np.argsort(array, kind="stable")
    _, first, counts = np.unique(array[order], return_index=True, return_counts=True)
    ranks = np.empty(len(array), dtype=np.float64)
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)
    return ranks


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """Area under the ROC curve: the chance that a random positive outscores a random negative,
    ties counting half (Mann-Whitney U from average ranks). None without both classes."""
    labels = np.asarray(positive, dtype=bool)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = average_ranks(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# Past this many distinct scores the curve is drawn at quantiles of them instead.
CURVE_POINTS = 50


def curve_thresholds(scores: Sequence[float], points: int = CURVE_POINTS) -> list[float]:
    """Every distinct finite score, ascending, or `points` + 1 quantiles of them (each an actual
    score) when there are more: enough to draw the curve, few enough to keep the report small."""
    finite = np.asarray([s for s in scores if math.isfinite(s)], dtype=np.float64)
    distinct = np.unique(finite)
    if len(distinct) > points + 1:
        distinct = np.unique(np.quantile(finite, np.linspace(0, 1, points + 1), method="lower"))
    return [float(t) for t in distinct]


def answer_curve(
    scores: Sequence[float],
    answerable: Sequence[bool],
    wrong: Sequence[bool],
    points: int = CURVE_POINTS,
) -> list[dict[str, float]]:
    """For each threshold t (see `curve_thresholds`), if every question scoring t or more were
    answered and the rest abstained on: `answered`, the share of answerable questions answered,
    and `wrong`, the share of answered questions whose answer is wrong. Ascending thresholds,
    so `answered` falls along the list. A score of -inf (none known) is never answered.
    """
    values = np.asarray(scores, dtype=np.float64)
    is_answerable = np.asarray(answerable, dtype=bool)
    is_wrong = np.asarray(wrong, dtype=bool)
    total = max(int(is_answerable.sum()), 1)
    curve = []
    for t in curve_thresholds(scores, points):
        answered = values >= t  # never empty: t is one of the scores
        curve.append(
            {
                "threshold": round(t, 6),
                "answered": round(int((answered & is_answerable).sum()) / total, 6),
                "wrong": round(int((answered & is_wrong).sum()) / int(answered.sum()), 6),
            }
        )
    return curve
