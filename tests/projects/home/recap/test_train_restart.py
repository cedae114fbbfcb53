"""A worker lost mid-training: `torchrun --max-restarts 1` restarts the job, which resumes from the last checkpoint
and finishes."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import train_helpers as helpers  # noqa: E402

from core.checkpoint import list_checkpoints  # noqa: E402


@pytest.mark.slow
def test_killed_rank_restarts_from_the_last_checkpoint_and_finishes(tmp_path):
    data_dir = helpers.make_data(tmp_path / "data")
    save_dir = tmp_path / "run"
    marker = tmp_path / "killed"
    values = helpers.overrides(data_dir, save_dir, 12, checkpoint_every_n=5)
    runner = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
              "--max-restarts", "1", str(Path(__file__).parent / "train_crash_worker.py")]
    done = helpers.recap("train", "--config", str(helpers.DEMO), *helpers.set_args(values), runner=runner,
                         env={"RECAP_TEST_CRASH_STEP": "7", "RECAP_TEST_CRASH_MARKER": str(marker)})
    assert done.returncode == 0, done.stderr[-4000:]
    assert marker.read_text() == "rank 1 killed after step 7\n"
    assert f"resumed from {save_dir / 'checkpoints' / 'step_00000005'} (step 5" in done.stderr
    assert "training finished at step 12" in done.stderr
    assert [c.step for c in list_checkpoints(save_dir / "checkpoints")] == [5, 10, 12]
