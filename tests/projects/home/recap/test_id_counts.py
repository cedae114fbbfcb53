"""`recap data ids`: distinct ids per large table (exact below the sketch size, estimated beyond), string ids counted
as the loader hashes them, and the expected share of ids sharing a table row."""

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from projects.home.recap.baselines.small_data import generate_small
from projects.home.recap.benchmarks.config_benchmark import CONFIG_DIR
from projects.home.recap.commands.data_ids import add_arguments, run
from projects.home.recap.id_counts import DistinctIds, count_ids, shared_row_share
from projects.home.recap.schema import load_recap_config


def test_the_sketch_is_exact_below_its_size_and_close_beyond():
    rng = np.random.default_rng(0)
    small = DistinctIds(k=1024)
    draws = rng.integers(0, 900, 50_000)
    for part in np.array_split(draws, 7):
        small.add(part)
    assert small.estimate() == len(np.unique(draws)) and small.ids == len(draws)
    exact = DistinctIds(k=1024)
    exact.add(np.arange(1000))
    exact.add(np.arange(500, 1000))  # repeats are not counted again
    assert exact.estimate() == 1000 and exact.ids == 1500
    big = DistinctIds(k=4096)
    ids = rng.integers(-(2**62), 2**62, 300_000)
    for part in np.array_split(np.concatenate([ids, ids[:100_000]]), 13):
        big.add(part)
    assert abs(big.estimate() / len(np.unique(ids)) - 1) < 0.05


def test_shared_row_share_is_the_birthday_share():
    assert shared_row_share(1, 10) == 0.0
    assert shared_row_share(10_000, 10_000) == pytest.approx(1 - math.exp(-1), abs=1e-3)
    assert shared_row_share(10_000, 40_000) == pytest.approx(1 - math.exp(-0.25), abs=1e-3)


def test_count_ids_per_table_with_string_and_integer_ids(tmp_path, monkeypatch, capsys):
    generate_small(tmp_path, 4_000, seed=0)
    train = tmp_path / "train" / "part-00000.parquet"
    table = pq.read_table(train)
    users = table.column("user_id").to_numpy()
    # The item ids as strings, into a hashed table of 16x the items.
    items = pa.array([f"item-{i}" for i in table.column("item_id").to_numpy()])
    pq.write_table(table.set_column(table.schema.get_field_index("item_id"), "item_id", items), train)
    monkeypatch.setenv("RECAP_DATA_DIR", str(tmp_path))
    overrides = ["model.large_embeddings=[{name: user, feature_names: [user_id], num_embeddings: 1000, embedding_dim: 4,"
                 " id_transform: mod}, {name: item, feature_names: [item_id], num_embeddings: 32000, embedding_dim: 4},"
                 " {name: tag, feature_names: [item_tags], num_embeddings: 50, embedding_dim: 4}]"]
    config = load_recap_config(CONFIG_DIR / "small.yaml", overrides)
    counts = count_ids(config, config.data.train.paths)
    assert counts["rows"] == table.num_rows
    user, item, tag = (counts["tables"][name] for name in ("user", "item", "tag"))
    assert user["distinct"] == len(np.unique(users)) and user["distinct_exact"] and not user["strings"]
    assert user["shared_rows"] == 0.0  # mod, every id in [0, 1000)
    assert item["distinct"] == len(np.unique(table.column("item_id").to_numpy())) and item["strings"]
    assert item["shared_rows"] == pytest.approx(shared_row_share(item["distinct"], 32000))
    assert 0 < item["shared_rows"] < 0.1
    tags = table.column("item_tags").combine_chunks()
    assert tag["ids"] == len(tags.flatten()) and tag["distinct"] == len(np.unique(tags.flatten().to_numpy()))
    assert tag["shared_rows"] > 0.5  # ~200 tags in a table of 50 rows taken modulo: counted as hashed
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    output = tmp_path / "ids.json"
    args = parser.parse_args(["--config", str(CONFIG_DIR / "small.yaml"), "--output", str(output),
                              *[f"--set={o}" for o in overrides]])
    assert run(args) == 0
    printed = capsys.readouterr().out
    assert f"{table.num_rows:,} rows" in printed and "item_id (strings)" in printed
    assert json.loads(output.read_text())["tables"]["item"]["distinct"] == item["distinct"]
    with pytest.raises(SystemExit, match=r"--dataset nope: not configured \(train, validation, test\)"):
        run(parser.parse_args(["--config", str(CONFIG_DIR / "small.yaml"), "--dataset", "nope"]))
