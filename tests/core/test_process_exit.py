"""core.process_exit: a process that ran collectives ends with its own status, never with the abort of Python's
teardown, and still runs what Python runs at exit (atexit handlers, non-daemon threads, buffered output)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("process_exit_worker.py")


def _python(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    script = tmp_path / "program.py"
    script.write_text(textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


PROGRAM = """
    import atexit, sys, threading, time
    from pathlib import Path
    from core.process_exit import run_and_end

    out = Path(sys.argv[1])

    def main():
        atexit.register(lambda: (out / "atexit").write_text("ran"))
        # A non-daemon thread still working when main returns: Python waits for it before the atexit handlers.
        threading.Thread(target=lambda: (time.sleep(0.3), (out / "thread").write_text("done"))).start()
        sys.stdout.write("buffered, no newline")
        {ending}

    run_and_end(main, collectives_ran={collectives})
"""


@pytest.mark.parametrize("collectives", [True, False])
@pytest.mark.parametrize("ending,status,stderr", [
    ("return 3", 3, ""),
    ("return None", 0, ""),
    ("raise SystemExit('--rows must be positive')", 1, "--rows must be positive"),
    ("raise SystemExit(143)", 143, ""),
    ("raise RuntimeError('the data is gone')", 1, "RuntimeError: the data is gone"),
])
def test_the_status_and_the_exit_steps_are_those_of_sys_exit(tmp_path, collectives, ending, status, stderr):
    done = _python(tmp_path, PROGRAM.format(ending=ending, collectives=collectives))
    assert done.returncode == status, done.stderr
    assert stderr in done.stderr
    if "RuntimeError" in stderr:
        assert "Traceback" in done.stderr
    assert done.stdout == "buffered, no newline"
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").read_text() == "done"


def test_only_a_process_that_ran_collectives_skips_the_teardown(tmp_path):
    """Without a process group the interpreter finalizes as usual (a finalizer runs); with one it does not."""
    body = """
        import sys
        from core.process_exit import end_process

        class Finalized:
            def __del__(self):
                print("finalized")

        kept = Finalized()
        end_process(0, collectives_ran={collectives})
    """
    assert "finalized" in _python(tmp_path, body.format(collectives=False)).stdout
    assert "finalized" not in _python(tmp_path, body.format(collectives=True)).stdout


def test_init_distributed_marks_the_process(tmp_path):
    done = _python(tmp_path, """
        import core.process_exit as process_exit
        from core.distributed import init_distributed
        assert not process_exit._process_group_created
        init_distributed("cpu")
        assert process_exit._process_group_created
    """)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_ranks_that_end_right_after_their_collectives_exit_cleanly(tmp_path):
    """Each rank ends the moment its last all_gather returns, while gloo's threads still hold its tensors. Ended by
    sys.exit instead (`process_exit_worker.py plain`), half of such launches of 4 ranks abort on this machine
    (SIGABRT, "terminate called without an active exception"); five clean launches in a row are the check."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for launch in range(5):
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4",
                               str(WORKER)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and "terminate called" not in done.stderr, \
            f"launch {launch}: exit {done.returncode}\n{done.stderr[-3000:]}"
