"""The training loop's reporting window: the losses, batch sizes and gradient norm of the steps since the last report.

Between reports nothing waits for the device: losses accumulate in a tensor on it (LossWindow.account), and are read
with one all-reduce (LossWindow.read) only when a line is logged, a checkpoint is written or evaluation runs. A
non-finite loss is counted in the window and raised (NonFiniteLossError) when it is read, so always before a
checkpoint could record it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from core.distributed import DistributedContext, all_reduce_sum


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; training stopped without writing a checkpoint."""


def _batch_size(batch: Any) -> int:
    """The rows of a batch: its batch_size attribute, or a tensor's first dimension."""
    size = getattr(batch, "batch_size", None)
    if isinstance(size, int):
        return size
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    raise TypeError(f"cannot tell the batch size of a {type(batch).__name__}: give it a batch_size attribute")


def _format_learning_rates(lrs: dict[str, float]) -> str:
    """One rate when every group has it, else name=rate for each group."""
    values = set(lrs.values())
    if len(values) == 1:
        return f"{values.pop():.3g}"
    return " ".join(f"{name}={lr:.3g}" for name, lr in lrs.items())


@dataclass
class WindowTotals:
    """One window's sums over every rank."""

    first_step: int  # the first optimizer step of the window
    batches: float  # micro-batches
    examples: int
    loss: float  # summed over the batches
    non_finite: int  # batches whose loss was NaN or infinite
    task_losses: list[float]  # summed over the batches, one per task
    examples_per_second: list[float]  # one per rank
    grad_norm: float  # summed over the ranks (0 where the norm was not measured)

    def check_finite(self, step: int, last_good: str) -> None:
        """Raise NonFiniteLossError when a batch of the window had a non-finite loss (step: the window's last)."""
        if self.non_finite > 0:
            raise NonFiniteLossError(
                f"non-finite training loss in {self.non_finite} batch(es) between steps {self.first_step} and "
                f"{step}; training stopped without saving. Last good checkpoint: {last_good}"
            )

    def metrics(self, task_names: list[str], learning_rates: dict[str, float], grad_norm: bool) -> dict[str, float]:
        """The TensorBoard scalars of the window (train/...); grad_norm: with the mean gradient norm over ranks."""
        metrics = {"train/loss": self.loss / self.batches}
        for task, loss in zip(task_names, self.task_losses):
            metrics[f"train/loss/{task}"] = loss / self.batches
        for name, lr in learning_rates.items():
            metrics[f"train/learning_rate/{name}"] = lr
        metrics["train/examples_per_second"] = sum(self.examples_per_second)
        for r, rate in enumerate(self.examples_per_second):
            metrics[f"train/examples_per_second/rank_{r}"] = rate
        if grad_norm:
            metrics["train/grad_norm"] = self.grad_norm / len(self.examples_per_second)
        return metrics

    def line(self, task_names: list[str], learning_rates: dict[str, float], step: int, total: int | None,
             epoch: int) -> str:
        """The console line of the window: the step (of total), the epoch, the mean loss (per task), the learning
        rates, and examples per second (in all, and per rank)."""
        tasks = " ".join(f"{t}={loss / self.batches:.4f}" for t, loss in zip(task_names, self.task_losses))
        rate = sum(self.examples_per_second)
        return (f"step {step}{f'/{total}' if total else ''} epoch {epoch} | loss {self.loss / self.batches:.4f}"
                f"{f' [{tasks}]' if tasks else ''} | lr {_format_learning_rates(learning_rates)} | {rate:.0f} ex/s "
                f"({rate / len(self.examples_per_second):.0f}/rank)")


class LossWindow:
    """The sums of the steps since the last report, kept on the device; see the module docstring."""

    def __init__(self, num_tasks: int, device: torch.device, first_step: int) -> None:
        self.num_tasks = num_tasks
        self.device = device
        self.reset(first_step)

    def reset(self, first_step: int) -> None:
        """Start a new window at optimizer step `first_step`."""
        # [loss sum, non-finite count, per-task loss sums]; read only at report time.
        self.sums = torch.zeros(2 + self.num_tasks, device=self.device)
        self.batches = 0
        self.examples = 0
        self.start = time.perf_counter()
        self.first_step = first_step
        self.grad_norm: torch.Tensor | None = None  # the last update's, when clipping measured it

    def account(self, batch: Any, loss: torch.Tensor, outputs: dict[str, torch.Tensor]) -> None:
        """Add one batch's loss and size (no device synchronization)."""
        loss = loss.detach().float()
        self.sums[0] += loss
        self.sums[1] += (~torch.isfinite(loss)).float()
        if self.num_tasks:
            self.sums[2:] += outputs["task_losses"].detach().float()
        self.batches += 1
        self.examples += _batch_size(batch)

    def read(self, ctx: DistributedContext) -> WindowTotals:
        """The window's sums over every rank (collective: one all-reduce, which waits for the device)."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        world = ctx.world_size
        per_rank = torch.zeros(world, device=ctx.device)
        per_rank[ctx.rank] = self.examples / elapsed
        grad_norm = self.grad_norm.reshape(1).float() if self.grad_norm is not None else self.sums.new_zeros(1)
        counts = self.sums.new_tensor([float(self.batches), float(self.examples)])
        values = all_reduce_sum(torch.cat([self.sums, per_rank, grad_norm, counts]), ctx).tolist()
        n = 2 + self.num_tasks
        window, rates, grad_norm_sum, (batches, examples) = (
            values[:n], values[n : n + world], values[n + world], values[n + world + 1 :]
        )
        return WindowTotals(self.first_step, batches, int(examples), window[0], int(window[1]), window[2:], rates,
                            grad_norm_sum)
