"""The large tables' per-table optimizer settings and planner constraints, from a recap config."""

from __future__ import annotations

from core.optimizers import sparse_settings
from core.sparse_optimizers import SparseOptimizerSettings
from core.table_placement import TablePlacement, planner_constraints
from projects.home.recap.schema import RecapConfig


def table_optimizer_settings(config: RecapConfig) -> dict[str, SparseOptimizerSettings]:
    """{table name: optimizer.sparse with the table's own learning_rate where it sets one}."""
    return {t.name: sparse_settings(config.optimizer.sparse, t.learning_rate) for t in config.model.large_embeddings}


def table_constraints(config: RecapConfig, device_type: str) -> dict:
    """torchrec planner constraints per table: its pins, limited to what can train on `device_type`."""
    placements = {
        t.name: TablePlacement(sharding=t.sharding, compute_kernel=t.compute_kernel)
        for t in config.model.large_embeddings
    }
    return planner_constraints(placements, table_optimizer_settings(config), device_type)
