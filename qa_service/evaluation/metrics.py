"""Ranking metrics with the definitions of BEIR (pytrec_eval) and sentence-transformers.

- ndcg@k: graded gain `rel`, discount log2(rank + 1), ideal DCG from the judged relevances.
- map@k: trec_eval's map_cut: precision at each relevant rank up to k, over all relevant.
- recall@k: relevant in the top k over all relevant.
- mrr@k: reciprocal rank of the first relevant within k (BEIR's and sentence-transformers').
- accuracy@k: 1 when any relevant item is in the top k (hit rate).

A judgement counts as relevant when its grade is above 0, as pytrec_eval's default.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

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
