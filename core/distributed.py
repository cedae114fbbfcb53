"""Distributed setup: the process group (torchrun, or a single process without it), model-parallel sharding of the
embedding tables with torchrec, lock-step iteration for collective evaluation, and launching workers.

Under torchrun every worker reads RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE from the environment; GPUs use
NCCL on cuda:LOCAL_RANK, CPUs use gloo. Without torchrun a one-process gloo group is created in memory, so the same
code path (DistributedModelParallel, torch.distributed.checkpoint) runs everywhere.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from core.cpu_allocator import keep_freed_memory
from core.log import get_logger
from core.parent_watch import stop_with_parent
from core.process_exit import note_process_group

logger = get_logger(__name__)

T = TypeVar("T")

_BENIGN_TABLE_WARNINGS = ("caching params will be ignored", "Sharding spec not found for")
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job and which device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def quiet_library_logging() -> None:
    """Keep torchrec's and fbgemm's per-table INFO chatter, tensorboard's event-reader notices and known warnings out
    of the log (library warnings still show). Call it before torchrec is imported: fbgemm logs while loading."""
    for name in ("torchrec", "fbgemm_gpu", "torch.distributed", "tensorboard"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*deprecating ShardedTensor.*", category=FutureWarning)

    def not_library_info(record: logging.LogRecord) -> bool:
        # fbgemm logs through the root logger itself; torchrec warns about every data-parallel table (it has no
        # sharding spec and no cache), which is how such a table is meant to be.
        if record.name in ("root", "torchrec.distributed.utils") and any(
            benign in record.getMessage() for benign in _BENIGN_TABLE_WARNINGS
        ):
            return False
        return record.name != "root" or record.levelno >= logging.WARNING

    for handler in logging.getLogger().handlers:
        if not_library_info.__name__ not in {getattr(f, "__name__", "") for f in handler.filters}:
            handler.addFilter(not_library_info)


def resolve_device(device: str, local_rank: int | None = None) -> torch.device:
    """"auto" -> cuda:LOCAL_RANK when a GPU is visible, else cpu; "cuda" -> cuda:LOCAL_RANK; "cpu" -> cpu.
    local_rank None reads the launcher's LOCAL_RANK (0 without one)."""
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("training.device is cuda but no GPU is visible to this process (use auto or cpu)")
        return torch.device("cuda", local_rank)
    if device != "cpu":
        raise ValueError(f"unknown device {device!r} (auto, cpu or cuda)")
    return torch.device("cpu")


def launched_by_torchrun() -> bool:
    """True when the torchrun environment variables are set."""
    return all(name in os.environ for name in _TORCHRUN_VARS)


def _attempt_store(rank: int, world_size: int, local_world_size: int, timeout: timedelta | None) -> dist.Store:
    """The store the process group meets in, fresh for every restart attempt.

    Under torchrun's default, the node-rank-0 agent hosts one store for the whole job (TORCHELASTIC_USE_AGENT_STORE)
    and every restart meets in it again: the process-group addresses published by the previous attempt are still
    there, and new workers would connect to dead ones. On one machine a prefix per attempt
    (TORCHELASTIC_RESTART_COUNT) keeps attempts apart. Across machines it cannot: each agent counts its own restarts
    (a replaced node starts again at 0, and an agent whose workers were healthy restarts them without counting), and
    torchrun's own rendezvous cannot take a replaced node into a shared store (the new agent waits for the store's
    address, which the surviving agent does not publish again). So multi-node launches (`recap train --nnodes`, or
    torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1) have rank 0 host a new store, on a port the rendezvous picks
    for each round, and need no prefix."""
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    wait = timeout or timedelta(minutes=30)
    agent_hosts = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    if agent_hosts and world_size > local_world_size and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0:
        raise RuntimeError(
            "torchrun with --max-restarts on several nodes shares one store across restarts, and the nodes' restart "
            "counts can differ, so restarted workers would not find each other: launch with `recap train --nnodes "
            "...` or set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 for torchrun on every node"
        )
    # Without an agent's store (a bare environment, or sharing turned off) rank 0 hosts one for this attempt alone.
    store = dist.TCPStore(host, port, world_size, is_master=not agent_hosts and rank == 0, timeout=wait,
                          multi_tenant=not agent_hosts)
    if not agent_hosts:
        return store
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"recap/attempt_{attempt}", store)


