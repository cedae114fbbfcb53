"""The bare peer of `recap benchmark`: the same dense shape as our model (its FLOPs per example within 12% of our
dense model's, which also differentiates its input), written as plain PyTorch; architectures it does not mirror get none."""

import pytest
import torch

from core import perf
from projects.home.recap.benchmarks.bare_peer import BarePeer, peer_shape, peer_step
from projects.home.recap.benchmarks.config_benchmark import CONFIG_DIR
from projects.home.recap.model.factory import build_model
from projects.home.recap.model.synthetic_batch import random_batch
from projects.home.recap.schema import load_recap_config


@pytest.mark.parametrize("name", ["demo", "recap_scale"])
def test_the_peer_has_our_dense_shape_and_flops(name):
    config = load_recap_config(CONFIG_DIR / f"{name}.yaml")
    model = build_model(config).train()
    shape = peer_shape(config, model.dense.input_width)
    assert shape["input_width"] == model.dense.input_width and len(shape["towers"]) == 10
    batch = random_batch(config, 8, torch.Generator().manual_seed(0))
    ours = perf.count_flops(lambda: model(batch)["logits"].sum().backward())
    _, count = peer_step(shape, 8, "fp32")
    peer = perf.count_flops(count)
    # Our extra FLOPs: the gradient of the first layers' input (the featurization before them learns; the peer's
    # input is data), the featurization, embeddings and calibration.
    assert peer <= ours <= 1.12 * peer, (ours, peer)


def test_the_peer_trains():
    shape = {"input_width": 12, "blocks": [(8, 6), (8, 6)], "backbone_mlp": [10], "towers": [[4], [4, 3]]}
    step, _ = peer_step(shape, 16, "bf16")
    peer = BarePeer(**{k: v for k, v in shape.items() if k != "input_width"}, width=12)
    assert peer(torch.randn(5, 12)).shape == (5, 2)
    for _ in range(3):
        step()


@pytest.mark.parametrize("overrides", [["model.multi_task_type=mmoe", "model.mixture={num_experts: 2}"],
                                       ["model.backbone.mask_net_config.use_parallel=false"]])
def test_architectures_the_peer_does_not_mirror_get_none(overrides):
    config = load_recap_config(CONFIG_DIR / "demo.yaml", overrides)
    assert peer_shape(config, 200) is None
