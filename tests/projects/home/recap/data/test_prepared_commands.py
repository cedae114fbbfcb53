"""`recap data prepare` and `recap data benchmark` on the prepared layout, end to end on synthetic recap data (the
demo config's schema, oracle columns included): the prepared dataset gives the parquet data's batches, and the
benchmark measures both layouts in one run (speed itself is not asserted)."""

from __future__ import annotations

import re
import subprocess
import sys

import torch

from projects.home.recap.commands.data_benchmark import DEMO_CONFIG, CpuClock
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
                                                        ("prepared", "1")], out
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


# A process that burns `seconds` of CPU, says so, then waits for a line on stdin before it exits.
_BURN = ("import sys, time\nt = time.process_time()\nwhile time.process_time() - t < {seconds}: pass\n"
         "print('burned', flush=True)\nsys.stdin.readline()\n")
# A child that starts the burner as its own child, reports, and on a line on stdin ends and reaps it, staying alive.
_PARENT = ("import subprocess, sys\n"
           "g = subprocess.Popen([sys.executable, '-c', sys.argv[1]], stdin=subprocess.PIPE, stdout=subprocess.PIPE,"
           " text=True)\n"
           "g.stdout.readline(); print('ready', flush=True)\n"
           "sys.stdin.readline(); g.stdin.close(); g.wait(); print('reaped', flush=True)\nsys.stdin.readline()\n")


def test_cpu_clock_counts_work_since_its_start_and_never_goes_back():
    """A grandchild that used CPU before the clock started and ends during the measurement (reaped by its own
    parent, so its time leaves the live processes without reaching this process's RUSAGE_CHILDREN) must not make
    the figure negative; a child that works during the measurement is counted."""
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, _BURN.format(seconds=0.6)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "ready"
        clock = CpuClock()
        parent.stdin.write("\n")
        parent.stdin.flush()
        assert parent.stdout.readline().strip() == "reaped"
        assert 0.0 <= clock.seconds() < 0.4
    finally:
        parent.stdin.close()
        parent.wait(timeout=60)
    clock = CpuClock()
    worker = subprocess.Popen([sys.executable, "-c", _BURN.format(seconds=0.6)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert worker.stdout.readline().strip() == "burned"
    assert clock.seconds() >= 0.5  # alive: counted from /proc
    worker.stdin.close()
    worker.wait(timeout=60)
    assert clock.seconds() >= 0.5  # ended and reaped: counted from RUSAGE_CHILDREN
