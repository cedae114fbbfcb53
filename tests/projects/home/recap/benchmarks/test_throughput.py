"""`recap benchmark` at a tiny size (every phase and figure, including a real 2-rank torchrun launch; no speed
assertions, its progress lines) and the recap-scale config it measures."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from projects.home.recap.benchmarks.config_benchmark import CONFIG_DIR
from projects.home.recap.model.factory import build_model
from projects.home.recap.model.parameter_groups import dense_parameter_groups
from projects.home.recap.schema import load_recap_config

ROOT = Path(__file__).resolve().parents[5]


@pytest.mark.slow
def test_quick_benchmark_prints_and_writes_every_figure(tmp_path):
    output = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), RECAP_PROGRESS_SECONDS="0")
    proc = subprocess.run(
        [sys.executable, "-m", "projects.home.recap.main", "benchmark", "--quick", "--torchrun", "2",
         "--output", str(output)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for heading in ("peak GF/s", "train ex/s", "MFU", "eval ex/s", "loader rows/s", "pipeline ex/s", "vs memory",
                    "worker RSS MB", "2-rank ex/s", "load average"):
        assert heading in proc.stdout
    assert proc.stdout.rstrip().endswith(f"figures written to {output}")
    # No terminal: each phase is logged as it starts, and the phases that process rows log them as they go.
    for phase in ("fp32 training", "bf16 evaluation", "loader", "loader on the prepared layout"):
        assert f"INFO projects.home.recap.benchmarks.throughput: demo: {phase}\n" in proc.stderr
        assert re.search(f"INFO core.progress: demo: {phase}: [\\d,]+ rows in .*rows/s\n", proc.stderr), phase
    assert "demo: fp32 matmul peak on the model's shapes: " not in proc.stderr
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
    for precision in ("fp32", "bf16"):
        peer = demo["bare_peer"][precision]
        assert peer["ratio"] == pytest.approx(peer["ours"]["gflops_per_second"] / peer["peer"]["gflops_per_second"])
        assert peer["peer"]["examples_per_second"] > 0 and peer["shape"]["input_width"] == demo["input_features"]
    assert demo["pipelines"][pipeline["precision"]] == pipeline
    for precision, measured in demo["pipelines"].items():  # the pipeline in every precision, against the peer
        assert measured["precision"] == precision  # timed in turns with the peer: its own peer figures
        assert measured["vs_bare_peer"] == pytest.approx(
            measured["examples_per_second"] * demo["flops_per_example"][precision] / 1e9
            / measured["bare_peer"]["gflops_per_second"])
        assert measured["bare_peer"]["examples_per_second"] > 0 and measured["peak_rss_bytes"] > 0
        assert measured["step"]["windows"] >= 2
    assert set(demo["pipelines"]) == {"fp32", "bf16"}
    assert "ours/peer" in proc.stdout
    ranks = demo["torchrun"]
    assert "error" not in ranks, ranks.get("error")
    assert ranks["world_size"] == 2 and len(ranks["per_rank_examples_per_second"]) == 2
    assert ranks["examples_per_second"] == pytest.approx(sum(ranks["per_rank_examples_per_second"]))


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


def test_a_config_without_a_bare_peer_times_its_pipeline_alone(tmp_path, progress_lines):
    # An expert mixture has no bare-peer shape: its pipeline is timed on its own, with its rows counted as it goes.
    from core.distributed import init_distributed
    from projects.home.recap.benchmarks.config_benchmark import BenchmarkSettings
    from projects.home.recap.benchmarks.throughput import benchmark_config

    config = load_recap_config(CONFIG_DIR / "demo.yaml", ["model.multi_task_type=mmoe", "model.mixture={num_experts: 2}"])
    settings = BenchmarkSettings.quick(precisions=("fp32",))
    out = benchmark_config("mmoe", config, settings, init_distributed("cpu"), tmp_path)
    assert "bare_peer" not in out
    pipeline = out["pipelines"]["fp32"]
    assert "vs_bare_peer" not in pipeline and "bare_peer" not in pipeline
    assert pipeline["examples_per_second"] > 0 and pipeline["peak_rss_bytes"] > 0 and pipeline["step"]["windows"] >= 2
    assert any(line.startswith("mmoe: fp32 loader + training pipeline: ") for line in progress_lines())
