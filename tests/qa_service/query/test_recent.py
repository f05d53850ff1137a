from __future__ import annotations

import pytest

from qa_service.query.recent import Recent


def test_the_most_recently_used_are_kept() -> None:
    cache: Recent[str, int] = Recent(size=2)
    cache.put([("djeca", 1), ("sud", 2), ("mreža", 3)])
    assert cache.get(["djeca", "sud", "mreža"]) == {"sud": 2, "mreža": 3}
    cache.get(["sud"])  # used: now kept over "mreža"
    cache.put([("škola", 4)])
    assert cache.get(["sud", "mreža", "škola"]) == {"sud": 2, "škola": 4}
    cache.put([("sud", 5)])  # replaced
    assert cache.get(["sud"]) == {"sud": 5}
    with pytest.raises(ValueError, match="at least one"):
        Recent(0)
