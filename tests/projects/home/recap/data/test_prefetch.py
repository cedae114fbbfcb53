"""The loader's read-ahead thread: items in order, the producer's error raised, the producer stopped on close."""

from __future__ import annotations

import threading

import pytest

from projects.home.recap.data.prefetch import prefetched


def test_prefetched_keeps_order_raises_the_producers_error_and_stops_when_closed():
    assert list(prefetched(iter(range(50)), depth=2)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("corrupt row group")

    items = prefetched(failing())
    assert next(items) == 1
    with pytest.raises(ValueError, match="corrupt row group"):
        next(items)

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    before = set(threading.enumerate())
    items = prefetched(endless())
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    (producer,) = [t for t in threading.enumerate() if t not in before and t.name == "recap-loader-prefetch"]
    items.close()  # the producer thread ends instead of reading on
    assert not producer.is_alive()
    assert len(produced) <= 3 + 2  # at most the queued item and the one being put
