"""The parquet writer: splits, files and row groups of a generated dataset, written by one process (drawing the
next file while the last is written) or a pool of forked ones."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from core.progress import Progress
from projects.home.recap.data.synthetic.ground_truth import World
from projects.home.recap.data.synthetic.sampling import _rng
from projects.home.recap.data.synthetic.spec import SyntheticSpec
from projects.home.recap.data.synthetic.table import generate_table
from projects.home.recap.data.synthetic.world import make_world

DEFAULT_SPLITS: tuple[tuple[str, float], ...] = (("train", 0.9), ("validation", 0.05), ("test", 0.05))


def split_sizes(rows: int, splits: tuple[tuple[str, float], ...]) -> dict[str, int]:
    """Rows per split (rounded down, the remainder to the first split)."""
    total = sum(f for _, f in splits)
    sizes = {name: int(rows * f / total) for name, f in splits}
    first = splits[0][0]
    sizes[first] += rows - sum(sizes.values())
    return sizes


_WORLD: World | None = None  # set before forking writer processes, so jobs do not carry the world


class _Job(NamedTuple):
    seed: int
    split_index: int
    file_index: int
    rows: int
    first_id: int
    path: str
    row_group_size: int


def _file_table(job: _Job) -> pa.Table:
    return generate_table(_WORLD, _rng(job.seed, 3, job.split_index, job.file_index), job.rows, job.first_id)


def _write_table(table: pa.Table, path: str, row_group_size: int) -> None:
    small = [c for c in table.column_names if c in ("client_id", "author_type", "hour_of_day", "position")]
    # Random floats do not compress, and plain binary features read and write faster than compressed ones; the
    # rest (ids, labels, small categoricals) compress well with snappy. Statistics only where they can prune.
    plain = {c for c, t in zip(table.column_names, table.schema.types)
             if pa.types.is_floating(t) or pa.types.is_fixed_size_list(t)}
    pq.write_table(table, path, row_group_size=row_group_size, use_dictionary=small,
                   compression={c: "none" if c in plain else "snappy" for c in table.column_names},
                   write_statistics=[c for c in table.column_names if c not in plain])


def _write_rows(table: pa.Table, path: str, row_group_size: int) -> int:
    _write_table(table, path, row_group_size)
    return table.num_rows


def _write_file(job: _Job) -> str:
    _write_table(_file_table(job), job.path, job.row_group_size)
    return job.path


def generate(
    output: str | os.PathLike,
    rows: int,
    seed: int = 0,
    spec: SyntheticSpec = SyntheticSpec(),  # noqa: B008 (frozen: one shared default is safe)
    splits: tuple[tuple[str, float], ...] = DEFAULT_SPLITS,
    rows_per_file: int = 50_000,
    row_group_size: int = 16_384,
    processes: int = 1,
) -> dict[str, int]:
    """Write output/<split>/part-NNNNN.parquet for each split; returns the rows per split. Deterministic for a seed."""
    global _WORLD
    _WORLD = make_world(spec, seed)
    jobs = []
    for s, (split, n_rows) in enumerate(split_sizes(rows, splits).items()):
        directory = os.path.join(output, split)
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):
            if name.startswith("part-") and name.endswith(".parquet"):
                os.remove(os.path.join(directory, name))
        num_files = max(1, -(-n_rows // rows_per_file))
        for f in range(num_files):
            lo, hi = f * n_rows // num_files, (f + 1) * n_rows // num_files
            first_id = (s + 1) * 10**12 + lo
            path = os.path.join(directory, f"part-{f:05d}.parquet")
            jobs.append(_Job(seed, s, f, hi - lo, first_id, path, row_group_size))
    # Progress counts whole files as they are written: the rows are drawn inside the workers.
    progress = Progress("generating", sum(job.rows for job in jobs))
    try:
        if processes > 1 and len(jobs) > 1:
            import multiprocessing

            rows_of = {job.path: job.rows for job in jobs}
            with multiprocessing.get_context("fork").Pool(processes) as pool:
                for path in pool.imap_unordered(_write_file, jobs):
                    progress.update(rows_of[path])
        else:
            # Writing releases the GIL: the next file's rows are drawn while the last one is written.
            with ThreadPoolExecutor(max_workers=1) as writer:
                pending = None
                for job in jobs:
                    table = _file_table(job)
                    if pending is not None:
                        progress.update(pending.result())
                    pending = writer.submit(_write_rows, table, job.path, job.row_group_size)
                progress.update(pending.result())
    finally:
        progress.close()
        _WORLD = None
    return split_sizes(rows, splits)
