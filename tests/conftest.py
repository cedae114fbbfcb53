"""Settings for the whole suite.

`make test` runs the suite in TEST_WORKERS pytest-xdist worker processes (2 by default, one per core of the CI
machine). Each worker computes with one thread, and so does every process it launches (torchrun ranks, the CLI, the
benchmarks) unless the test sets OMP_NUM_THREADS itself: two workers with a thread per core each would ask for
twice the cores there are, and PyTorch's threads spin while they wait for one another, so every step would take
several times as long (a test of 300 Adam steps took 14 s instead of 2 s on a busy 2-core machine).
A run without workers (`pytest tests/...`, `make test TEST_WORKERS=0`) keeps PyTorch's default.
"""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    # torch reads OMP_NUM_THREADS when it is first imported; this holds if a plugin imported it before.
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
