"""The large tables' per-table optimizer settings and planner constraints, from a recap config (the history id
columns' own sharded tables included)."""

from __future__ import annotations

from core.config import ConfigError
from core.log import get_logger
from core.optimizers import sparse_settings
from core.sparse_optimizers import SparseOptimizerSettings, fused_unsupported
from core.table_placement import TablePlacement, planner_constraints
from projects.home.recap.model_config_history import history_table_name
from projects.home.recap.schema import RecapConfig

logger = get_logger(__name__)

# Above this many weights, a table kept data-parallel costs noticeably: every rank holds all of it and every step
# computes (and all-reduces) a gradient of the whole table.
LARGE_DATA_PARALLEL_TABLE = 10_000_000


def history_tables(config: RecapConfig) -> dict[str, tuple[str, TablePlacement, tuple[int, int]]]:
    """{table name: (its config key, placement, (rows, dim))} of the history id columns' own sharded tables."""
    out = {}
    for group, spec in config.model.sequences.items():
        for column, table in spec.tables.items():
            if table.replicated or table.table is not None:
                continue
            assert table.num_embeddings is not None  # HistoryTableConfig validates an own table's size
            out[history_table_name(group, column)] = (
                f"model.sequences.{group}.tables.{column}",
                TablePlacement(sharding=table.sharding, compute_kernel=table.compute_kernel),
                (table.num_embeddings, spec.embedding_dim),
            )
    return out


def table_optimizer_settings(config: RecapConfig) -> dict[str, SparseOptimizerSettings]:
    """{table name: optimizer.sparse with the table's own learning_rate where it sets one}, the history id columns'
    own sharded tables included (optimizer.sparse as it is)."""
    settings = {t.name: sparse_settings(config.optimizer.sparse, t.learning_rate) for t in config.model.large_embeddings}
    settings.update({name: sparse_settings(config.optimizer.sparse) for name in history_tables(config)})
    return settings


def _shared_with_history(config: RecapConfig) -> dict[str, str]:
    """{large table name: the config key of a history id column that shares it}."""
    return {table.table: f"model.sequences.{group}.tables.{column}"
            for group, spec in config.model.sequences.items() for column, table in spec.tables.items()
            if table.table is not None}


def table_constraints(config: RecapConfig, device_type: str) -> dict:
    """torchrec planner constraints per table: its pins, limited to what can train on `device_type`."""
    settings = table_optimizer_settings(config)
    shared = _shared_with_history(config)
    own = history_tables(config)
    shapes = {t.name: ((t.num_embeddings, t.embedding_dim), f"large embedding table {t.name!r}")
              for t in config.model.large_embeddings}
    shapes.update({name: (shape, f"history table {name!r} ({key})") for name, (key, _, shape) in own.items()})
    for name, ((rows, dim), what) in shapes.items():
        reason = fused_unsupported(settings[name], device_type)
        if reason is not None and rows * dim > LARGE_DATA_PARALLEL_TABLE:
            logger.warning(
                "%s (%d x %d) is kept data_parallel because %s: every rank holds all of it and each step computes "
                "its whole gradient; settings the fused kernel runs on %s keep it sharded (README: Large tables)",
                what, rows, dim, reason, device_type)
    placements = {
        t.name: TablePlacement(sharding=t.sharding, compute_kernel=t.compute_kernel)
        for t in config.model.large_embeddings
    }
    for name, key in shared.items():
        # The sequence collection (torchrec's EmbeddingCollection) shards by table, row or column only.
        if placements[name].sharding in ("table_row_wise", "table_column_wise"):
            raise ConfigError(f"large embedding table {name!r}: sharding {placements[name].sharding} is not available "
                              f"to a table a history reads ({key}); use table_wise, row_wise, column_wise, "
                              "data_parallel or auto")
    placements.update({name: placement for name, (_, placement, _) in own.items()})
    return planner_constraints(placements, settings, device_type)
