"""The large tables' per-table optimizer settings and planner constraints, from a recap config."""

from __future__ import annotations

from core.log import get_logger
from core.optimizers import sparse_settings
from core.sparse_optimizers import SparseOptimizerSettings, fused_unsupported
from core.table_placement import TablePlacement, planner_constraints
from projects.home.recap.schema import RecapConfig

logger = get_logger(__name__)

# Above this many weights, a table kept data-parallel costs noticeably: every rank holds all of it and every step
# computes (and all-reduces) a gradient of the whole table.
LARGE_DATA_PARALLEL_TABLE = 10_000_000


def table_optimizer_settings(config: RecapConfig) -> dict[str, SparseOptimizerSettings]:
    """{table name: optimizer.sparse with the table's own learning_rate where it sets one}."""
    return {t.name: sparse_settings(config.optimizer.sparse, t.learning_rate) for t in config.model.large_embeddings}


def table_constraints(config: RecapConfig, device_type: str) -> dict:
    """torchrec planner constraints per table: its pins, limited to what can train on `device_type`."""
    settings = table_optimizer_settings(config)
    for t in config.model.large_embeddings:
        reason = fused_unsupported(settings[t.name], device_type)
        size = t.num_embeddings * t.embedding_dim
        if reason is not None and size > LARGE_DATA_PARALLEL_TABLE:
            logger.warning(
                "large embedding table %r (%d x %d) is kept data_parallel because %s: every rank holds all of it "
                "and each step computes its whole gradient; settings the fused kernel runs on %s keep it sharded "
                "(README: Large tables)", t.name, t.num_embeddings, t.embedding_dim, reason, device_type)
    placements = {
        t.name: TablePlacement(sharding=t.sharding, compute_kernel=t.compute_kernel)
        for t in config.model.large_embeddings
    }
    return planner_constraints(placements, settings, device_type)
