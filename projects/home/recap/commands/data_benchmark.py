"""`recap data benchmark [--config FILE]`: rows/s of batches the loader delivers, per num_workers setting and layout.

Uses the config's training data, or data written to a temporary directory (--generate ROWS, default when the
configured data does not exist: the synthetic generator's for the demo config, random values in the config's schema
for any other, as `recap benchmark` writes). The parquet data is also prepared (`recap data prepare`) into a temporary
directory, and both layouts are measured side by side, alternating, for each num_workers setting: figures from one run
compare even when other jobs share the cores. Prints wall-clock rows/s and the CPU time (loader process plus its
workers) per million rows; compare with the training throughput (`recap benchmark`): the loader should be several
times faster.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from projects.home.recap.data.files import resolve_paths
from projects.home.recap.data.loader import RecapDataLoader
from projects.home.recap.data.preparing import prepare
from projects.home.recap.data.synthetic import generate
from projects.home.recap.schema import load_recap_config

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "config" / "demo.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=str(DEMO_CONFIG), help="experiment YAML (default: the demo config)")
    parser.add_argument("--generate", type=int, metavar="ROWS",
                        help="benchmark on ROWS synthetic rows in a temporary directory (demo schema)")
    parser.add_argument("--num-workers", type=int, nargs="+", default=[0, 1, 2],
                        help="DataLoader worker counts to measure (default: 0 1 2)")
    parser.add_argument("--batch-size", type=int, help="default: data.batch_size")
    parser.add_argument("--max-batches", type=int, help="stop an epoch after this many batches")
    parser.add_argument("--epochs", type=int, default=2,
                        help="epochs per setting (default 2: the first includes starting workers)")
    parser.add_argument("--layouts", nargs="+", choices=["parquet", "prepared"], default=["parquet", "prepared"],
                        help="layouts to measure (default both: the parquet data and its prepared copy)")
    parser.add_argument("--train-rows-per-second", type=float,
                        help="training throughput to compare with (prints the ratio)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")


def _live_cpu(pid: int, parent: int, out: dict[int, tuple[float, int]]) -> dict[int, tuple[float, int]]:
    """pid -> (CPU seconds, parent pid) of a live process and its live descendants (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out[pid] = ((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), parent)
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for child in f.read().split():
                    _live_cpu(int(child), pid, out)
    except (OSError, ValueError, IndexError):  # the process ended meanwhile
        pass
    return out


def _reaped_cpu() -> float:
    exited = resource.getrusage(resource.RUSAGE_CHILDREN)
    return exited.ru_utime + exited.ru_stime


class CpuClock:
    """CPU seconds of this process and its descendants (DataLoader workers, a writer's process pool) since the
    clock was made, whether they run on, started or ended in between.

    On Linux each live process counts what it used since the start (all of it if it started since); a child that
    ended and was reaped counts through RUSAGE_CHILDREN, less what it had used before the start. A process that
    ends during a measurement therefore never makes the figure smaller (summing the live processes at both ends
    would: its time would leave the sum)."""

    def __init__(self) -> None:
        self._linux = os.path.exists("/proc/self/stat")
        self._start = _live_cpu(os.getpid(), os.getppid(), {}) if self._linux else {}
        self._reaped = _reaped_cpu()
        self._own = self._self_cpu()

    @staticmethod
    def _self_cpu() -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        return own.ru_utime + own.ru_stime

    def seconds(self) -> float:
        reaped = _reaped_cpu() - self._reaped
        if not self._linux:
            return self._self_cpu() - self._own + reaped
        me = os.getpid()
        end = _live_cpu(me, os.getppid(), {})
        live = sum(max(0.0, cpu - self._start.get(pid, (0.0, 0))[0]) for pid, (cpu, _) in end.items())
        before = sum(cpu for pid, (cpu, parent) in self._start.items() if pid not in end and parent == me)
        return live + max(0.0, reaped - before)


def measure(loader: RecapDataLoader, max_batches: int | None) -> dict:
    """Iterate one epoch; wall time, rows, CPU seconds and time to the first batch."""
    rows = batches = 0
    first = None
    cpu, start = CpuClock(), time.perf_counter()
    for batch in loader:
        if first is None:
            first = time.perf_counter() - start
        rows += batch.batch_size
        batches += 1
        if max_batches is not None and batches >= max_batches:
            break
    seconds = time.perf_counter() - start
    return {"rows": rows, "batches": batches, "seconds": seconds, "first_batch_seconds": first or 0.0,
            "cpu_seconds": cpu.seconds()}


def _write_data(config_path: str, overrides: list[str], rows: int, directory: str) -> list[str]:
    """Overrides pointing data.train at `rows` new rows in `directory`: synthetic recap data for the demo config,
    random values in the config's schema otherwise."""
    if Path(config_path).resolve() == DEMO_CONFIG:
        generate(directory, rows, seed=0, processes=min(2, os.cpu_count() or 1))
        return [f"data.train.paths=[{directory}/train]"]
    from projects.home.recap.benchmarks.schema_data import write_schema_parquet

    config = load_recap_config(config_path, overrides)
    write_schema_parquet(config, Path(directory) / "train" / "part-00000.parquet", rows)
    return [f"data.train.paths=[{directory}/train]"]


def _rate_line(layout: str, workers: int, epoch: int, m: dict, batch_size: int, train_rate: float | None) -> str:
    rate = m["rows"] / m["seconds"]
    tag = "" if layout == "parquet" else f", {layout}"
    line = (f"num_workers={workers} epoch {epoch}{tag}: {rate:,.0f} rows/s ({m['batches']} batches of "
            f"{batch_size} in {m['seconds']:.2f} s, first after {m['first_batch_seconds']:.2f} s; "
            f"{m['cpu_seconds'] / max(m['rows'], 1) * 1e6:.2f} CPU-s per million rows)")
    if train_rate:
        line += f"; {rate / train_rate:.1f}x training"
    return line


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="recap-bench-") as tmp:
        overrides = list(args.overrides)
        config = load_recap_config(args.config, overrides)
        needs_data = args.generate is not None
        if not needs_data:
            try:
                resolve_paths(config.data.train.paths)
            except ValueError:
                needs_data = True
        if needs_data:
            rows = args.generate or 500_000
            print(f"writing {rows} rows to {tmp} ...", flush=True)
            overrides += _write_data(args.config, overrides, rows, tmp)
            config = load_recap_config(args.config, overrides)
        data = config.data
        tasks = list(config.model.tasks)
        batch_size = args.batch_size or data.batch_size
        print(f"schema: {data.features.num_continuous} continuous, {data.features.num_binary} binary, "
              f"{data.features.num_discrete} discrete, {len(data.features.sparse)} sparse, "
              f"{len(data.features.embeddings)} embeddings, {len(tasks)} tasks; batch size {batch_size}")
        datasets = {"parquet": data.train}
        if "prepared" in args.layouts:
            if len(data.train.paths) != 1:
                raise SystemExit(f"the prepared layout: data.train has {len(data.train.paths)} paths, `recap data "
                                 "prepare` reads one (a file, directory or glob); use --layouts parquet")
            target = os.path.join(tmp, "prepared")
            start, cpu = time.perf_counter(), CpuClock()
            manifest = prepare(data, data.train.paths[0], target)
            seconds = time.perf_counter() - start
            print(f"prepared {manifest['num_rows']:,} rows in {seconds:.1f} s ({manifest['num_rows'] / seconds:,.0f} "
                  f"rows/s, {cpu.seconds() / max(manifest['num_rows'], 1) * 1e6:.2f} CPU-s per million "
                  "rows)", flush=True)
            datasets["prepared"] = data.train.model_copy(update={"paths": [target]})
        best: dict[tuple[str, int], tuple[float, float]] = {}  # (layout, workers) -> (rows/s, CPU-s per M rows)
        for workers in args.num_workers:
            # Alternating layouts at each setting: a change in the machine's load affects both alike.
            for layout in args.layouts:
                loader = RecapDataLoader(data, datasets[layout], tasks, "train", 0, 1, batch_size,
                                         num_workers=workers)
                for epoch in range(args.epochs):
                    loader.set_epoch(epoch)
                    m = measure(loader, args.max_batches)
                    print(_rate_line(layout, workers, epoch, m, batch_size, args.train_rows_per_second), flush=True)
                    if epoch or args.epochs == 1:  # the first epoch starts the workers
                        key = (layout, workers)
                        figures = (m["rows"] / m["seconds"], m["cpu_seconds"] / max(m["rows"], 1) * 1e6)
                        best[key] = max(best.get(key, figures), figures)
                del loader
        print("\nbest epoch after the first:")
        print(f"{'layout':<9} {'num_workers':>11} {'rows/s':>10} {'CPU-s per M rows':>17} {'vs parquet':>11}")
        for (layout, workers), (rate, cpu) in best.items():
            base = best.get(("parquet", workers))
            ratio = f"{rate / base[0]:.2f}x" if base else "-"
            print(f"{layout:<9} {workers:>11} {rate:>10,.0f} {cpu:>17.2f} {ratio:>11}")
    return 0

