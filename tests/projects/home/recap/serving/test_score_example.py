"""score_example.py, run from the artifact directory with torch / numpy / pyarrow only, scores a parquet file as the
trained model scores the same file read by the training data loader."""

import json
import subprocess
import sys
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from projects.home.recap.data.config import DatasetConfig
from projects.home.recap.data.loader import RecapDataLoader
from projects.home.recap.predict import prediction_columns
from projects.home.recap.serving.score_example import table_inputs

ROWS = 23


def _id_lists(rng: np.random.Generator, rows: int, null_every: int) -> pa.Array:
    lists = [rng.integers(-(2**50), 2**50, size=rng.integers(0, 4)).tolist() for _ in range(rows)]
    for i in range(0, rows, null_every):
        lists[i] = None  # a null list counts as no ids
    return pa.array(lists, type=pa.list_(pa.int64()))


def _as_strings(ids: pa.Array) -> pa.Array:
    """The same ids as text ("id-<n>"): the loader and the scorer hash strings into ids alike."""
    if pa.types.is_list(ids.type):
        return pa.array([None if v is None else [f"id-{x}" for x in v] for v in ids.to_pylist()],
                        pa.list_(pa.string()))
    return pa.array([None if v is None else f"id-{v}" for v in ids.to_pylist()], pa.large_string())


def _table(rows: int = ROWS, string_ids: bool = False) -> pa.Table:
    rng = np.random.default_rng(0)
    ratio = rng.exponential(3.0, rows).tolist()
    ratio[2] = None
    ratio[3] = float("nan")
    country = rng.integers(-3, 9, rows).tolist()
    country[4] = None
    counts = rng.lognormal(0.0, 3.0, (rows, 5)).astype(np.float32)
    author_ids = rng.integers(-(2**40), 2**40, rows).tolist()
    author_ids[6] = None
    table = pa.table(
        {
            "impression_id": [f"r{i}" for i in range(rows)],
            "counts": pa.FixedSizeListArray.from_arrays(pa.array(counts.ravel()), 5),
            "ratio": pa.array(ratio, type=pa.float64()),
            "flags": pa.array((rng.random((rows, 3)) < 0.4).astype(np.float32).tolist(), type=pa.list_(pa.float32())),
            "country": pa.array(country, type=pa.int64()),
            "position": rng.integers(0, 12, rows),
            "hour": rng.integers(0, 24, rows),
            "user_id": _id_lists(rng, rows, 5),
            "unused_ids": _id_lists(rng, rows, 7),
            "hashtags": _id_lists(rng, rows, 3),
            "author_id": pa.array(author_ids, type=pa.int64()),  # one id per row; a null is no id
            "user_embedding": pa.array(rng.normal(size=(rows, 4)).astype(np.float32).tolist()),
            "tweet_embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(rng.normal(size=rows * 3).astype(np.float32)), 3
            ),
        }
    )
    if string_ids:  # with a decimal continuous column too (null for NaN): column types users' files have
        for name in ("author_id", "hashtags"):
            table = table.set_column(table.schema.get_field_index(name), name, _as_strings(table.column(name)))
        ratio = [None if v is None or v != v else round(v, 4) for v in table.column("ratio").to_pylist()]
        decimals = pa.array([None if v is None else Decimal(f"{v:.4f}") for v in ratio], pa.decimal128(12, 4))
        table = table.set_column(table.schema.get_field_index("ratio"), "ratio", decimals)
    return table


@pytest.mark.parametrize("string_ids", [False, True])
def test_example_script_scores_a_parquet_file_like_the_model(model, config, artifact, torch_only_prelude, tmp_path,
                                                             string_ids):
    table = _table(string_ids=string_ids)
    pq.write_table(table, tmp_path / "input.parquet")
    script = torch_only_prelude + f"""
import runpy
sys.argv = ["score_example.py", {str(artifact)!r}, "input.parquet", "--output", "scores.parquet", "--batch-size", "5"]
try:
    runpy.run_path({str(artifact / "score_example.py")!r}, run_name="__main__")
except SystemExit as exit:
    assert exit.code == 0, exit.code
assert_torch_only()
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"scored {ROWS} rows" in done.stdout
    scores = pq.read_table(tmp_path / "scores.parquet")
    assert scores.column_names == ["impression_id"] + [
        f"{task}.{kind}" for task in ("fav", "report", "reply") for kind in ("logit", "probability", "calibrated")
    ] + ["score"]
    # The columns `recap predict` writes, under the same names.
    assert set(prediction_columns(["fav", "report", "reply"], scored=True)) <= set(scores.column_names)
    assert scores.column("impression_id").to_pylist() == table.column("impression_id").to_pylist()

    # The training loader's reading of the same rows, through the trained model.
    dataset = DatasetConfig(paths=[str(tmp_path / "input.parquet")])
    [batch] = RecapDataLoader(config.data, dataset, model.task_names, "predict", batch_size=ROWS, num_workers=0)
    with torch.no_grad():
        expected = model(batch)
    for key, kind in (("logits", "logit"), ("probabilities", "probability"), ("calibrated_probabilities", "calibrated")):
        got = np.stack([scores.column(f"{t}.{kind}").to_numpy() for t in model.task_names], axis=1)
        torch.testing.assert_close(torch.from_numpy(got), expected[key], rtol=0, atol=1e-5, msg=key)
    torch.testing.assert_close(torch.from_numpy(scores.column("score").to_numpy()), expected["score"], rtol=0,
                               atol=234 * 1e-5)


def test_example_script_names_bad_columns(artifact):
    metadata = json.loads((artifact / "metadata.json").read_text())
    with pytest.raises(ValueError, match="in.parquet: column 'hashtags' is missing"):
        table_inputs(_table().drop_columns(["hashtags"]), metadata, "in.parquet")
    short = _table().set_column(
        1, "counts", pa.array([[1.0, 2.0]] * ROWS, type=pa.list_(pa.float32()))
    )
    with pytest.raises(ValueError, match="column 'counts' has lists of length 2..2, the model reads 5"):
        table_inputs(short, metadata, "in.parquet")
    fractions = _table().set_column(10, "author_id", pa.array(np.linspace(0.0, 1.0, ROWS)))
    assert fractions.column_names[10] == "author_id"
    with pytest.raises(ValueError, match="in.parquet: column 'author_id': type double cannot hold sparse ids: need "
                                         "integer or string ids"):
        table_inputs(fractions, metadata, "in.parquet")
