"""The small data set of `recap benchmark baselines`: generated where there is none, reused when it is the same,
and never written among splits it did not write."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from projects.home.recap.baselines.datasets import ensure_small


def test_small_data_is_generated_reused_and_never_mixed_into_other_splits(tmp_path):
    made = ensure_small(tmp_path / "small", 300, seed=1)
    assert made["generated"] and sum(made["rows"].values()) == 300
    again = ensure_small(tmp_path / "small", 300, seed=1)
    assert not again["generated"] and again["rows"] == made["rows"]
    assert ensure_small(tmp_path / "small", 400, seed=1)["generated"]  # other rows: its own files rewritten
    theirs = tmp_path / "theirs"
    for split in ("train", "validation", "test"):
        (theirs / split).mkdir(parents=True)
        pq.write_table(pa.table({"x": [1, 2]}), theirs / split / "part-0.parquet")
    with pytest.raises(SystemExit, match=r"theirs holds parquet splits that `recap data generate-small` did not "
                                         r"write \(no _small_data.json\)"):
        ensure_small(theirs, 300, seed=1)
    assert sorted(p.name for p in (theirs / "train").iterdir()) == ["part-0.parquet"]
