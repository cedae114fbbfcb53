"""The model learns: a few hundred Adam steps on data with a planted per-task signal lower every task's loss
below that of the best constant prediction."""

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from common.batch import RecapBatch
from common.featurization import signed_log1p
from projects.home.recap.model.factory import build_model_and_loss
from projects.home.recap.model.loss import multi_task_bce

NUM_USERS = 50


class PlantedData:
    """Labels drawn from sigmoid of a per-task function of continuous, binary, discrete and sparse (user) features."""

    def __init__(self, config, num_tasks: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.config = config
        self.c = config.data.features.num_continuous
        self.continuous_w = torch.randn(self.c, num_tasks, generator=g) * 1.2
        self.binary_w = torch.randn(3, num_tasks, generator=g)
        self.country_w = torch.randn(5, num_tasks, generator=g)
        self.user_ids = torch.randint(-(2**40), 2**40, (NUM_USERS,), generator=g)
        self.user_w = torch.randn(NUM_USERS, num_tasks, generator=g) * 1.5

    def batch(self, size: int, g: torch.Generator) -> RecapBatch:
        continuous = (
            torch.randn(size, self.c, generator=g).mul(2).exp()
            * torch.randn(size, self.c, generator=g).sign()
        )
        binary = (torch.rand(size, 3, generator=g) < 0.5).float()
        discrete = torch.stack(
            [
                torch.randint(0, 5, (size,), generator=g),
                torch.randint(0, 10, (size,), generator=g),
                torch.randint(0, 24, (size,), generator=g),
            ],
            dim=1,
        )
        user = torch.randint(0, NUM_USERS, (size,), generator=g)
        z = signed_log1p(continuous)
        logits = (z / 2) @ self.continuous_w + binary @ self.binary_w + self.country_w[discrete[:, 0]]
        logits = logits + self.user_w[user] - 1.0
        labels = torch.bernoulli(torch.sigmoid(logits), generator=g)
        tags = torch.randint(0, 1000, (size,), generator=g)
        sparse = KeyedJaggedTensor(
            keys=["user_id", "unused_ids", "hashtags"],
            values=torch.cat([self.user_ids[user], torch.zeros(size, dtype=torch.int64), tags]),
            lengths=torch.ones(3 * size, dtype=torch.int64),
            stride=size,
        )
        embeddings = torch.randn(size, 7, generator=g)
        return RecapBatch(continuous, binary, discrete, sparse, embeddings, labels, torch.ones_like(labels))


def test_every_task_loss_goes_down(make_config):
    torch.manual_seed(0)
    config = make_config(
        {
            "multi_task_type": "share_all",
            "backbone": {
                "mask_net_config": {
                    "use_parallel": True,
                    "mask_blocks": [
                        {"output_size": 32, "reduction_factor": 0.5},
                        {"output_size": 32, "aggregation_size": 16},
                    ],
                }
            },
            "tasks": {
                "fav": {"mlp_config": {"layer_sizes": [16, 8]}},
                "report": {
                    "dcn_config": {"poly_degree": 2, "projection_dim": 4, "stacked_mlp": {"layer_sizes": [8]}}
                },
                "reply": {"mlp_config": {"layer_sizes": [16]}},
            },
        }
    )
    model_and_loss = build_model_and_loss(config)
    data = PlantedData(config, num_tasks=3)
    held_out = data.batch(4096, torch.Generator().manual_seed(123))
    labels = held_out.labels
    rate = labels.mean(0, keepdim=True).expand_as(labels)
    constant_loss = multi_task_bce(torch.logit(rate), labels, held_out.weights, torch.ones(3), torch.ones(3))[
        1
    ]

    def held_out_losses() -> torch.Tensor:
        model_and_loss.eval()
        with torch.no_grad():
            losses = model_and_loss(held_out)[1]["task_losses"]
        model_and_loss.train()
        return losses

    before = held_out_losses()
    optimizer = torch.optim.Adam(model_and_loss.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(300):
        loss, _ = model_and_loss(data.batch(128, g))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = held_out_losses()
    assert (after < before).all(), f"before {before.tolist()}, after {after.tolist()}"
    assert (after < 0.9 * constant_loss).all(), f"after {after.tolist()}, constant {constant_loss.tolist()}"
