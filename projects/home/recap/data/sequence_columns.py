"""History list columns: their value checks, and each group's lists as arrays (the most recent items first, capped
at the group's max_length) with the candidate ids they are matched against."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from projects.home.recap.data.arrow_columns import column_array, jagged_ids
from projects.home.recap.data.errors import DataError
from projects.home.recap.data.layout import ColumnRole, SequenceLayout
from projects.home.recap.data.list_checks import (
    action_ids_problem,
    history_problem,
    id_values,
    is_list,
    list_lengths,
    scalar_ids,
)


def check_sequence_values(group: SequenceLayout, table: pa.Table, path: str) -> None:
    """Raise DataError (file, column) for a null inside a history list, a row whose lists in the group differ in
    length, or an action id outside [0, num_actions) (list_checks.py, shared with the standalone scorer)."""
    problem = history_problem([(r.name, column_array(table, r.name)) for r in group.list_roles()], group.group)
    if problem:
        raise DataError(problem[1], path, problem[0])
    if group.actions is not None and group.num_actions is not None:
        problem = action_ids_problem(column_array(table, group.actions.name).flatten(), group.num_actions, group.group)
        if problem:
            raise DataError(problem, path, group.actions.name)


def _recent_first(offsets: np.ndarray, max_length: int, most_recent: str) -> tuple[np.ndarray, np.ndarray]:
    """(new offsets, positions into the values) keeping each row's max_length most recent items, most recent
    first."""
    lengths = np.minimum(offsets[1:] - offsets[:-1], max_length)
    new_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    within = np.arange(int(new_offsets[-1]), dtype=np.int64) - np.repeat(new_offsets[:-1], lengths)
    if most_recent == "first":
        positions = np.repeat(offsets[:-1], lengths) + within
    else:  # the last stored item is the most recent one: read each row backwards from its end
        positions = np.repeat(offsets[1:] - 1, lengths) - within
    return new_offsets, positions


def _candidate_ids(arr: pa.Array) -> np.ndarray:
    """One id per row of a candidate column: the scalar, or a list's first id; 0 for a null or an empty list."""
    if not is_list(arr):
        return scalar_ids(arr)
    offsets, values = jagged_ids(arr)
    out = np.zeros(len(arr), dtype=np.int64)
    has = offsets[1:] > offsets[:-1]
    out[has] = values[offsets[:-1][has]]
    return out


def sequence_arrays(group: SequenceLayout, table: pa.Table) -> dict[str, np.ndarray]:
    """One history group of a table: "offsets" [N+1] after keeping the max_length most recent items, then per
    id column "id:<col>" int64 values, "actions" int64, "continuous" [M, C] float32 (most recent first), and
    per id column with a candidate "candidate:<col>" [N] int64."""
    first = column_array(table, group.ids[0].name)
    offsets = np.zeros(len(first) + 1, dtype=np.int64)
    np.cumsum(list_lengths(first), out=offsets[1:])
    new_offsets, positions = _recent_first(offsets, group.max_length, group.most_recent)
    out: dict[str, np.ndarray] = {"offsets": new_offsets}

    def values(role: ColumnRole, dtype) -> np.ndarray:
        arr = column_array(table, role.name)
        # The list's own offsets may start past 0 (a sliced table): flatten() gives the values of these rows only.
        return np.take(arr.flatten().to_numpy(zero_copy_only=False), positions).astype(dtype, copy=False)

    for role in group.ids:
        out["id:" + role.name] = np.take(id_values(column_array(table, role.name).flatten()), positions)
    if group.actions is not None:
        out["actions"] = values(group.actions, np.int64)
    if group.continuous:
        out["continuous"] = np.stack([values(r, np.float32) for r in group.continuous], axis=1)
    for role, candidate in zip(group.ids, group.candidates):
        if candidate is not None:
            out["candidate:" + role.name] = _candidate_ids(column_array(table, candidate.name))
    return out
