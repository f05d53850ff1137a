"""A bounded map that keeps the most recently used entries (thread-safe): what question after
question needs again — its words' vectors, its terms' BM25 bounds on every shard, the titles of
the documents it cites — without asking the model or a shard each time."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Recent(Generic[K, V]):
    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a cache holds at least one entry")
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, keys: Iterable[K]) -> dict[K, V]:
        """Those of `keys` held, now the most recently used."""
        with self._lock:
            found = {k: self._entries[k] for k in keys if k in self._entries}
            for key in found:
                self._entries.move_to_end(key)
        return found

    def put(self, items: Iterable[tuple[K, V]]) -> None:
        with self._lock:
            self._entries.update(items)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