def init_distributed(device: str = "auto", timeout: timedelta | None = None) -> DistributedContext:
    """Initialize (or reuse) the default process group and return this process's context."""
    if launched_by_torchrun():
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ["LOCAL_RANK"])
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    else:
        rank, world_size, local_rank, local_world_size = 0, 1, 0, 1
    resolved = resolve_device(device, local_rank)
    backend = "nccl" if resolved.type == "cuda" else "gloo"
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    else:
        keep_freed_memory()  # the step's large tensors reuse memory instead of page-faulting it in every step
    if not dist.is_initialized():
        kwargs = {"timeout": timeout} if timeout is not None else {}
        if launched_by_torchrun():
            # A worker whose launcher is killed stops (with a checkpoint when training) instead of going on alone.
            stop_with_parent()
            if resolved.type == "cuda":
                kwargs["device_id"] = resolved
            dist.init_process_group(backend=backend, store=_attempt_store(rank, world_size, local_world_size, timeout),
                                    rank=rank, world_size=world_size, **kwargs)
        else:
            # One process, no rendezvous: an in-memory store is enough and needs no free port.
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1, **kwargs)
    elif dist.get_world_size() != world_size:
        raise RuntimeError(
            f"a process group of {dist.get_world_size()} ranks exists but the environment says {world_size}"
        )
    note_process_group()  # its worker threads decide how the process must end (core.process_exit)
    return DistributedContext(rank, world_size, local_rank, local_world_size, resolved, backend)


def shutdown_distributed() -> None:
    """After a successful run: wait for every rank, then destroy the default process group (if one exists).

    Tearing the group down while a peer is still communicating can abort that peer at exit; after a failure, do
    not call this (a rank that failed alone would wait here for the others) and let the process exit."""
    if dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def barrier(ctx: DistributedContext) -> None:
    """Wait for every rank (device-aware for NCCL)."""
    if ctx.world_size > 1:
        if ctx.backend == "nccl":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """Sum `tensor` over ranks in place (a no-op on one rank) and return it."""
    if ctx.world_size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, ctx: DistributedContext) -> bool:
    """True on every rank if `flag` is true on at least one."""
    value = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    return bool(all_reduce_sum(value, ctx).item() > 0)


def lockstep(
    batches: Iterable[T],
    pad: Callable[[T], T],
    ctx: DistributedContext,
    template: T | None = None,
    max_steps: int | None = None,
) -> Iterator[tuple[T, bool]]:
    """Yield (batch, is_real) until every rank has run out of batches (or after max_steps).

    A forward pass through sharded embedding tables is a collective: every rank must run the same number of them.
    A rank that runs out early yields pad(last batch it saw, or `template`) -- a batch that must not count (e.g. with
    zero weights) -- for as long as any other rank still has data. One small all-reduce per step decides."""
    iterator: Iterator[T] | None = iter(batches)
    last = template
    steps = 0
    while max_steps is None or steps < max_steps:
        batch = next(iterator, None) if iterator is not None else None
        if batch is None:
            iterator = None
        if not any_rank(batch is not None, ctx):
            return
        if batch is None:
            if last is None:
                raise RuntimeError(f"rank {ctx.rank} has no batch to pad with while other ranks still evaluate")
            yield pad(last), False
        else:
            last = batch
            yield batch, True
        steps += 1


