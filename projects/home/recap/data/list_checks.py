"""How list and id columns are read and checked: a null list is an empty one, a null inside a list is an error, id
columns hold integers or strings (strings become int64 ids by a fixed hash, `id_values`), history columns have list
types of ids, integer actions or numbers (continuous values), the list columns of a history group have one length
per row, action ids lie in [0, num_actions).

Shared by the training loader (data/columns.py, data/sequence_columns.py) and the standalone scorer shipped with a
serving export (serving/score_example.py), so both read the same parquet rows the same way. `recap export` copies
this file next to score_example.py; it therefore imports numpy and pyarrow only, and says what is wrong as text that
each caller puts in its own error (the loader's DataError, the scorer's ValueError).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def is_list(arr: pa.Array) -> bool:
    """Whether a column holds lists (variable or fixed length)."""
    return is_list_type(arr.type)


def list_lengths(arr: pa.Array) -> np.ndarray:
    """Items per row of a list column, 0 for a null list."""
    lengths = pc.list_value_length(arr)
    if lengths.null_count:
        lengths = pc.fill_null(lengths, 0)
    return lengths.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _is_text(t: pa.DataType) -> bool:
    return (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
            or pa.types.is_large_binary(t) or pa.types.is_string_view(t) or pa.types.is_binary_view(t))


def is_id_type(t: pa.DataType) -> bool:
    """Whether values of this type can be ids: integers, or strings / binary (hashed by `id_values`), also
    dictionary-encoded."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_integer(t) or _is_text(t)


_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_LOW_63_BITS = np.uint64(0x7FFFFFFFFFFFFFFF)


def string_ids(arr: pa.Array) -> np.ndarray:
    """int64 ids of a string or binary array without nulls: the 64-bit FNV-1a hash of each value's bytes (UTF-8 for
    strings) with the top bit cleared, so ids are >= 0. Fixed: the same in every process, run and machine, so that
    training, evaluation, prediction and the standalone scorer map a string to the same table row (after the
    table's id_transform). "" hashes to 0x4BF29CE484222325 (the FNV offset basis, top bit cleared)."""
    arr = arr.cast(pa.large_binary())  # one offsets width (int64) for every text type
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64, count=arr.offset + n + 1)[arr.offset:]
    data_buffer = arr.buffers()[2]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    # Byte k of every value longer than k, for k = 0, 1, ...: vectorised across values (ids are short strings).
    # Values sorted longest first make those a prefix, hashed in place; ids of one length (hex ids) need no sort.
    order = None
    if n and lengths.min() != lengths.max():
        order = np.argsort(-lengths, kind="stable")
        starts, lengths = starts[order], lengths[order]
    longest = int(lengths[0]) if n else 0
    longer_than = np.searchsorted(-lengths, -np.arange(longest), side="left")  # values longer than k bytes
    hashes = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    for k in range(longest):
        part = hashes[:longer_than[k]]
        np.bitwise_xor(part, data[starts[:len(part)] + k], out=part)
        np.multiply(part, _FNV_PRIME, out=part)
    hashes &= _LOW_63_BITS
    ids = hashes.view(np.int64)
    if order is None:
        return ids
    out = np.empty_like(ids)
    out[order] = ids
    return out


def id_values(arr: pa.Array) -> np.ndarray:
    """int64 ids of an id column's values (no nulls; a list column flattened first): integers as they are, strings
    and binary by `string_ids`."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if _is_text(arr.type):
        return string_ids(arr)
    return arr.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def scalar_ids(arr: pa.Array) -> np.ndarray:
    """One int64 id per row of a scalar id column (`id_values`), 0 for a null."""
    if not arr.null_count:
        return id_values(arr)
    out = np.zeros(len(arr), dtype=np.int64)
    out[arr.is_valid().to_numpy(zero_copy_only=False)] = id_values(arr.drop_null())
    return out


# The history columns' kinds (as the loader's layout names them): what their values must be.
HISTORY_VALUES = {
    "sequence_id": (is_id_type, "integer or string ids"),
    "sequence_action": (pa.types.is_integer, "integer action types"),
    "sequence_continuous": (_is_number, "numbers"),
}


def history_type_problem(dtype: pa.DataType, kind: str, what: str) -> str | None:
    """Why a parquet type cannot be a history list column of this kind (a key of HISTORY_VALUES), or None. `what`
    names the column's place in the config, e.g. "data.features.sequences.history.ids[0]". A float or string id would
    otherwise be cast or fail far from its column."""
    is_value, wanted = HISTORY_VALUES[kind]
    if not (pa.types.is_list(dtype) or pa.types.is_large_list(dtype)):
        return f"type {dtype} is not a variable-length list; {what} is a history column (list per row)"
    return None if is_value(dtype.value_type) else f"type {dtype} does not hold {wanted} ({what})"


def candidate_type_problem(dtype: pa.DataType) -> str | None:
    """Why a parquet type cannot hold a candidate id column (int64 or a list of ints whose first id counts)."""
    inner = dtype.value_type if is_list_type(dtype) else dtype
    return None if is_id_type(inner) else (f"type {dtype} cannot hold candidate ids: need integer or string ids "
                                           "(int64, string, or a list of them)")


def is_list_type(t: pa.DataType) -> bool:
    """Whether a parquet type is a list (variable or fixed length)."""
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def null_ids_problem(arr: pa.Array) -> str | None:
    """What is wrong with a sparse id column: a null inside a list (a null scalar or a null list is a row without
    ids)."""
    inner = arr.flatten().null_count if is_list(arr) else 0
    return f"{inner} null ids inside lists" if inner else None


def history_problem(columns: list[tuple[str, pa.Array]], group: str) -> tuple[str, str] | None:
    """(column, what is wrong) for the first of a history group's list columns (ids, actions, continuous; in that
    order) with a null inside a list or a row whose length differs from the first column's; None when the group can
    be read."""
    first_name, first = None, None
    for name, arr in columns:
        inner = arr.flatten().null_count
        if inner:
            return name, f"{inner} null values inside history lists (group {group!r})"
        lengths = list_lengths(arr)
        if first is None:
            first_name, first = name, lengths
            continue
        bad = np.flatnonzero(lengths != first)
        if len(bad):
            row = int(bad[0])
            return name, (f"{len(bad)} rows whose list length differs from {first_name}'s in history group {group!r} "
                          f"(first: row {row}, {int(lengths[row])} against {int(first[row])})")
    return None


def action_ids_problem(values: pa.Array, num_actions: int, group: str) -> str | None:
    """What is wrong with a history group's action ids (the flattened values): ids outside [0, num_actions), which
    the model would fold into another action type."""
    if not len(values):
        return None
    lo, hi = (v.as_py() for v in pc.min_max(values).values())
    if lo >= 0 and hi < num_actions:
        return None
    array = values.to_numpy(zero_copy_only=False)
    bad = (array < 0) | (array >= num_actions)
    return (f"{int(bad.sum())} action ids outside [0, {num_actions}) (first: {array[bad][0].item()}); "
            f"model.sequences.{group}.num_actions is {num_actions}")
