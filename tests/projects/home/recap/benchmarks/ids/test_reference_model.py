"""The plain-PyTorch reference ranker: torchrec's pooling with nn.EmbeddingBag, the project's dense model, Adam."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import inference_helpers as helpers
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from common.sparse_embeddings import hash_ids, pooled_embedding_dim
from core.distributed import DistributedContext
from core.rng_state import seed_everything
from projects.home.recap.benchmarks.ids import reference_model
from projects.home.recap.benchmarks.ids.reference_model import EmbeddingBagTables
from projects.home.recap.benchmarks.ids.reference_training import build_reference, train_reference
from projects.home.recap.data.loader import RecapDataLoader
from projects.home.recap.model.factory import build_model, build_model_and_loss, large_table_specs

CPU = DistributedContext(0, 1, 0, 1, torch.device("cpu"), "gloo")


@pytest.fixture
def config(data_dir, tmp_path):
    """The tiny experiment: a hashed mean table over user_id, a modded sum table over author_id and hashtags."""
    return helpers.load(helpers.write_config(tmp_path / "experiment.yaml", data_dir, tmp_path / "save"))


def first_batch(config, batch_size: int = 64):
    loader = RecapDataLoader(config.data, config.data.train, list(config.model.tasks), "eval", batch_size=batch_size)
    return next(iter(loader))


def test_the_module_does_not_import_torchrec():
    tree = ast.parse(Path(reference_model.__file__).read_text())
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    imported += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert imported and not [name for name in imported if name.startswith(("torchrec", "fbgemm"))]


def test_tables_match_the_config_and_torchrec_initialization(config):
    specs = large_table_specs(config)
    tables = EmbeddingBagTables(specs)
    assert tables.output_dim == pooled_embedding_dim(specs) == 12
    assert [f for f, *_ in tables.features] == ["user_id", "author_id", "hashtags"]
    for spec in specs:
        bag = tables.bags[spec.name]
        assert tuple(bag.weight.shape) == (spec.num_embeddings, spec.embedding_dim) and bag.mode == spec.pooling
        assert bag.weight.abs().max() <= math.sqrt(1 / spec.num_embeddings)


def test_tables_take_the_configured_initialization(data_dir, tmp_path):
    path = helpers.write_config(tmp_path / "experiment.yaml", data_dir, tmp_path / "save")
    config = helpers.load(path, ["model.large_embeddings.0.num_embeddings=20000",
                                 "model.large_embeddings.0.init.normal_std=0.5",
                                 "model.large_embeddings.1.init.uniform_bound=0.25"])
    tables = EmbeddingBagTables(large_table_specs(config))
    assert tables.bags["user"].weight.std().item() == pytest.approx(0.5, rel=0.02)
    author = tables.bags["author"].weight
    assert author.abs().max() <= 0.25 and author.abs().max() > 0.2


def test_pooling_equals_the_torchrec_collection_for_the_same_weights(config):
    ours = build_model(config)  # the torchrec EmbeddingBagCollection on the CPU, initialized
    tables = EmbeddingBagTables(large_table_specs(config))
    with torch.no_grad():
        for name, bag in tables.bags.items():
            bag.weight.copy_(torch.randn_like(bag.weight))
            ours.large_embeddings.embedding_bags[name].weight.copy_(bag.weight)
    batch = first_batch(config)
    assert (batch.sparse["hashtags"].lengths() == 0).any() and (batch.sparse["hashtags"].lengths() > 1).any()
    torch.testing.assert_close(tables(batch.sparse), ours.embed_sparse(batch.sparse, batch.batch_size))
    # Keys in another order, a key no table reads, negative and huge ids, empty bags.
    kjt = KeyedJaggedTensor(
        keys=["hashtags", "unused", "author_id", "user_id"],
        values=torch.tensor([5, -7, 2**62, 99, -4, 2**40 + 3, 9, -(2**50)]),
        lengths=torch.tensor([3, 0, 0, 1, 1, 1, 2, 0]),
        stride=2,
    )
    torch.testing.assert_close(tables(kjt), ours.embed_sparse(kjt, 2))
    with pytest.raises(KeyError, match="user_id"):
        tables(KeyedJaggedTensor(keys=["author_id", "hashtags"], values=torch.tensor([1]),
                                 lengths=torch.tensor([1, 0]), stride=1))


def test_reference_has_the_training_models_dense_part_and_no_torchrec_module(config):
    model, groups = build_reference(config)
    assert not [type(m) for m in model.modules() if type(m).__module__.startswith("torchrec")]
    seed_everything(config.training.seed)  # as build_training does before it builds our model
    ours = build_model_and_loss(config, sparse_device="meta").model.dense.state_dict()
    reference = model.model.dense.state_dict()
    assert list(ours) == list(reference)
    assert all(torch.equal(ours[k], reference[k]) for k in ours)
    table_params = {id(p) for p in model.model.tables.parameters()}
    assert set(groups) == {"shared", "fav", "reply"}
    assert not [p for ps in groups.values() for p in ps if id(p) in table_params]


def test_forward_and_backward_reach_every_looked_up_row(config):
    model, _ = build_reference(config)
    batch = first_batch(config)
    loss, outputs = model(batch)
    assert outputs["logits"].shape == (64, 2) and outputs["task_losses"].shape == (2,) and loss.isfinite()
    loss.backward()
    assert all(p.grad is not None for p in model.model.dense.parameters() if p.requires_grad)
    users = torch.remainder(hash_ids(batch.sparse["user_id"].values()), 100).unique()
    grad = model.model.tables.bags["user"].weight.grad
    touched = (grad.abs().sum(dim=1) > 0).nonzero().flatten()
    assert torch.equal(touched, users)  # exactly the rows of the batch's users get a gradient


def test_training_updates_tables_and_dense_part(config):
    run = train_reference(config, CPU, embedding_learning_rate=0.05)
    assert run.steps == helpers.NUM_TRAIN_STEPS and run.examples == helpers.NUM_TRAIN_STEPS * 64
    initial, _ = build_reference(config)
    for name, bag in run.model.model.tables.bags.items():
        changed = (bag.weight != initial.model.tables.bags[name].weight).any(dim=1)
        assert changed.any(), name
    trained, start = run.model.model.dense.parameters(), initial.model.dense.parameters()
    assert all(not torch.equal(a, b) for a, b in zip(trained, start))
