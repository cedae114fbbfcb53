"""Items of an iterable produced on a background thread ahead of their consumer: the loader reads the next fill
while the training step runs on this one's batches."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import torch

_END = object()


def prefetched(items: Iterable[Any], depth: int = 1) -> Iterator[Any]:
    """The items of `items`, produced on a background thread up to `depth` ahead of the consumer. An exception in
    the producer is raised here; closing this generator early stops the producer."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    # The CUDA device is per thread: pinning memory on the producer must not touch (and create a context on) GPU 0.
    cuda_device = torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else None

    def put(entry: tuple[Any, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            if cuda_device is not None:
                torch.cuda.set_device(cuda_device)
            for item in items:
                if not put((item, None)):
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            put((_END, exc))
            return
        put((_END, None))

    producer = threading.Thread(target=produce, name="recap-loader-prefetch", daemon=True)
    producer.start()
    try:
        while True:
            item, error = slots.get()
            if item is _END:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        producer.join()
