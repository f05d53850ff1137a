"""Questions that arrive together are encoded together.

On a CPU one model call for sixteen short questions costs far less than sixteen calls, and a
model runs one call at a time anyway. So while a call runs, the questions of other threads
queue; the next thread to get the model takes the whole queue in one call. A lone question
never waits for company: there is no timer, only the queue that forms behind a running call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from embeddings.encoder import Vectors

# Questions taken into one call at most: a bigger batch only delays its first answer.
MAX_BATCH = 64


class QueueTimeoutError(TimeoutError):
    """A question waited longer than its budget for the model and was withdrawn, not encoded."""


@dataclass(eq=False)  # identity: a request is found in the queue as itself
class _Request:
    texts: list[str]
    vectors: Vectors | None = None
    error: BaseException | None = None
    done: bool = False


class QueryBatcher:
    """Wraps an encode function so concurrent callers share model calls.

    `max_wait` (seconds) bounds how long a call waits for the model before it gives up with
    `QueueTimeoutError`; None waits as long as it takes. Once a call's texts are being encoded,
    it waits for that call to end.
    """

    def __init__(
        self,
        encode: Callable[[Sequence[str]], Vectors],
        max_batch: int = MAX_BATCH,
        max_wait: float | None = None,
    ):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if max_wait is not None and max_wait <= 0:
            raise ValueError("max_wait must be positive")
        self._encode = encode
        self._max_batch = max_batch
        self._max_wait = max_wait
        self._queue: list[_Request] = []
        self._queue_lock = threading.Lock()
        self._model_lock = threading.Lock()
        self.calls = 0  # model calls made, for tests and metrics

    def encode(self, texts: Sequence[str]) -> Vectors:
        request = _Request(list(texts))
        deadline = None if self._max_wait is None else time.monotonic() + self._max_wait
        with self._queue_lock:
            self._queue.append(request)
        while True:
            self._acquire_model(request, deadline)
            try:
                # Not done means still queued: a batch finishes before the lock is let go.
                if not request.done:
                    self._run(self._take())
                if request.done:
                    break
            finally:
                self._model_lock.release()
        if request.error is not None:
            raise request.error
        assert request.vectors is not None
        return request.vectors

    def _acquire_model(self, request: _Request, deadline: float | None) -> None:
        timeout = -1 if deadline is None else max(deadline - time.monotonic(), 0.0)
        if self._model_lock.acquire(timeout=timeout):
            return
        with self._queue_lock:
            if request in self._queue:
                self._queue.remove(request)
                raise QueueTimeoutError(f"waited over {self._max_wait} s for the model")
        # A running call has taken it: the result is there when that call lets the model go.
        self._model_lock.acquire()

    def _take(self) -> list[_Request]:
        """The oldest queued requests, up to `max_batch` texts (always at least one request)."""
        with self._queue_lock:
            batch: list[_Request] = []
            size = 0
            while self._queue and (
                not batch or size + len(self._queue[0].texts) <= self._max_batch
            ):
                request = self._queue.pop(0)
                batch.append(request)
                size += len(request.texts)
            return batch

    def _run(self, batch: list[_Request]) -> None:
        texts = [text for request in batch for text in request.texts]
        try:
            self.calls += 1
            vectors = self._encode(texts)
        except BaseException as exc:  # every waiting caller gets the error, not a hang
            for request in batch:
                request.error, request.done = exc, True
            return
        offsets = np.cumsum([0] + [len(r.texts) for r in batch])
        for request, start, end in zip(batch, offsets[:-1], offsets[1:], strict=True):
            request.vectors, request.done = vectors[start:end], True
