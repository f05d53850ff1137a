"""BM25 over shards equals one `LexicalIndex` over all their passages: for contiguous,
interleaved, random, hashed and partly empty partitions, questions with terms in one shard only,
in no shard, of stop words only and repeated; the statistics' sum; saving and damaged files."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import bm25s
import numpy as np
import pytest

from qa_service.errors import IndexCorruptError
from qa_service.index.lexical import Analyzer, LexicalIndex
from qa_service.index.shard_lexical import (
    COUNTS_FILE,
    K1,
    VOCABULARY_FILE,
    B,
    QueryPlan,
    ShardedLexical,
    TermCounts,
    TermStatistics,
    plan_query,
    unknown_weight,
)

TEXTS = [
    "Rivers flood the valley every spring after the snow melts.",
    "The river carries water from the mountains to the sea.",
    "Water, water, everywhere, nor any drop to drink.",
    "The harbour of Valletta shelters fishing boats from winter storms.",
    "Fishing boats leave the harbour before dawn and return with the catch at noon.",
    "Glaciers carve deep valleys over thousands of years.",
    "Bees pollinate almond orchards in California every February.",
    "Almond milk needs a lot of water to produce.",
    "Article 7 b of the treaty was signed in 2024.",
    "The treaty sets out how member states share river water in a drought.",
    "It is what it is, and that is that.",  # stop words only: a passage of length 0
    "A zeppelin drifted over the harbour in 1929.",  # the only "zeppelin"
    "Snow, snow and more snow: the pass stayed closed until May.",
    "Mountain passes close when avalanches threaten the road.",
    "The court held that the contract was void for mistake.",
    "A contract needs an offer, an acceptance and consideration.",
    "Consideration must move from the promisee, the court said.",
    "Storms over the sea delayed the ferry by three hours.",
    "The ferry crosses the strait twice a day in summer and once in winter.",
    "Honey bees communicate the direction of flowers by dancing.",
    "Flowers open in the morning and close at dusk.",
    "The orchard flooded when the river burst its banks in spring.",
    "Drought shrank the reservoir to a tenth of its size.",
    "Reservoir levels recovered after the autumn rains.",
    "Rain, rain, go away, come again another day.",
    "The valley floor is fertile because of the silt the floods leave behind.",
    "Silt clogs the harbour, so dredgers work every summer.",
    "Dredging the strait costs the port authority millions each year.",
    "The port authority raised harbour fees by 7 percent.",
    "Fees for late filing are set out in article 12 of the regulation.",
    "The regulation applies to every member state from 2025.",
    "Member states may opt out of article 12 under certain conditions.",
    "Under those conditions the court may annul the decision.",
    "Glacier melt feeds the river in late summer.",
    "Late frost damaged the almond blossom and the bees went hungry.",
    "Hungry gulls follow the fishing boats into the harbour.",
    "The lighthouse guided ships past the rocks for two hundred years.",
    "Rocks, rocks, rocks: the whole coast is rocks and the lighthouse is the only light.",
    "The keeper of the lighthouse kept a log of every ship, storm and wreck.",
    "A wreck off the coast is now a reef full of fish.",
    "Fish and chips by the harbour, a summer evening, gulls overhead.",
    "Treaty talks stalled over fishing quotas in the strait.",
]
ZEPPELIN = 11
QUESTIONS = [
    "When do rivers flood the valley?",
    "river water",
    "When did the zeppelin fly over the harbour?",  # "zeppelin" is in one passage, so one shard
    "zeppelin",
    "quantum chromodynamics of river water",  # two words in no shard: the bound counts them
    "zyzzyva",  # no known term at all: zero scores, yet a bound
    "What is it that they have been doing?",  # stop words only
    "",
    "river river rivers flood flooding floods",  # repeated words and their inflections
    "water river",  # the same terms as "river water" in the other order
    "What does article 12 of the regulation say about member states?",
    "fishing boats harbour fees storms ferry strait lighthouse rocks wreck gulls",
    "Did the court hold the contract void for want of consideration?",
    "snow snow avalanche pass road closed",
    "7",
]

ANALYZER = Analyzer()
TERMS = [ANALYZER.terms(text) for text in TEXTS]
ALL_TERMS = {term for passage in TERMS for term in passage}


def _hash_shard(passage: int, shards: int) -> int:
    digest = hashlib.sha256(f"document-{passage}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards


def _partitions() -> dict[str, list[list[int]]]:
    """Passage numbers of each shard, in shard order."""
    n = len(TEXTS)
    rng = random.Random(7)
    random_assignment = [rng.randrange(5) for _ in range(n)]
    return {
        "one": [list(range(n))],
        "two contiguous": [list(range(20)), list(range(20, n))],
        "three interleaved": [list(range(k, n, 3)) for k in range(3)],
        "five random": [[i for i in range(n) if random_assignment[i] == k] for k in range(5)],
        "five hashed": [[i for i in range(n) if _hash_shard(i, 5) == k] for k in range(5)],
        "three, one empty": [list(range(15)), [], list(range(15, n))],
        "empty first and last": [[], list(range(0, n, 2)), list(range(1, n, 2)), []],
    }


PARTITIONS = _partitions()


def _sharded(partition: list[list[int]]) -> tuple[ShardedLexical, LexicalIndex]:
    """The shards and the single index over the same passages in the same order."""
    shards = [TermCounts.from_terms([TERMS[i] for i in part]) for part in partition]
    single = LexicalIndex.from_terms([TERMS[i] for part in partition for i in part])
    return ShardedLexical(shards), single


def test_the_partitions_cover_every_passage_once() -> None:
    for name, partition in PARTITIONS.items():
        assert sorted(i for part in partition for i in part) == list(range(len(TEXTS))), name
    assert all(PARTITIONS["five random"]) and all(PARTITIONS["five hashed"])


@pytest.mark.parametrize("name", list(PARTITIONS))
def test_shard_scores_equal_the_single_index(name: str) -> None:
    sharded, single = _sharded(PARTITIONS[name])
    assert sharded.size == single.size == len(TEXTS)
    for question in QUESTIONS:
        expected = single.scores(question)
        got = sharded.scores(question)
        assert got.dtype == np.float32 and got.shape == expected.shape, question
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=question)
        # The bound and the known terms, as `query_ids` gives them.
        ids, bound = single.query_ids(question)
        plan = sharded.plan(question)
        np.testing.assert_allclose(plan.bound, bound, rtol=1e-12, err_msg=question)
        known = [t for t in dict.fromkeys(ANALYZER.terms(question)) if t in ALL_TERMS]
        assert list(plan.terms) == known and len(ids) == len(known), question


def test_shard_scores_are_bit_identical_to_the_single_index() -> None:
    """Measured: the worst difference is exactly 0 on every partition and question, since each
    number is computed as bm25s computes it (idf via math.log rounded to float32, the length
    normalisation in float64, float32 sums in the question's term order). If this test alone
    fails, bm25s or NumPy changed a rounding step; the test above says whether it matters."""
    for partition in PARTITIONS.values():
        sharded, single = _sharded(partition)
        for question in QUESTIONS:
            np.testing.assert_array_equal(sharded.scores(question), single.scores(question))
            assert sharded.plan(question).bound == single.query_ids(question)[1]


def test_shard_scores_are_the_single_index_in_partition_order() -> None:
    sharded, single = _sharded(PARTITIONS["five hashed"])
    parts = sharded.shard_scores("fishing boats harbour")
    assert [len(p) for p in parts] == [len(part) for part in PARTITIONS["five hashed"]]
    np.testing.assert_array_equal(np.concatenate(parts), single.scores("fishing boats harbour"))


def test_a_term_in_one_shard_only_sets_the_bound_from_that_shard() -> None:
    sharded, single = _sharded(PARTITIONS["five random"])
    holders = [i for i, shard in enumerate(sharded.shards) if "zeppelin" in shard.vocabulary]
    assert len(holders) == 1
    maxima = [shard.term_maxima(["zeppelin"], sharded.stats) for shard in sharded.shards]
    assert [bool(m) for m in maxima] == [i in holders for i in range(len(sharded.shards))]
    plan = sharded.plan("zeppelin")
    assert plan == QueryPlan(("zeppelin",), maxima[holders[0]]["zeppelin"])
    # The one passage holding it holds its best score: it scores 1, every other passage 0.
    scores = sharded.scores("zeppelin")
    position = [i for part in PARTITIONS["five random"] for i in part].index(ZEPPELIN)
    assert scores[position] == pytest.approx(1.0, abs=1e-6)
    assert np.count_nonzero(scores) == 1
    np.testing.assert_array_equal(scores, single.scores("zeppelin"))


def test_an_unknown_term_counts_at_the_global_highest_weight() -> None:
    sharded, single = _sharded(PARTITIONS["three interleaved"])
    highest = [shard.highest_weight(sharded.stats) for shard in sharded.shards]
    assert all(h is not None and h > 0 for h in highest)
    assert sharded.unknown_weight == max(h for h in highest if h is not None)
    # It is the largest bound of any single known term, over all shards.
    assert sharded.unknown_weight == pytest.approx(max(sharded.plan(t).bound for t in ALL_TERMS))
    assert sharded.plan("zyzzyva") == QueryPlan((), sharded.unknown_weight)
    assert sharded.plan("zyzzyva").bound == single.query_ids("zyzzyva")[1]
    assert not sharded.scores("zyzzyva").any()
    with_unknown = sharded.plan("quantum chromodynamics river")
    assert with_unknown.terms == ("river",)
    assert with_unknown.bound == pytest.approx(
        sharded.plan("river").bound + 2 * sharded.unknown_weight
    )


def test_stop_words_and_repeated_words() -> None:
    sharded, _ = _sharded(PARTITIONS["two contiguous"])
    for question in ["What is it that they have been doing?", "", "?!"]:
        assert sharded.plan(question) == QueryPlan((), 0.0)
        scores = sharded.scores(question)
        assert scores.shape == (len(TEXTS),) and not scores.any()
    # Repeated words and their inflections are one term, counted once.
    assert sharded.plan("river river rivers flood flooding floods") == sharded.plan("river flood")
    np.testing.assert_array_equal(
        sharded.scores("river river rivers flood flooding floods"), sharded.scores("river flood")
    )


def test_an_empty_shard() -> None:
    empty = TermCounts.from_terms([])
    assert empty.size == 0 and empty.vocabulary == {}
    assert empty.stats() == TermStatistics(0, 0, {})
    whole = TermCounts.from_terms(TERMS).stats()
    assert empty.highest_weight(whole) is None
    assert empty.term_maxima(["river"], whole) == {}
    assert empty.scores(QueryPlan(("river",), 1.0), whole).shape == (0,)
    # Shards without any passage, or with stop-word passages only, score nothing.
    for shards in [[], [empty], [empty, empty], [TermCounts.from_terms([[], []])]]:
        sharded = ShardedLexical(shards)
        assert sharded.unknown_weight == 1.0  # as `LexicalIndex` of an empty vocabulary
        assert sharded.plan("river") == QueryPlan((), 1.0)
        scores = sharded.scores("river")
        assert scores.dtype == np.float32 and not scores.any()
        assert scores.shape == (sum(s.size for s in shards),)


def test_combined_statistics_equal_those_of_the_whole() -> None:
    whole = TermCounts.from_terms(TERMS).stats()
    # Counted independently: passages, terms with repeats, passages holding each term.
    assert whole.passages == len(TEXTS)
    assert whole.total_length == sum(len(passage) for passage in TERMS)
    assert whole.document_frequency == Counter(t for passage in TERMS for t in set(passage))
    assert whole.average_length == whole.total_length / len(TEXTS)
    for name, partition in PARTITIONS.items():
        parts = [TermCounts.from_terms([TERMS[i] for i in part]).stats() for part in partition]
        assert TermStatistics.combine(parts) == whole, name
    assert TermStatistics.combine([]) == TermStatistics(0, 0, {})


def test_a_shard_scored_with_its_own_statistics_would_differ() -> None:
    """Why the statistics are global: per-shard bm25s scores are not comparable."""
    sharded, single = _sharded(PARTITIONS["two contiguous"])
    first = sharded.shards[0]
    local = first.stats()
    plan = plan_query(["river"], [first.term_maxima(["river"], local)], unknown_weight([None]))
    local_scores = first.scores(plan, local)
    expected = single.scores("river")[: first.size]
    assert local_scores.any()
    assert not np.allclose(local_scores, expected, rtol=1e-3)


def test_statistics_that_miss_the_shard_are_refused() -> None:
    shard = TermCounts.from_terms(TERMS[:10])
    other = TermCounts.from_terms(TERMS[10:]).stats()
    with pytest.raises(ValueError, match="lack term"):
        shard.raw_scores(["river"], other)
    whole = TermCounts.from_terms(TERMS).stats()
    too_few = TermStatistics(5, whole.total_length, whole.document_frequency)
    with pytest.raises(ValueError, match="do not include"):
        shard.highest_weight(too_few)


def test_weights_follow_the_statistics_given() -> None:
    # The cache is per statistics: a shard asked under other statistics recomputes.
    shard = TermCounts.from_terms(TERMS[:20])
    local = shard.stats()
    whole = TermStatistics.combine([local, TermCounts.from_terms(TERMS[20:]).stats()])
    at_local, at_whole = shard.highest_weight(local), shard.highest_weight(whole)
    assert at_local != at_whole
    assert shard.highest_weight(local) == at_local


def test_the_constants_are_bm25s_defaults_used_by_lexical_index() -> None:
    bm25 = bm25s.BM25()
    assert (bm25.k1, bm25.b, bm25.method, bm25.idf_method) == (K1, B, "lucene", "lucene")
    assert bm25.dtype == "float32"


def test_save_and_load_keep_the_scores(tmp_path: Path) -> None:
    sharded, _ = _sharded(PARTITIONS["three, one empty"])
    loaded = []
    for k, shard in enumerate(sharded.shards):
        shard.save(tmp_path / str(k))
        again = TermCounts.load(tmp_path / str(k))
        assert again.vocabulary == shard.vocabulary
        np.testing.assert_array_equal(again.lengths, shard.lengths)
        assert (again.counts != shard.counts).nnz == 0 and again.counts.shape == shard.counts.shape
        assert again.stats() == shard.stats()
        loaded.append(again)
    reloaded = ShardedLexical(loaded)
    for question in QUESTIONS:
        assert reloaded.plan(question) == sharded.plan(question)
        np.testing.assert_array_equal(reloaded.scores(question), sharded.scores(question))


def _truncate(folder: Path) -> None:
    path = folder / COUNTS_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble_vocabulary(folder: Path) -> None:
    (folder / VOCABULARY_FILE).write_text('{"format_version": 1, "vocab', "utf-8")


def _drop_a_term(folder: Path) -> None:
    path = folder / VOCABULARY_FILE
    meta = json.loads(path.read_text("utf-8"))
    meta["vocabulary"] = meta["vocabulary"][:-1]
    path.write_text(json.dumps(meta), "utf-8")


def _change_lengths(folder: Path) -> None:
    path = folder / COUNTS_FILE
    with np.load(path) as saved:
        arrays = dict(saved)
    arrays["lengths"] = arrays["lengths"] + 1
    np.savez(path, **arrays)


def _change_a_passage_number(folder: Path) -> None:
    path = folder / COUNTS_FILE
    with np.load(path) as saved:
        arrays = dict(saved)
    arrays["indices"][0] = 10**6
    np.savez(path, **arrays)


def _remove_counts(folder: Path) -> None:
    (folder / COUNTS_FILE).unlink()


def _remove_vocabulary(folder: Path) -> None:
    (folder / VOCABULARY_FILE).unlink()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_truncate, "cannot read"),
        (_garble_vocabulary, "cannot read"),
        (_drop_a_term, "terms but"),
        (_change_lengths, "lengths"),
        (_change_a_passage_number, "out of range"),
        (_remove_counts, "cannot read"),
        (_remove_vocabulary, "cannot read"),
    ],
)
def test_a_damaged_or_missing_file_raises(
    damage: Callable[[Path], None], message: str, tmp_path: Path
) -> None:
    TermCounts.from_terms(TERMS).save(tmp_path)
    damage(tmp_path)
    with pytest.raises(IndexCorruptError, match=message):
        TermCounts.load(tmp_path)
