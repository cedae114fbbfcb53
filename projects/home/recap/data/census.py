"""The UCI Census-Income (KDD) file as recap parquet: two tasks (income over 50k, never married), seeded splits.

As in the MMoE paper's census benchmark, education and marital status are not inputs (marital status is a label),
and the instance weight is not an input (it is kept as a column). Numeric codes that name categories (industry and
occupation codes, year, ...) become discrete features, like the text categories.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from core.progress import Progress
from projects.home.recap.data.config import DataConfig
from projects.home.recap.data.errors import DataError
from projects.home.recap.data.stats import continuous_stats

# The 42 comma-separated fields of census-income.{data,test}, in file order.
SOURCE_COLUMNS = (
    "age", "class_of_worker", "detailed_industry_recode", "detailed_occupation_recode", "education",
    "wage_per_hour", "enroll_in_edu_inst_last_wk", "marital_stat", "major_industry_code", "major_occupation_code",
    "race", "hispanic_origin", "sex", "member_of_a_labor_union", "reason_for_unemployment",
    "full_or_part_time_employment_stat", "capital_gains", "capital_losses", "dividends_from_stocks",
    "tax_filer_stat", "region_of_previous_residence", "state_of_previous_residence",
    "detailed_household_and_family_stat", "detailed_household_summary_in_household", "instance_weight",
    "migration_code_change_in_msa", "migration_code_change_in_reg", "migration_code_move_within_reg",
    "live_in_this_house_1_year_ago", "migration_prev_res_in_sunbelt", "num_persons_worked_for_employer",
    "family_members_under_18", "country_of_birth_father", "country_of_birth_mother", "country_of_birth_self",
    "citizenship", "own_business_or_self_employed", "fill_inc_questionnaire_for_veterans_admin",
    "veterans_benefits", "weeks_worked_in_year", "year", "income",
)
CONTINUOUS = ("age", "wage_per_hour", "capital_gains", "capital_losses", "dividends_from_stocks",
              "num_persons_worked_for_employer", "weeks_worked_in_year")
NOT_INPUTS = ("education", "marital_stat", "instance_weight", "income")
DISCRETE = tuple(c for c in SOURCE_COLUMNS if c not in CONTINUOUS and c not in NOT_INPUTS)
TASK_LABELS = {"income_50k": "income_50k", "never_married": "never_married"}
ID_COLUMN = "row_id"
SPLITS = (("train", 0.8), ("validation", 0.1), ("test", 0.1))
STATS_FILE = "stats.json"


def read_census(path: str | os.PathLike) -> pa.Table:
    """Parse the raw file (optionally gzip-compressed) into string columns with surrounding spaces removed."""
    options = pacsv.ReadOptions(column_names=list(SOURCE_COLUMNS))
    convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in SOURCE_COLUMNS}, strings_can_be_null=False)
    try:
        table = pacsv.read_csv(str(path), read_options=options, convert_options=convert)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(f"not a Census-Income file with {len(SOURCE_COLUMNS)} comma-separated fields ({exc})",
                        str(path)) from None
    return pa.table({c: pc.utf8_trim_whitespace(table.column(c)) for c in SOURCE_COLUMNS})


def vocabulary(column: pa.ChunkedArray) -> list[str]:
    """Distinct values, most frequent first (ties by value), so ids are stable for a given file."""
    counts = pc.value_counts(column).to_pylist()
    return [c["values"] for c in sorted(counts, key=lambda c: (-c["counts"], c["values"]))]


def convert_table(raw: pa.Table) -> tuple[pa.Table, dict[str, list[str]]]:
    """The model-ready table (features, two 0/1 labels, instance weight, row id) and the category vocabularies."""
    income = raw.column("income")
    bad = pc.invert(pc.is_in(income, pa.array(["- 50000.", "50000+."])))
    if pc.any(bad).as_py():
        first = pc.filter(income, bad)[0].as_py()
        raise DataError(f"unexpected income value {first!r} (expected '- 50000.' or '50000+.')", column="income")
    columns: dict[str, pa.Array] = {ID_COLUMN: pa.array(np.arange(raw.num_rows, dtype=np.int64))}
    for name in CONTINUOUS:
        columns[name] = pc.cast(raw.column(name), pa.float32())
    vocabularies = {}
    for name in DISCRETE:
        vocab = vocabulary(raw.column(name))
        vocabularies[name] = vocab
        columns[name] = pc.cast(pc.index_in(raw.column(name), pa.array(vocab)), pa.int64())
    columns["income_50k"] = pc.cast(pc.equal(income, "50000+."), pa.int8())
    columns["never_married"] = pc.cast(pc.equal(raw.column("marital_stat"), "Never married"), pa.int8())
    columns["instance_weight"] = pc.cast(raw.column("instance_weight"), pa.float32())
    return pa.table(columns), vocabularies


def split_indices(n: int, seed: int, splits: Sequence[tuple[str, float]] = SPLITS) -> dict[str, np.ndarray]:
    """A seeded random partition of range(n) in the given proportions (each part in file order)."""
    perm = np.random.default_rng(seed).permutation(n)
    out, start = {}, 0
    for i, (name, fraction) in enumerate(splits):
        stop = n if i == len(splits) - 1 else start + int(round(n * fraction))
        out[name] = np.sort(perm[start:stop])
        start = stop
    return out


def convert_census(input_path: str | os.PathLike, output: str | os.PathLike, seed: int = 0,
                   row_group_size: int = 8192) -> dict[str, int]:
    """Write output/{train,validation,test}/part-00000.parquet, output/vocabulary.json and output/stats.json (the
    train split's continuous statistics and bin boundaries, as `recap data stats` writes them); returns rows per
    split."""
    table, vocabularies = convert_table(read_census(input_path))
    sizes = {}
    progress = Progress("writing the census splits", table.num_rows)
    for split, rows in split_indices(table.num_rows, seed).items():
        directory = os.path.join(output, split)
        os.makedirs(directory, exist_ok=True)
        pq.write_table(table.take(pa.array(rows)), os.path.join(directory, "part-00000.parquet"),
                       row_group_size=row_group_size)
        sizes[split] = len(rows)
        progress.update(len(rows))
    progress.close()
    with open(os.path.join(output, "vocabulary.json"), "w") as f:
        json.dump({"source": os.path.basename(str(input_path)), "seed": seed, "splits": sizes,
                   "vocabularies": vocabularies}, f, indent=1)
    write_train_stats(output)
    return sizes


def write_train_stats(output: str | os.PathLike) -> str:
    """Write output/stats.json: continuous_stats of output/train over the CONTINUOUS columns; returns its path."""
    data = DataConfig.model_validate({
        "features": {"continuous": list(CONTINUOUS)},
        "tasks": {task: {"label": label} for task, label in TASK_LABELS.items()},
        "train": {"paths": [os.path.join(output, "train")]},
        "num_workers": 0,
    })
    stats = continuous_stats(data, data.train)
    path = os.path.join(output, STATS_FILE)
    with open(path, "w") as f:
        f.write(json.dumps(stats, indent=1) + "\n")
    return path