def shard_model(
    model: nn.Module,
    ctx: DistributedContext,
    batch_size: int | None = None,
    static_graph: bool = True,
    constraints: dict | None = None,
) -> nn.Module:
    """Wrap `model` in torchrec's DistributedModelParallel: the planner shards its embedding-bag collections over
    the ranks (the plan is logged), the rest is data-parallel (DDP, on more than one rank). Embedding tables may be
    on device "meta"; they are materialized on their shard's device. Use static_graph=False with gradient
    accumulation (no_sync).
    `constraints` ({table name: torchrec ParameterConstraints}, core/table_placement.py) limit the planner's
    choices per table."""
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DefaultDataParallelWrapper, DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner
    from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
    from torchrec.distributed.planner.types import KernelConfig, TopologyFactory, TrainerConfig
    from torchrec.distributed.sharding_plan import get_default_sharders
    from torchrec.distributed.types import ShardingEnv

    from core.embedding_autograd import register_dense_lookup_backward
    from core.table_placement import table_sharder

    if not dist.is_initialized():
        raise RuntimeError("shard_model needs a process group: call init_distributed() first")
    pg = dist.group.WORLD
    topology = TopologyFactory.create_topology(
        trainer_config=TrainerConfig(world_size=ctx.world_size, local_world_size=ctx.local_world_size),
        kernel_config=KernelConfig(compute_device=ctx.device.type),
    )
    # A fixed share of each device's memory is kept for the dense part, activations and optimizer state.
    planner = EmbeddingShardingPlanner(topology=topology, batch_size=batch_size, constraints=constraints,
                                       storage_reservation=FixedPercentageStorageReservation(0.15))
    # Data-parallel tables compute with fbgemm's dense kernel, which has no backward on CPU until this adds it.
    register_dense_lookup_backward()
    sharders = [table_sharder() if type(s) is EmbeddingBagCollectionSharder else s for s in get_default_sharders()]
    plan = planner.collective_plan(model, sharders, pg)
    if plan.plan:
        logger.info("sharding plan for %d rank(s):\n%s", ctx.world_size, plan)
    return DistributedModelParallel(
        model,
        env=ShardingEnv.from_process_group(pg),
        device=ctx.device,
        plan=plan,
        sharders=sharders,
        data_parallel_wrapper=(DefaultDataParallelWrapper(static_graph=static_graph) if ctx.world_size > 1
                               else _OneProcess()),
    )


class _OneProcess:
    """The data-parallel part of a one-process job: nothing to average, so not wrapped in DDP, whose gradient
    buckets, autograd hooks and one-rank all-reduce cost 6-7% of the demo's training step. The state_dict is the
    same either way (DistributedModelParallel strips DDP's prefix)."""

    def wrap(self, dmp: nn.Module, env: object, device: torch.device) -> None:
        dmp._dmp_wrapped_module.to(device)


def data_parallel_module(model: nn.Module) -> nn.Module | None:
    """The DistributedDataParallel inside a DistributedModelParallel (or `model` itself if it is one), or None."""
    from torch.nn.parallel import DistributedDataParallel

    for module in (model, getattr(model, "_dmp_wrapped_module", None)):
        if isinstance(module, DistributedDataParallel):
            return module
    return None


def average_buffers(model: nn.Module, ctx: DistributedContext) -> None:
    """Average the floating-point buffers of the data-parallel part (BatchNorm running statistics) over ranks.

    torchrec's DDP wrapper does not broadcast buffers, so each rank's running statistics drift apart; averaging them
    before evaluation and checkpointing makes every rank evaluate, and every checkpoint hold, the same model."""
    ddp = data_parallel_module(model)
    if ctx.world_size == 1 or ddp is None:
        return
    buffers = getattr(ddp, "named_module_buffers", None)
    if buffers is None:
        buffers = {n: b for n, b in ddp.module.named_buffers() if n not in ddp.parameters_to_ignore}
    floating = [b for b in buffers.values() if b.is_floating_point()]
    if floating:
        flat = torch.cat([b.detach().reshape(-1).float() for b in floating])
        dist.all_reduce(flat)
        flat /= ctx.world_size
        offset = 0
        for b in floating:
            b.detach().copy_(flat[offset : offset + b.numel()].view_as(b))
            offset += b.numel()


