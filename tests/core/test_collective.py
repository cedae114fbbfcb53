"""core/collective.py without a process group: one rank holds every row, so each collective hands back what it was
given (with two or three gloo ranks they are exercised by test_sharded_metrics.py's torchrun run)."""

import numpy as np

from core.collective import Collective


def test_without_a_process_group_every_collective_is_the_identity():
    comm = Collective()
    assert (comm.active, comm.world, comm.rank) == (False, 1, 0)
    summed = comm.sum([1, 2.5])
    assert summed.dtype == np.float64 and summed.tolist() == [1.0, 2.5]
    assert comm.max(np.array([3, -1])).tolist() == [3.0, -1.0]
    parts = comm.gather(np.arange(6).reshape(3, 2))
    assert len(parts) == 1 and parts[0].tolist() == [[0, 1], [2, 3], [4, 5]]
    ids, values = comm.exchange(np.zeros(3, dtype=np.int64), [np.array([5, 6, 7]), np.ones((3, 2))])
    assert ids.tolist() == [5, 6, 7] and values.tolist() == [[1.0, 1.0]] * 3
