from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from embeddings import Encoder, Vectors
from embeddings.batching import QueryBatcher, QueueTimeoutError, _Request


def _wait_for_queue(batcher: QueryBatcher, length: int) -> None:
    deadline = time.monotonic() + 30
    while len(batcher._queue) < length:
        assert time.monotonic() < deadline, f"fewer than {length} callers queued"
        time.sleep(0.001)


def test_a_lone_call_is_encoded_at_once(encoder: Encoder) -> None:
    batcher = QueryBatcher(encoder.encode_queries)
    vectors = batcher.encode(["What is GRETA?", "Who won?"])
    np.testing.assert_allclose(vectors, encoder.encode_queries(["What is GRETA?", "Who won?"]),
                               atol=1e-5)  # fmt: skip
    assert batcher.calls == 1


def test_callers_that_queue_behind_a_running_call_share_the_next(encoder: Encoder) -> None:
    questions = [f"Question number {i} about trafficking?" for i in range(12)]
    expected = encoder.encode_queries(questions)
    started, release = threading.Event(), threading.Event()
    batches: list[int] = []

    def encode(texts: Sequence[str]) -> Vectors:
        batches.append(len(texts))
        if len(batches) == 1:
            started.set()
            release.wait(timeout=30)  # hold the model until everyone else has queued
        return encoder.encode_queries(texts)

    batcher = QueryBatcher(encode)
    with ThreadPoolExecutor(len(questions)) as pool:
        first = pool.submit(batcher.encode, questions[:1])
        assert started.wait(timeout=30)
        rest = [pool.submit(batcher.encode, [q]) for q in questions[1:]]
        _wait_for_queue(batcher, len(questions) - 1)
        release.set()
        results = [first.result(), *(f.result() for f in rest)]
    for vectors, want in zip(results, expected, strict=True):
        np.testing.assert_allclose(vectors[0], want, atol=1e-5)
    assert batches == [1, len(questions) - 1]


def test_batches_are_capped_and_taken_oldest_first(encoder: Encoder) -> None:
    batcher = QueryBatcher(encoder.encode_queries, max_batch=4)
    queued = [_Request(["a", "b", "c"]), _Request(["d"]), _Request(["e", "f"])]
    batcher._queue.extend(queued)
    assert batcher._take() == queued[:2]
    assert batcher._take() == queued[2:]
    # A request bigger than the cap still goes, alone.
    batcher._queue.append(big := _Request(list("abcdefgh")))
    assert batcher._take() == [big]


def test_an_error_reaches_the_caller_and_the_batcher_goes_on(encoder: Encoder) -> None:
    def encode(texts: Sequence[str]) -> Vectors:
        if "boom" in texts:
            raise RuntimeError("model failed")
        return encoder.encode_queries(texts)

    batcher = QueryBatcher(encode)
    with pytest.raises(RuntimeError, match="model failed"):
        batcher.encode(["boom"])
    assert batcher.encode(["What is GRETA?"]).shape == (1, encoder.dimension)


def test_max_batch_must_be_positive(encoder: Encoder) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        QueryBatcher(encoder.encode_queries, max_batch=0)


def test_a_caller_that_waits_past_its_budget_is_withdrawn(encoder: Encoder) -> None:
    started, release = threading.Event(), threading.Event()

    def encode(texts: Sequence[str]) -> Vectors:
        if "slow" in texts:
            started.set()
            release.wait(timeout=30)  # hold the model
        return encoder.encode_queries(texts)

    batcher = QueryBatcher(encode, max_wait=0.2)
    with ThreadPoolExecutor(2) as pool:
        holder = pool.submit(batcher.encode, ["slow"])
        assert started.wait(timeout=30)
        with pytest.raises(QueueTimeoutError, match=r"waited over 0\.2 s"):
            batcher.encode(["What is GRETA?"])
        assert batcher._queue == []  # withdrawn: never encoded later
        release.set()
        assert holder.result().shape == (1, encoder.dimension)
    assert batcher.calls == 1
    assert batcher.encode(["What is GRETA?"]).shape == (1, encoder.dimension)


def test_callers_of_a_finished_batch_return_while_the_next_one_runs(encoder: Encoder) -> None:
    """They do not wait for the model again: the lead passes to the oldest queued caller."""
    holds = {"first": threading.Event(), "third": threading.Event()}
    running: dict[str, threading.Event] = {"first": threading.Event(), "third": threading.Event()}

    def encode(texts: Sequence[str]) -> Vectors:
        for name in holds:
            if name in texts:
                running[name].set()
                holds[name].wait(timeout=30)
        return encoder.encode_queries(texts)

    batcher = QueryBatcher(encode, max_batch=2)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.encode, ["first"])
        assert running["first"].wait(timeout=30)
        second = [pool.submit(batcher.encode, [q]) for q in ("second a", "second b")]
        _wait_for_queue(batcher, 2)
        third = pool.submit(batcher.encode, ["third"])
        _wait_for_queue(batcher, 3)
        holds["first"].set()
        assert running["third"].wait(timeout=30)  # the third batch holds the model
        for future in [first, *second]:
            assert future.result(timeout=5).shape == (1, encoder.dimension)
        assert not third.done()
        holds["third"].set()
        assert third.result(timeout=30).shape == (1, encoder.dimension)
    assert batcher.calls == 3
