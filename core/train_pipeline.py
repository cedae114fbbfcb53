"""Training through torchrec's TrainPipelineSparseDist (CUDA, a DistributedModelParallel, no gradient accumulation):
batch i+1's sparse input all-to-all and batch i+2's host-to-device copy run on side streams while batch i trains.

The training loop (core/train_loop.py) keeps its own per-step work: the forward runs under the loop's autocast and
adds to its reporting window, the pipeline's optimizer is the loop's update, and checkpoints, stop signals and
logging happen between steps as without the pipeline. Evaluation pauses the pipeline (PipelinedSteps.pause); the
batches it held are fed again. torchrec is imported only when a pipeline starts, so the loop trains dense-only
models where torchrec cannot be imported.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from core.log import get_logger

logger = get_logger(__name__)


def pipeline_problem(model: nn.Module, gradient_accumulation_steps: int) -> str | None:
    """Why `model` cannot train through torchrec's TrainPipelineSparseDist, or None when it can."""
    dmp = sys.modules.get("torchrec.distributed.model_parallel")  # loaded whenever a model was sharded
    if dmp is None or not isinstance(model, dmp.DistributedModelParallel):
        return "the model is not a torchrec DistributedModelParallel"
    if gradient_accumulation_steps > 1:
        # The pipeline runs the optimizer after every batch's backward and cannot hold DDP's gradient sync.
        return "gradient_accumulation_steps > 1"
    # A model may say why torch.fx cannot trace it for the pipeline (a `train_pipeline_problem()` method).
    for module in model.modules():
        says = getattr(module, "train_pipeline_problem", None)
        if callable(says) and says() is not None:
            return says()
    return None


def wants_pipeline(requested: bool | None, problem: Callable[[], str | None], device: torch.device) -> bool:
    """Whether to train through the pipeline. requested: None uses it where it helps (CUDA, when `problem()` finds
    nothing against it), True insists (a ValueError says why it cannot), False never (problem is not asked)."""
    if requested is False:
        return False
    found = problem()
    if found is not None:
        if requested:
            raise ValueError(f"torchrec's train pipeline was asked for, but {found}")
        if device.type == "cuda":
            logger.info("training without torchrec's train pipeline: %s", found)
        return False
    return bool(requested) or device.type == "cuda"


class PipelineFeed:
    """The loop's batches as torchrec's pipeline pulls them: up to two ahead of the batch being trained. It notes the
    data position (epoch, data state) before each batch it hands out, so a checkpoint records the first batch not
    yet trained on, as the unpipelined loop does; batches given back (when evaluation pauses the pipeline) are
    handed out again first, in order.

    position() is the loop's current (epoch, data state); next_batch() its next batch, None at the end of the
    data."""

    def __init__(self, position: Callable[[], tuple[int, dict]], next_batch: Callable[[], Any]) -> None:
        self._position = position
        self._next_batch = next_batch
        self._given_back: deque[Any] = deque()
        self.positions: deque[tuple[int, dict]] = deque()  # one per batch handed out and not trained on yet

    def __iter__(self) -> PipelineFeed:
        return self

    def __next__(self) -> Any:
        if self._given_back:
            return self._given_back.popleft()
        position = self._position()
        batch = self._next_batch()
        if batch is None:
            raise StopIteration
        self.positions.append(position)
        return batch

    def give_back(self, batches: list[Any]) -> None:
        """Batches the pipeline held (older than any given back before and not handed out again yet)."""
        self._given_back.extendleft(reversed(batches))


class _StepAfterBackward:
    """What torchrec's pipeline calls its optimizer: zero_grad before each forward (a no-op: the loop's update leaves
    the gradients zeroed) and step after backward (the loop's whole update: clipping, dense and row-sparse steps)."""

    def __init__(self, update: Callable[[], None]) -> None:
        self._update = update

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass

    def step(self) -> None:
        self._update()


class PipelinedSteps:
    """The loop's optimizer steps through a TrainPipelineSparseDist over `model`: `forward(batch)` returns (loss,
    outputs), `update()` is the loop's whole step after backward, and the batches come from `feed`."""

    def __init__(self, model: nn.Module, update: Callable[[], None], forward: Callable[[Any], Any],
                 device: torch.device, feed: PipelineFeed) -> None:
        from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

        self.pipeline = TrainPipelineSparseDist(model, _StepAfterBackward(update), device,
                                                execute_all_batches=True, custom_model_fwd=forward,
                                                # Lets an id transform between batch and tables run pipelined too.
                                                pipeline_postproc=True)
        self.feed = feed
        logger.info("training through torchrec's TrainPipelineSparseDist: host-to-device copies and sparse "
                    "all-to-alls of the next batches overlap each step")

    def step(self) -> bool:
        """One optimizer step; False when the data has ended and nothing is left in flight."""
        try:
            self.pipeline.progress(self.feed)
        except StopIteration:
            return False
        self.feed.positions.popleft()
        return True

    def pause(self) -> None:
        """Before the model is called outside the pipeline (evaluation): give it back its own forwards; the batches
        in flight are fed again, from their host-to-device copy on, at the next step."""
        self.pipeline.detach()
        self.feed.give_back(list(self.pipeline.batches))
        self.pipeline.reset()
        self.pipeline.attach()  # nothing in flight: the model's forwards are rewritten again at the next step
