"""Questions that arrive together are encoded together.

On a CPU one model call for sixteen short questions costs far less than sixteen calls, and a
model runs one call at a time anyway. So while a call runs, the questions of other threads
queue, and when it ends the oldest of them takes the whole queue into the next call. A lone
question never waits for company: there is no timer, only the queue that forms behind a running
call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from embeddings.base import Vectors

# Questions taken into one call at most: a bigger batch only delays its first answer.
MAX_BATCH = 64


class QueueTimeoutError(TimeoutError):
    """A question waited longer than its budget for the model and was withdrawn, not encoded."""


@dataclass(eq=False)  # identity: a request is found in the queue as itself
class _Request:
    texts: list[str]
    vectors: Vectors | None = None
    error: BaseException | None = None
    lead: bool = False  # its caller is to encode the next batch
    woken: threading.Event = field(default_factory=threading.Event)  # encoded, or made to lead


class QueryBatcher:
    """Wraps an encode function so concurrent callers share model calls.

    One caller at a time leads: it encodes the queue's oldest requests, its own first, in one
    call. When the call ends, it wakes the callers whose texts it encoded and hands the lead to
    the oldest caller still queued, so the model is never idle while questions wait.

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
        self._lock = threading.Lock()  # guards the queue, `_leading` and each request's `lead`
        self._leading = False  # a caller leads: holds, or is about to take, the model
        # For metrics (texts / calls is the mean batch): written by the leader only.
        self.calls = 0  # model calls made
        self.texts = 0  # texts they encoded
        self.busy_seconds = 0.0  # time spent in them

    def encode(self, texts: Sequence[str]) -> Vectors:
        request = _Request(list(texts))
        deadline = None if self._max_wait is None else time.monotonic() + self._max_wait
        with self._lock:
            self._queue.append(request)
            if not self._leading:  # then the queue was empty: this request is its oldest
                self._leading = request.lead = True
        if not request.lead:
            self._wait(request, deadline)
        if request.lead:
            self._run(self._take())
        if request.error is not None:
            raise request.error
        assert request.vectors is not None
        return request.vectors

    def _wait(self, request: _Request, deadline: float | None) -> None:
        """Until the request is done or its caller is to lead; withdrawn past the deadline."""
        timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        if request.woken.wait(timeout):
            return
        with self._lock:
            if not request.lead and request in self._queue:
                self._queue.remove(request)
                raise QueueTimeoutError(f"waited over {self._max_wait} s for the model")
        # Being encoded, or just made to lead: the wake-up is on its way.
        request.woken.wait()

    def _take(self) -> list[_Request]:
        """The oldest queued requests, up to `max_batch` texts (always at least one request)."""
        with self._lock:
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
        """Encode `batch` (the leader's request first), then wake its callers and pass the lead
        to the oldest queued request."""
        texts = [text for request in batch for text in request.texts]
        started = time.perf_counter()
        try:
            vectors = self._encode(texts)
        except BaseException as exc:  # every waiting caller gets the error, not a hang
            for request in batch:
                request.error = exc
        else:
            offsets = np.cumsum([0] + [len(r.texts) for r in batch])
            for request, start, end in zip(batch, offsets[:-1], offsets[1:], strict=True):
                request.vectors = vectors[start:end]
        self.calls += 1
        self.texts += len(texts)
        self.busy_seconds += time.perf_counter() - started
        with self._lock:
            successor = self._queue[0] if self._queue else None
            if successor is not None:
                successor.lead = True
            else:
                self._leading = False
        if successor is not None:  # first: the model is idle until it runs
            successor.woken.set()
        for request in batch[1:]:  # the first is the leader's own, and this is its thread
            request.woken.set()
