"""Processes end with their parent: a DataLoader worker of a killed training process, and the torchrun workers of
a killed launcher (tested with `recap train --nproc-per-node 2` in tests/projects/home/recap/test_preemption.py)."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))
from processes import alive, children  # noqa: E402


def test_a_dataloader_worker_dies_with_its_killed_parent(tmp_path):
    script = textwrap.dedent("""
        import sys, time
        from torch.utils.data import DataLoader, IterableDataset
        from core.parent_watch import exit_with_parent

        class Forever(IterableDataset):
            def __iter__(self):
                while True:  # items larger than a pipe holds: a worker ends up blocked writing one
                    yield b"x" * 20_000_000

        iterator = iter(DataLoader(Forever(), batch_size=None, num_workers=1, worker_init_fn=exit_with_parent))
        next(iterator)
        print("ready", flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    assert parent.stdout.readline().strip() == "ready"
    workers = children(parent.pid)
    assert workers, "the DataLoader started no worker"
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=30)
    deadline = time.monotonic() + 20
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(w) for w in workers), f"workers {workers} outlived their parent"
