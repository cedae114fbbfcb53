"""`recap data prepare` and `recap data benchmark` on the prepared layout, end to end on synthetic recap data (the
demo config's schema, oracle columns included): the prepared dataset gives the parquet data's batches, and the
benchmark measures both layouts in one run (speed itself is not asserted)."""

from __future__ import annotations

import re

import torch

from projects.home.recap.commands.data_benchmark import DEMO_CONFIG
from projects.home.recap.data.loader import RecapDataLoader
from projects.home.recap.data.synthetic import generate
from projects.home.recap.main import main
from projects.home.recap.schema import load_recap_config


def test_prepare_command_then_train_batches_are_equal(tmp_path, capsys):
    generate(tmp_path / "data", 3000, seed=3, processes=1)
    src, dst = tmp_path / "data" / "train", tmp_path / "prepared"
    assert main(["data", "prepare", str(src), str(dst)]) == 0
    assert re.search(r"prepared: [\d,]+ rows in \d+ files", capsys.readouterr().out)
    batches = {}
    for name, path in (("parquet", src), ("prepared", dst)):
        config = load_recap_config(str(DEMO_CONFIG), [f"data.train.paths=[{path}]"])
        loader = RecapDataLoader(config.data, config.data.train, list(config.model.tasks), "train", 1, 2,
                                 batch_size=128, num_workers=1)
        batches[name] = list(loader)
    assert len(batches["parquet"]) == len(batches["prepared"]) > 5
    for a, b in zip(batches["parquet"], batches["prepared"]):
        assert a.oracle is not None and torch.equal(a.oracle, b.oracle)
        for part in ("continuous", "binary", "discrete", "embeddings", "labels", "weights"):
            assert torch.equal(getattr(a, part).nan_to_num(7.0), getattr(b, part).nan_to_num(7.0)), part
        assert torch.equal(a.sparse.values(), b.sparse.values())
        assert torch.equal(a.sparse.lengths(), b.sparse.lengths())
        assert all((a.ids[k] == b.ids[k]).all() for k in a.ids)


def test_benchmark_measures_both_layouts_in_one_run(capsys):
    assert main(["data", "benchmark", "--generate", "3000", "--num-workers", "0", "1", "--batch-size", "256",
                 "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"prepared [\d,]+ rows in [\d.]+ s", out)
    lines = re.findall(r"num_workers=(\d) epoch (\d)(, prepared)?: [\d,]+ rows/s \((\d+) batches", out)
    assert [(w, e, bool(p), int(n)) for w, e, p, n in lines] == [
        (w, e, p, 10) for w in "01" for p in (False, True) for e in "01"
    ]
    table = re.findall(r"^(parquet|prepared)\s+(\d)\s+[\d,]+\s+[\d.]+\s+(\S+)$", out, re.MULTILINE)
    assert [(layout, w) for layout, w, _ in table] == [("parquet", "0"), ("prepared", "0"), ("parquet", "1"),
                                                        ("prepared", "1")]
    assert all(r.endswith("x") for _, _, r in table)


def test_prepare_errors_are_one_line_naming_what_and_where(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["data", "prepare", str(missing), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("recap data prepare: ") and str(missing) in err
    assert "no such file or directory" in err and "Traceback" not in err

    generate(tmp_path / "data", 300, seed=3, processes=1)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    assert main(["data", "prepare", str(tmp_path / "data" / "train"), str(blocker)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(blocker) in err and "Traceback" not in err

    dst = tmp_path / "prepared"
    assert main(["data", "prepare", str(tmp_path / "data" / "train"), str(dst)]) == 0
    capsys.readouterr()
    assert main(["data", "prepare", str(tmp_path / "data" / "test"), str(dst)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(dst) in err and "--overwrite" in err
    assert main(["data", "prepare", str(tmp_path / "data" / "test"), str(dst), "--overwrite"]) == 0