@dataclass(frozen=True)
class Rendezvous:
    """How the launchers of a multi-node job find each other: torchrun's c10d rendezvous, hosted at `endpoint`
    (HOST:PORT on one of the nodes, reachable from all) for the job named `run_id`, which waits for `nnodes`
    launchers. Losing the node at `endpoint` ends the job; any other node can be replaced by starting its launcher
    again."""

    nnodes: int
    endpoint: str
    run_id: str

    def __post_init__(self) -> None:
        if self.nnodes < 2:
            raise ValueError(f"a multi-node rendezvous needs at least 2 nodes, not {self.nnodes}")
        host, _, port = self.endpoint.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"rendezvous endpoint {self.endpoint!r} is not HOST:PORT (a port from 1 to 65535)")
        if not self.run_id or not all(c.isalnum() or c in "-_." for c in self.run_id):
            raise ValueError(f"rendezvous id {self.run_id!r} must be letters, digits, '-', '_' or '.'")


def launcher_arguments(
    nproc_per_node: int, module: str, args: list[str], max_restarts: int = 0, rendezvous: Rendezvous | None = None
) -> list[str]:
    """torchrun's command line (after `torchrun`) for `launch_workers`."""
    if nproc_per_node < 1:
        raise ValueError(f"nproc_per_node must be at least 1, not {nproc_per_node}")
    if max_restarts < 0:
        raise ValueError(f"max_restarts must be at least 0, not {max_restarts}")
    if rendezvous is None:
        where = ["--standalone"]
    else:
        where = [f"--nnodes={rendezvous.nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rendezvous.endpoint}",
                 f"--rdzv-id={rendezvous.run_id}"]
    return [*where, f"--nproc-per-node={nproc_per_node}", f"--max-restarts={max_restarts}", "--module", module, *args]


def parse_launcher_arguments(argv: list[str]) -> argparse.Namespace:
    """torchrun's parse of `argv`, without prefix matching: the workers' own options follow the module name, and
    with abbreviations allowed one of them that starts like a torchrun option (`--run` and `--run-path`) is an
    "ambiguous option" error before torchrun gets to treat it as the module's argument."""
    from torch.distributed.run import get_args_parser

    parser = get_args_parser()
    parser.allow_abbrev = False
    return parser.parse_args(argv)


def launch_workers(
    nproc_per_node: int, module: str, args: list[str], max_restarts: int = 0, rendezvous: Rendezvous | None = None
) -> int:
    """Run `python -m module args` in nproc_per_node workers on this machine through torch's elastic launcher
    (what torchrun --standalone does, or torchrun's c10d rendezvous with the other nodes' launchers); returns 0 when
    every worker succeeded, 128 + N when the launcher was stopped by signal N (its workers got it too)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import run

    if rendezvous is not None:
        # Each restart round gets a new store hosted by its rank 0 instead of the agents' one (see _attempt_store).
        os.environ["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    launcher_args = parse_launcher_arguments(launcher_arguments(nproc_per_node, module, args, max_restarts, rendezvous))
    try:
        run(launcher_args)
    except SignalException as exc:
        # The launcher forwarded the signal to its workers and waited for them: they checkpoint and exit.
        logger.warning("launcher stopped by %s; the workers were asked to stop too", exc.sigval.name)
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        codes = {r: f.exitcode for r, f in exc.failures.items()}
        stopped = stop_status(list(codes.values()))
        if stopped is not None:
            # A signal sent to one worker (not to the launcher) stops every rank at the same step with a checkpoint;
            # the launcher then ends any rank still exiting with SIGTERM.
            logger.warning("the workers stopped on %s (exit codes %s)", signal.Signals(stopped - 128).name,
                           ", ".join(f"rank {r}: {c}" for r, c in sorted(codes.items())))
            return stopped
        failures = "; ".join(f"rank {r}: exit code {c}" for r, c in sorted(codes.items()))
        logger.error("training workers failed (%s)", failures)
        return 1
    return 0


def stop_status(exit_codes: list[int]) -> int | None:
    """128 + N when workers ended as a stop signal N ends them (exit status 143 for SIGTERM, 130 for SIGINT, after
    their checkpoint), the others at most killed by the launcher's SIGTERM (exit code -15) on its way out; else
    None (a real failure)."""
    statuses = {128 + signal.SIGTERM, 128 + signal.SIGINT}
    stopped = [c for c in exit_codes if c in statuses]
    if not stopped or any(c not in statuses and c != -signal.SIGTERM for c in exit_codes):
        return None
    return max(stopped)
