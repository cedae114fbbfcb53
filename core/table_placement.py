"""Where each large embedding table is computed: the planner constraints that keep every table trainable.

torchrec's planner picks a sharding type and a compute kernel per table. Two facts decide what it may pick:
- model-parallel sharding types (table_wise, row_wise, column_wise, table_row_wise, table_column_wise) compute with
  fbgemm's fused kernel, whose optimizer runs inside backward; it must be able to run the table's optimizer settings
  on the device (core/sparse_optimizers.py `fused_unsupported`), else the table is kept data_parallel;
- data_parallel computes with fbgemm's dense kernel; its gradient reaches the project's RowSparseOptimizer (on CPU
  through core/embedding_autograd.py, which gives fbgemm's CPU kernel its missing backward).
torchrec offers row_wise and table_row_wise on GPUs only; they work on CPU with gloo too, and `TableSharder` offers
them there when a table pins one (the planner's automatic choice on CPU stays within what torchrec offers).
A table's config may pin its sharding type and kernel; a pin that cannot train is a config error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from core.config import ConfigError
from core.sparse_optimizers import SparseOptimizerSettings, fused_unsupported

MODEL_PARALLEL = ("table_wise", "row_wise", "column_wise", "table_row_wise", "table_column_wise")
SHARDING_TYPES = ("data_parallel", *MODEL_PARALLEL)
# Sharding types that run on CPU only when a table pins them.
CPU_PINNED_ONLY = ("row_wise", "table_row_wise")
# Compute kernels by device: fused (the fbgemm kernel with the optimizer in backward), its GPU variants that keep
# the table in host memory (uvm) or cache its hot rows in GPU memory (uvm_caching), and dense (data_parallel).
COMPUTE_KERNELS = {"cpu": ("fused", "dense"), "cuda": ("fused", "fused_uvm", "fused_uvm_caching", "dense")}


@dataclass(frozen=True)
class TablePlacement:
    """A table's pinned sharding type and compute kernel ("auto" leaves the choice to the planner)."""

    sharding: str = "auto"
    compute_kernel: str = "auto"


def allowed_placements(
    name: str, placement: TablePlacement, settings: SparseOptimizerSettings, device_type: str
) -> tuple[list[str], list[str]]:
    """(sharding types, compute kernels) the planner may choose for table `name`; ConfigError for a pin that
    cannot run or cannot train on `device_type`."""
    where = f"large embedding table {name!r}"
    kernels = COMPUTE_KERNELS["cuda" if device_type == "cuda" else "cpu"]
    if placement.sharding not in ("auto", *SHARDING_TYPES):
        raise ConfigError(f"{where}: sharding {placement.sharding!r} is not auto or one of {', '.join(SHARDING_TYPES)}")
    if placement.compute_kernel not in ("auto", *kernels):
        raise ConfigError(
            f"{where}: compute_kernel {placement.compute_kernel!r} does not run on {device_type} "
            f"(there: auto, {', '.join(kernels)})"
        )
    if placement.sharding == "data_parallel" and placement.compute_kernel not in ("auto", "dense"):
        raise ConfigError(f"{where}: data_parallel tables compute with the dense kernel, not {placement.compute_kernel}")
    if placement.compute_kernel == "dense" and placement.sharding not in ("auto", "data_parallel"):
        raise ConfigError(f"{where}: the dense kernel computes data_parallel tables only, not {placement.sharding}")
    reason = fused_unsupported(settings, device_type)
    if reason is not None:
        # Only the row-sparse optimizer of data-parallel tables can run these settings here.
        if placement.sharding not in ("auto", "data_parallel") or placement.compute_kernel not in ("auto", "dense"):
            pinned = placement.sharding if placement.sharding != "auto" else placement.compute_kernel
            raise ConfigError(
                f"{where}: {pinned} updates the table inside fbgemm's fused kernel, and {reason}; "
                f"use sharding data_parallel (or auto) for {settings.type} with these settings on {device_type}"
            )
        return ["data_parallel"], ["dense"]
    if placement.compute_kernel == "dense" or placement.sharding == "data_parallel":
        return ["data_parallel"], ["dense"]
    if placement.sharding != "auto":
        shardings = [placement.sharding]
    elif device_type == "cuda":
        shardings = list(SHARDING_TYPES)
    else:
        shardings = [s for s in SHARDING_TYPES if s not in CPU_PINNED_ONLY]
    if placement.compute_kernel != "auto":
        return [s for s in shardings if s != "data_parallel"], [placement.compute_kernel]
    if placement.sharding != "auto":
        return shardings, [k for k in kernels if k != "dense"]
    return shardings, list(kernels)


def planner_constraints(
    placements: Mapping[str, TablePlacement],
    settings: Mapping[str, SparseOptimizerSettings],
    device_type: str,
) -> dict:
    """torchrec ParameterConstraints per table name, from each table's pins and optimizer settings."""
    from torchrec.distributed.planner import ParameterConstraints

    constraints = {}
    for name, placement in placements.items():
        shardings, kernels = allowed_placements(name, placement, settings[name], device_type)
        constraints[name] = ParameterConstraints(sharding_types=shardings, compute_kernels=kernels)
    return constraints


def table_sharder():
    """torchrec's EmbeddingBagCollection sharder, also offering row_wise and table_row_wise on CPU."""
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder

    class TableSharder(EmbeddingBagCollectionSharder):
        def sharding_types(self, compute_device_type: str) -> list[str]:
            types = super().sharding_types(compute_device_type)
            if compute_device_type == "cpu":
                types += [t for t in ("row_wise", "table_row_wise") if t not in types]
            return types

    return TableSharder()
