"""`recap data prepare` and the prepared layout: the loader yields exactly the batches it yields from the parquet
source (every mode, rank, worker count, shuffle and resume position), prepare checks what the loader checks, and an
interrupted, partial, stale or mismatched prepared directory is an error that says so."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pytest
import torch

from common.batch import RecapBatch
from projects.home.recap.data import prepared, preparing
from projects.home.recap.data.errors import DataError
from projects.home.recap.data.loader import RecapDataLoader
from projects.home.recap.data.preparing import prepare

from .conftest import data_config, write_rows


def _with_nulls(n: int, start: int) -> dict:
    """Columns holding every kind of missing value the loader maps: NaN/inf and null continuous values, null
    discrete values, null id lists."""
    rid = np.arange(start, start + n)
    cont = rid.astype(np.float64)
    cont[rid % 7 == 1] = np.nan
    cont[rid % 11 == 2] = np.inf
    ids = [None if r % 5 == 3 else [10 * r + j for j in range(r % 3)] for r in rid]
    return {
        "scalar_cont": pa.array([None if r % 13 == 4 else v for r, v in zip(rid, cont)], pa.float64()),
        "disc": pa.array([None if r % 6 == 5 else int(r % 5) for r in rid], pa.int64()),
        "ids": pa.array(ids, pa.list_(pa.int64())),
    }


@pytest.fixture
def source(tmp_path):
    """Three files, 180 rows, uneven row groups, null values of every kind."""
    d = tmp_path / "source"
    d.mkdir()
    for name, start, n, group in (("f0", 0, 53, 10), ("f1", 53, 7, 7), ("f2", 60, 120, 33)):
        write_rows(d / f"{name}.parquet", start, n, group, **_with_nulls(n, start))
    return d


def _features(**changes) -> dict:
    return {**data_config(["x"]).features.model_dump(exclude_unset=True), **changes}


@pytest.fixture
def both(source, tmp_path):
    """(source directory, its prepared directory, with the weight column too)."""
    dst = tmp_path / "prepared"
    prepare(data_config([str(source)], features=_features(weight="w")), str(source), str(dst))
    return source, dst


def _equal(a: RecapBatch, b: RecapBatch) -> None:
    for name in ("continuous", "binary", "discrete", "embeddings", "labels", "weights"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert torch.equal(torch.nan_to_num(x, nan=-123.0), torch.nan_to_num(y, nan=-123.0)), name
        assert torch.equal(torch.isnan(x), torch.isnan(y)), name
    assert a.sparse.keys() == b.sparse.keys()
    assert torch.equal(a.sparse.values(), b.sparse.values()) and torch.equal(a.sparse.lengths(), b.sparse.lengths())
    assert a.ids.keys() == b.ids.keys()
    for key in a.ids:
        assert a.ids[key].dtype == b.ids[key].dtype and (a.ids[key] == b.ids[key]).all()


def _batches(paths, mode, rank=0, world_size=1, num_workers=0, epochs=1, **extra) -> tuple[list[RecapBatch], int]:
    data = data_config([str(p) for p in paths], **extra)
    loader = RecapDataLoader(data, data.train, ["b", "a"], mode, rank, world_size, batch_size=8,
                             num_workers=num_workers, repeat=False)
    out = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        out += list(loader)
    return out, loader.num_nonfinite


@pytest.mark.parametrize(
    ("mode", "world_size", "num_workers", "extra"),
    [
        ("train", 1, 0, {}),
        ("train", 2, 2, {"seed": 7}),
        ("train", 1, 1, {"shuffle_buffer_rows": 64, "weight": "w"}),  # row weights times downsampling weights
        ("eval", 2, 0, {}),
        ("predict", 1, 2, {}),
    ],
)
def test_batches_equal_the_parquet_paths(both, mode, world_size, num_workers, extra):
    extra = dict(extra)
    if "weight" in extra:
        extra["features"] = _features(weight=extra.pop("weight"))
    for rank in range(world_size):
        old, old_nonfinite = _batches([both[0]], mode, rank, world_size, num_workers, epochs=2, **extra)
        new, new_nonfinite = _batches([both[1]], mode, rank, world_size, num_workers, epochs=2, **extra)
        assert len(old) == len(new) > 0
        for a, b in zip(old, new):
            _equal(a, b)
        assert old_nonfinite == new_nonfinite > 0


def test_resume_position_is_the_same(both):
    def resumed(path):
        data = data_config([str(path)])
        loader = RecapDataLoader(data, data.train, ["a"], "train", batch_size=8, num_workers=2)
        iterator = iter(loader)
        for _ in range(5):
            next(iterator)
        state = loader.state_dict()
        again = RecapDataLoader(data, data.train, ["a"], "train", batch_size=8, num_workers=2)
        again.load_state_dict(state)
        return list(again)

    old, new = resumed(both[0]), resumed(both[1])
    assert len(old) == len(new) == 17  # 180 rows: 22 batches of 8, 5 already seen
    for a, b in zip(old, new):
        _equal(a, b)


def test_layout_and_manifest(both):
    _, dst = both
    manifest = json.loads((dst / prepared.MANIFEST).read_text())
    assert [e["row_groups"] for e in manifest["files"]] == [[10] * 5 + [3], [7], [33] * 3 + [21]]
    assert manifest["num_rows"] == 180
    assert {e["name"] for e in manifest["files"]} == {p.name for p in dst.glob("*.arrow")}
    assert manifest["files"][0]["null_discrete"] == {"disc": 8}
    with pa.memory_map(str(dst / "part-00000.arrow")) as f:
        schema = pa.ipc.open_file(f).schema
    assert schema.field("cont").type == pa.list_(pa.float32(), 3)
    assert schema.field("disc").type == pa.int64() and schema.field("label_a").type == pa.float32()
    assert schema.field("ids").type == pa.list_(pa.int64())  # sparse and id columns as read
    assert not (dst / prepared.PARTIAL_MANIFEST).exists()


def test_predict_data_without_labels(tmp_path):
    src = tmp_path / "unlabeled"
    src.mkdir()
    write_rows(src / "f.parquet", 0, 20, 8)
    table = pa.parquet.read_table(src / "f.parquet").drop_columns(["label_a", "label_b"])
    pa.parquet.write_table(table, src / "f.parquet", row_group_size=8)
    dst = tmp_path / "prepared"
    prepare(data_config([str(src)]), str(src), str(dst))
    data = data_config([str(dst)])
    batch = next(iter(RecapDataLoader(data, data.train, ["a"], "predict", batch_size=8)))
    assert torch.isnan(batch.labels).all() and (batch.weights == 0).all()
    with pytest.raises(DataError, match="label_a.*missing column"):
        RecapDataLoader(data, data.train, ["a"], "train", batch_size=8)


def test_prepare_checks_columns_and_values_like_the_loader(tmp_path):
    src = tmp_path / "bad"
    src.mkdir()
    write_rows(src / "f.parquet", 0, 20, 8, label_a=pa.array([2] + [0] * 19))
    with pytest.raises(DataError, match=r"f\.parquet.*'label_a'.*outside \{0, 1\}"):
        prepare(data_config([str(src)]), str(src), str(tmp_path / "out1"))
    write_rows(src / "f.parquet", 0, 20, 8, disc=pa.array([0.5] * 20))
    with pytest.raises(DataError, match=r"f\.parquet.*'disc'.*integers"):
        prepare(data_config([str(src)]), str(src), str(tmp_path / "out2"))
    data = data_config([str(src)], features=_features(binary=["missing"]))
    with pytest.raises(DataError, match=r"f\.parquet.*'missing'.*missing column"):
        prepare(data, str(src), str(tmp_path / "out3"))
    assert not (tmp_path / "out1" / prepared.MANIFEST).exists()


def test_interrupted_prepare_is_an_error_then_resumes(source, tmp_path, monkeypatch):
    dst = tmp_path / "prepared"
    real = preparing._prepare_file
    calls = []

    def failing(layout, src, target, *args):
        calls.append(target.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(layout, src, target, *args)

    monkeypatch.setattr(preparing, "_prepare_file", failing)
    with pytest.raises(KeyboardInterrupt):
        prepare(data_config([str(source)]), str(source), str(dst))
    data = data_config([str(dst)])
    with pytest.raises(DataError, match=r"partially prepared \(1 of 3 files"):
        RecapDataLoader(data, data.train, ["a"], "eval")
    first = (dst / "part-00000.arrow").stat().st_mtime_ns
    prepare(data_config([str(source)]), str(source), str(dst))  # started again: finishes what is missing
    assert calls[2:] == ["part-00001.arrow", "part-00002.arrow"]
    assert (dst / "part-00000.arrow").stat().st_mtime_ns == first
    assert RecapDataLoader(data, data.train, ["a"], "eval").num_rows == 180
    prepare(data_config([str(source)]), str(source), str(dst))  # done: nothing to do
    assert len(calls) == 4


def test_stale_truncated_or_mismatched_prepared_data_is_an_error(both):
    src, dst = both
    data = data_config([str(dst)])
    part = dst / "part-00001.arrow"
    content = part.read_bytes()
    part.write_bytes(content[:-100])
    with pytest.raises(DataError, match=r"part-00001\.arrow.*incomplete or was modified"):
        RecapDataLoader(data, data.train, ["a"], "eval")
    part.write_bytes(content)
    assert RecapDataLoader(data, data.train, ["a"], "eval").num_rows == 180

    features = _features()
    swapped = data_config([str(dst)], features={**features, "continuous": features["binary"],
                                                "binary": features["continuous"]})
    with pytest.raises(DataError, match=r"'bin'.*prepared as binary.*configured as continuous.*prepare"):
        RecapDataLoader(swapped, swapped.train, ["a"], "eval")

    os.utime(src / "f1.parquet", ns=(1, 1))
    with pytest.raises(DataError, match=r"stale prepared file.*f1\.parquet changed since it was prepared"):
        RecapDataLoader(data, data.train, ["a"], "eval")


def _mtimes(dst):
    return {p.name: p.stat().st_mtime_ns for p in dst.glob("part-*.arrow")}


def test_a_stale_prepared_copy_is_prepared_again_in_place(both):
    src, dst = both
    data = data_config([str(dst)])
    config = data_config([str(src)], features=_features(weight="w"))
    before = _mtimes(dst)
    write_rows(src / "f1.parquet", 53, 9, 4, **_with_nulls(9, 53))  # a changed file
    with pytest.raises(DataError, match=r"stale prepared file.*f1\.parquet changed"):
        RecapDataLoader(data, data.train, ["a"], "eval")
    prepare(config, str(src), str(dst))
    after = _mtimes(dst)
    assert after["part-00000.arrow"] == before["part-00000.arrow"]  # unchanged sources are not rewritten
    assert after["part-00001.arrow"] != before["part-00001.arrow"]
    assert RecapDataLoader(data, data.train, ["a"], "eval").num_rows == 182
    # A file removed from the source: noticed on open, and its prepared file goes when prepared again.
    (src / "f2.parquet").unlink()
    with pytest.raises(DataError, match=r"stale prepared dataset: .*1 file\(s\) removed \(.*f2\.parquet\)"):
        RecapDataLoader(data, data.train, ["a"], "eval")
    prepare(config, str(src), str(dst))
    assert sorted(_mtimes(dst)) == ["part-00000.arrow", "part-00001.arrow"]
    assert RecapDataLoader(data, data.train, ["a"], "eval").num_rows == 62


def test_a_file_added_to_the_source_is_noticed(both):
    src, dst = both
    data = data_config([str(dst)])
    write_rows(src / "f3.parquet", 180, 5, 5, **_with_nulls(5, 180))
    with pytest.raises(DataError, match=r"stale prepared dataset: its source .*source has 1 file\(s\) added "
                                        r"\(.*f3\.parquet\).*run `recap data prepare` again"):
        RecapDataLoader(data, data.train, ["a"], "eval")
    prepare(data_config([str(src)], features=_features(weight="w")), str(src), str(dst))
    assert RecapDataLoader(data, data.train, ["a"], "eval").num_rows == 185


def test_another_source_is_replaced_only_with_overwrite(both, tmp_path):
    src, dst = both
    other = tmp_path / "other"
    other.mkdir()
    write_rows(other / "g.parquet", 0, 11, 4, **_with_nulls(11, 0))
    with pytest.raises(DataError, match=r"another source .*; pass --overwrite to replace it"):
        prepare(data_config([str(other)]), str(other), str(dst))
    prepare(data_config([str(other)]), str(other), str(dst), overwrite=True)
    assert sorted(_mtimes(dst)) == ["part-00000.arrow"]
    data = data_config([str(dst)])
    assert RecapDataLoader(data, data.train, ["a"], "eval").num_rows == 11


def test_a_damaged_block_of_the_same_size_is_detected(tmp_path):
    src, dst = tmp_path / "big", tmp_path / "prepared"
    src.mkdir()
    write_rows(src / "f.parquet", 0, 20_000, 20_000, **_with_nulls(20_000, 0))
    prepare(data_config([str(src)]), str(src), str(dst))
    data = data_config([str(dst)])
    part = dst / "part-00000.arrow"
    content = bytearray(part.read_bytes())
    # A 4 KB block in the middle of the one record batch's values (its metadata and the footer are at the ends),
    # zeroed: same size, other values.
    start = len(content) // 2 // 4096 * 4096
    assert any(content[start:start + 4096])
    content[start:start + 4096] = bytes(4096)
    part.write_bytes(bytes(content))
    loader = RecapDataLoader(data, data.train, ["a"], "eval")
    with pytest.raises(DataError, match=r"part-00000\.arrow.*does not match its checksum.*prepare` again"):
        list(loader)


def test_destination_must_be_empty_or_prepared(source, tmp_path):
    dst = tmp_path / "busy"
    dst.mkdir()
    (dst / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty and not a prepared dataset"):
        prepare(data_config([str(source)]), str(source), str(dst))
    out = tmp_path / "prepared"
    prepare(data_config([str(source)]), str(source), str(out))
    with pytest.raises(DataError, match="already a prepared dataset"):
        prepare(data_config([str(out)]), str(out), str(tmp_path / "again"))


def test_compressed_prepared_layout_gives_the_same_batches(source, tmp_path):
    dst = tmp_path / "lz4"
    prepare(data_config([str(source)]), str(source), str(dst), compression="lz4")
    old, _ = _batches([source], "train", num_workers=0, epochs=1)
    new, _ = _batches([dst], "train", num_workers=0, epochs=1)
    assert len(old) == len(new) > 0
    for a, b in zip(old, new):
        _equal(a, b)
