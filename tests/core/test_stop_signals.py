"""core/stop_signals.py: SIGTERM and SIGINT only recorded while training runs (a second SIGINT interrupts), the
handlers gone afterwards, the exit status of a stopped run, and the signal as every rank learns it. The loop's
checkpoint at the signalled step and its exact rerun: test_train_loop.py."""

import os
import signal
import threading
from pathlib import Path

import pytest
import torch

from core.distributed import DistributedContext
from core.stop_signals import TrainingStopped, signal_on_any_rank, stop_signals

ONE_RANK = DistributedContext(0, 1, 0, 1, torch.device("cpu"), "gloo")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_is_recorded_and_the_handlers_are_restored(signum):
    before = signal.getsignal(signum)
    with stop_signals() as requested:
        assert signal_on_any_rank(requested, ONE_RANK) == 0
        os.kill(os.getpid(), signum)
        assert requested == {"signal": signum}
        assert signal_on_any_rank(requested, ONE_RANK) == signum
    assert signal.getsignal(signum) == before


def test_a_second_interrupt_interrupts_at_once():
    with pytest.raises(KeyboardInterrupt), stop_signals() as requested:
        os.kill(os.getpid(), signal.SIGINT)
        assert requested == {"signal": signal.SIGINT}
        os.kill(os.getpid(), signal.SIGINT)


def test_off_the_main_thread_no_handler_is_installed():
    seen = []

    def train():
        with stop_signals() as requested:
            seen.append((requested, signal.getsignal(signal.SIGTERM)))

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=train)
    thread.start()
    thread.join()
    assert seen == [({}, before)]


def test_a_stopped_run_exits_with_the_shells_status_for_the_signal():
    stopped = TrainingStopped(signal.SIGTERM, 3, Path("run/checkpoints/step_00000003"))
    assert (stopped.signal_name, stopped.step, stopped.exit_status) == ("SIGTERM", 3, 143)
    assert str(stopped) == "stopped by SIGTERM at step 3; checkpoint run/checkpoints/step_00000003"
    assert TrainingStopped(signal.SIGINT, 1, None).exit_status == 130
