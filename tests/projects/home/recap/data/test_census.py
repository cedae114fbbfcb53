"""`recap data census` on the shared UCI Census-Income (KDD) file, and the shipped census config."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from projects.home.recap.data.census import CONTINUOUS, DISCRETE, convert_census
from projects.home.recap.data.errors import DataError
from projects.home.recap.data.loader import RecapDataLoader, validate_dataset
from projects.home.recap.main import main
from projects.home.recap.model.factory import build_model_and_loss
from projects.home.recap.schema import load_recap_config

ROOT = Path(__file__).parents[5]
CONFIG = ROOT / "projects/home/recap/config/census.yaml"
CANDIDATES = [ROOT.parent / "shared/data/census-income-kdd/census-income.test.gz",
              Path("/work/shared/data/census-income-kdd/census-income.test.gz")]
CENSUS = next((p for p in CANDIDATES if p.exists()), None)
needs_file = pytest.mark.skipif(CENSUS is None, reason="the shared census-income.test.gz is not present")

# Two rows in the file's format: a 58-year-old self-employed married man earning over 50k, a never married child.
ROWS = [
    "58, Self-employed-not incorporated, 4, 34, Some college but no degree, 0, Not in universe, "
    "Married-civilian spouse present, Construction, Precision production craft & repair, White, All other, Male, "
    "Not in universe, Not in universe, Children or Armed Forces, 0, 0, 0, Head of household, South, Arkansas, "
    "Householder, Householder, 1053.55, MSA to MSA, Same county, Same county, No, Yes, 1, Not in universe, "
    "United-States, United-States, United-States, Native- Born in the United States, 0, Not in universe, 2, 52, "
    "94, 50000+.",
    "9, Not in universe, 0, 0, Children, 0, Not in universe, Never married, Not in universe or children, "
    "Not in universe, White, All other, Female, Not in universe, Not in universe, Children or Armed Forces, 0, 0, "
    "0, Nonfiler, Not in universe, Not in universe, Child <18 never marr not in subfamily, "
    "Child under 18 never married, 1758.14, Nonmover, Nonmover, Nonmover, Yes, Not in universe, 0, "
    "Both parents present, United-States, United-States, United-States, Native- Born in the United States, 0, "
    "Not in universe, 0, 0, 95, - 50000.",
]


def test_hand_checked_rows(tmp_path):
    src = tmp_path / "mini.gz"
    with gzip.open(src, "wt") as f:
        f.write("\n".join(ROWS * 10) + "\n")
    sizes = convert_census(src, tmp_path / "out", seed=1)
    assert sizes == {"train": 16, "validation": 2, "test": 2}
    table = pa.concat_tables([pq.read_table(tmp_path / "out" / s) for s in ("train", "validation", "test")])
    rows = {r["row_id"] % 2: r for r in table.to_pylist()}
    adult, child = rows[0], rows[1]
    assert (adult["income_50k"], adult["never_married"], adult["age"]) == (1, 0, 58.0)
    assert (child["income_50k"], child["never_married"], child["age"]) == (0, 1, 9.0)
    assert adult["instance_weight"] == pytest.approx(1053.55)
    assert "education" not in table.column_names and "marital_stat" not in table.column_names
    vocab = json.loads((tmp_path / "out/vocabulary.json").read_text())["vocabularies"]
    assert vocab["year"][adult["year"]] == "94" and vocab["year"][child["year"]] == "95"
    assert vocab["detailed_industry_recode"][adult["detailed_industry_recode"]] == "4"
    # The train split's statistics: train holds both rows (16 rows: 8 of each, split seed 1).
    stats = json.loads((tmp_path / "out/stats.json").read_text())
    train = pq.read_table(tmp_path / "out/train").to_pylist()
    assert stats["columns"] == list(CONTINUOUS) and stats["count"] == 16
    assert {r["age"] for r in train} == {9.0, 58.0}
    assert stats["boundaries"][0] == [9.0, 58.0] and stats["boundaries"][CONTINUOUS.index("weeks_worked_in_year")] \
        == [0.0, 52.0]
    assert stats["mean"][0] == pytest.approx(np.mean([np.log1p(r["age"]) for r in train]))


def test_bad_income_value_is_named(tmp_path):
    src = tmp_path / "bad.csv"
    src.write_text(ROWS[0].replace("50000+.", "lots") + "\n")
    with pytest.raises(DataError, match="column 'income': unexpected income value 'lots'"):
        convert_census(src, tmp_path / "out")


@needs_file
def test_shared_file_converts_to_three_splits_and_trains_with_the_config(tmp_path, monkeypatch, capsys):
    out = tmp_path / "census"
    assert main(["data", "census", "--input", str(CENSUS), "--output", str(out)]) == 0
    assert "total: 99762 rows" in capsys.readouterr().out
    counts = {s: pq.ParquetFile(out / s / "part-00000.parquet").metadata.num_rows
              for s in ("train", "validation", "test")}
    assert sum(counts.values()) == 99_762
    assert abs(counts["train"] - 0.8 * 99_762) < 2 and abs(counts["test"] - 0.1 * 99_762) < 2
    ids = np.concatenate([pq.read_table(out / s, columns=["row_id"]).column(0).to_numpy() for s in counts])
    assert len(np.unique(ids)) == 99_762  # a partition: no row in two splits

    monkeypatch.setenv("RECAP_DATA_DIR", str(out))
    config = load_recap_config(CONFIG)
    tasks = list(config.model.tasks)
    assert tasks == ["income_50k", "never_married"]
    for dataset in [config.data.train, *config.data.validation.values()]:
        validate_dataset(config.data, dataset, tasks)
    vocab = json.loads((out / "vocabulary.json").read_text())["vocabularies"]
    tables = {e.feature: e.num_embeddings for e in config.model.small_embeddings}
    assert set(tables) == set(DISCRETE)
    assert all(len(vocab[name]) <= tables[name] for name in DISCRETE)
    loader = RecapDataLoader(config.data, config.data.validation["test"], tasks, "eval", batch_size=20_000)
    labels = np.concatenate([b.labels.numpy() for b in loader])
    assert 0.03 < labels[:, 0].mean() < 0.1 and 0.35 < labels[:, 1].mean() < 0.5
    assert os.path.basename(CENSUS) in (out / "vocabulary.json").read_text()

    # The config's numeric embeddings read DATA_DIR/stats.json, written by the conversion: the model builds and
    # trains a step on a real batch.
    stats = json.loads((out / "stats.json").read_text())
    assert stats["columns"] == list(CONTINUOUS) and stats["count"] == counts["train"]
    assert all(len(b) >= 2 for b in stats["boundaries"])
    assert config.model.numeric_embeddings.stats_path == str(out / "stats.json")
    torch.manual_seed(0)
    model_and_loss = build_model_and_loss(config)
    assert model_and_loss.model.dense.numeric_embeddings.output_dim > 0
    batch = next(iter(RecapDataLoader(config.data, config.data.train, tasks, "train", batch_size=256)))
    loss, outputs = model_and_loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and outputs["logits"].shape == (256, 2)
