"""`recap benchmark` at a tiny size (every phase and figure, including a real 2-rank torchrun launch; no speed
assertions), the temporary parquet it reads, and the recap-scale config it measures."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from projects.home.recap.benchmark import CONFIG_DIR, write_schema_parquet
from projects.home.recap.data.config import DatasetConfig
from projects.home.recap.data.loader import RecapDataLoader
from projects.home.recap.model.factory import build_model
from projects.home.recap.model.parameter_groups import dense_parameter_groups
from projects.home.recap.schema import load_recap_config

ROOT = Path(__file__).resolve().parents[4]


@pytest.mark.slow
def test_quick_benchmark_prints_and_writes_every_figure(tmp_path):
    output = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "projects.home.recap.main", "benchmark", "--quick", "--torchrun", "2",
         "--output", str(output)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for heading in ("peak GF/s", "train ex/s", "MFU", "eval ex/s", "loader rows/s", "pipeline ex/s", "vs memory",
                    "worker RSS MB", "2-rank ex/s", "load average"):
        assert heading in proc.stdout
    doc = json.loads(output.read_text())
    assert doc["machine"]["logical_cpus"] >= 1 and len(doc["machine"]["load_average"]) == 3
    demo = doc["configs"]["demo"]
    assert demo["input_features"] == 48 + 16 + 32 + 32 + 16 + 3 * 4 + 4 + 16 + 16 + 8
    for precision in ("fp32", "bf16"):
        peak = demo["peak"][precision]
        assert peak["gflops_per_second"] == max(s["gflops_per_second"] for s in peak["per_shape"].values())
        train = demo["train"][precision]
        assert train["gflops_per_second"] == pytest.approx(
            train["examples_per_second"] * demo["flops_per_example"][precision] / 1e9)
        assert train["mfu"] == pytest.approx(train["gflops_per_second"] / peak["gflops_per_second"])
        assert train["peak_rss_bytes"] > 0
        assert demo["eval"][precision]["vs_train"] == pytest.approx(
            demo["eval"][precision]["examples_per_second"] / train["examples_per_second"])
    loader = demo["loader"]
    assert loader["rows_per_second"] > 0 and loader["num_workers"] == 1 and loader["worker_peak_rss_bytes"] > 0
    pipeline = demo["pipeline"]
    assert pipeline["vs_in_memory"] == pytest.approx(
        pipeline["examples_per_second"] / demo["train"][pipeline["precision"]]["examples_per_second"])
    ranks = demo["torchrun"]
    assert "error" not in ranks, ranks.get("error")
    assert ranks["world_size"] == 2 and len(ranks["per_rank_examples_per_second"]) == 2
    assert ranks["examples_per_second"] == pytest.approx(sum(ranks["per_rank_examples_per_second"]))


def test_schema_parquet_is_read_by_the_loader(tmp_path):
    config = load_recap_config(CONFIG_DIR / "demo.yaml")
    path = write_schema_parquet(config, tmp_path / "train" / "part-00000.parquet", rows=300, row_group_rows=128)
    data = config.data.model_copy(update={"train": DatasetConfig(paths=[str(path.parent)])})
    tasks = list(config.model.tasks)
    loader = RecapDataLoader(data, data.train, tasks, "eval", batch_size=128, num_workers=0)
    batches = list(loader)
    assert [b.batch_size for b in batches] == [128, 128, 44]
    f = config.data.features
    batch = batches[0]
    assert batch.continuous.shape == (128, f.num_continuous) and batch.binary.shape == (128, f.num_binary)
    assert batch.discrete.shape == (128, f.num_discrete)
    assert batch.embeddings.shape == (128, sum(e.dim for e in f.embeddings))
    assert batch.labels.shape == (128, len(tasks)) and set(batch.labels.unique().tolist()) <= {0.0, 1.0}
    assert batch.sparse.keys() == list(f.sparse)


def test_recap_scale_config_has_the_documented_shape():
    config = load_recap_config(CONFIG_DIR / "recap_scale.yaml")
    model = build_model(config, sparse_device="meta")
    dense = model.dense
    inputs = dense.input_width
    assert inputs == 2600 + 96 + 64 + 12 + 4 + 40 == 2816
    backbone = config.model.backbone.mask_net_config
    assert backbone.use_parallel and [b.output_size for b in backbone.mask_blocks] == [1024] * 4
    assert config.model.multi_task_type == "share_all" and len(config.model.tasks) == 10

    def linear(i, o):
        return i * o + o

    block = linear(inputs, 1024) + linear(1024, inputs) + linear(inputs, 1024) + 2 * inputs + 2 * 1024
    tower = linear(2048, 256) + linear(256, 128) + linear(128, 1)
    featurization = 2 * 2600 + 2 * (2600 + 96) + 2 * 64  # BatchNorm, LayerNorm, dense-embedding LayerNorms
    small = 16 * 4 + 8 * 4 + 24 * 4 + 33 * 4
    expected = 4 * block + linear(4096, 2048) + 10 * tower + featurization + small
    counted = sum(p.numel() for group in dense_parameter_groups(model).values() for p in group)
    assert counted == expected
    assert 47e6 < counted < 50e6  # "about 48M dense parameters"


def test_dense_benchmark_reports_each_variant_with_its_mfu():
    from projects.home.recap.benchmark_compile import dense_step_figures, format_dense_table

    doc = dense_step_figures("demo", ("fp32",), seconds=0.05, batch_size=64, variants=("eager",), profile=True)
    figures = doc["precisions"]["fp32"]
    assert set(figures["variants"]) == {"eager, towers one by one", "eager, towers grouped"}
    for row in figures["variants"].values():
        assert row["examples_per_second"] > 0
        assert row["mfu"] == pytest.approx(row["gflops_per_second"] / figures["peak_gflops_per_second"])
        assert row["gflops_per_second"] == pytest.approx(
            row["examples_per_second"] * figures["flops_per_example"] / 1e9)
    assert "Self CPU time total" in doc["profiles"]["fp32"]
    assert "eager, towers grouped" in format_dense_table(doc)


@pytest.mark.slow
def test_quick_benchmark_with_compile_reports_eager_and_compiled_side_by_side(tmp_path):
    output = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "projects.home.recap.main", "benchmark", "--quick", "--compile", "--torchrun", "0",
         "--precision", "fp32", "--set", "model.backbone={mlp_config: {layer_sizes: [16]}}", "--output", str(output)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "eager vs compiled" in proc.stdout
    variants = json.loads(output.read_text())["configs"]["demo"]["compile"]["fp32"]
    assert set(variants) == {"eager", "eager, towers grouped", "compiled", "compiled, towers grouped"}
    assert variants["eager"]["vs_eager"] == 1.0 and not variants["eager"]["towers_grouped"]
    assert variants["compiled"]["graph_breaks"] == 0 and variants["compiled"]["compile_seconds_upper_bound"] > 0
    assert not variants["compiled"]["towers_grouped"] and variants["compiled, towers grouped"]["towers_grouped"]
