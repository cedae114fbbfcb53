"""Every table trains, whatever the plan: for each sharding type (pinned through planner constraints) on 1 and 2 gloo
ranks, a step updates exactly the looked-up rows as a plain nn.EmbeddingBag + torch.optim reference does, each sparse
optimizer follows its formula, and checkpoints of every sharding type reload under another world size and plan."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from core.checkpoint_manager import CheckpointManager
from core.config import ConfigError
from core.distributed import init_distributed, shard_model, shutdown_distributed
from core.process_exit import end_process
from core.sparse_optimizers import SparseOptimizerSettings
from core.table_placement import SHARDING_TYPES, TablePlacement, allowed_placements, planner_constraints

sys.path.insert(0, str(Path(__file__).parent))
import table_harness as h  # noqa: E402

SGD = SparseOptimizerSettings(type="sgd", learning_rate=0.3)


# --- the reference: full tables in plain PyTorch ----------------------------------------------------------------------
def reference_gradients(tables: list[torch.Tensor], world: int, step: int) -> list[torch.Tensor]:
    """d(mean over ranks of each rank's loss)/d table, through nn.EmbeddingBag."""
    params = [nn.Parameter(t.clone()) for t in tables]
    total = 0.0
    for rank in range(world):
        users, ul, tags, tl = h.batch(rank, step)
        pooled = []
        for param, ids, lengths, (_, _, _, _, pooling) in zip(params, (users, tags), (ul, tl), h.TABLES):
            bag = nn.EmbeddingBag.from_pretrained(param, freeze=False, mode=pooling)
            bag.weight = param
            offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0)[:-1].tolist()])
            pooled.append(bag(torch.tensor(ids), offsets))
        total = total + h.loss_of(torch.cat(pooled, dim=1)) / world
    total.backward()
    return [p.grad for p in params]


def reference_sgd(world: int, steps: int, lr: float) -> list[torch.Tensor]:
    """The tables after `steps` steps of torch.optim.SGD on the rank-averaged loss."""
    params = [nn.Parameter(h.initial_table(r, d, i)) for i, (_, _, r, d, _) in enumerate(h.TABLES)]
    optimizer = torch.optim.SGD(params, lr=lr)
    for step in range(steps):
        grads = reference_gradients([p.detach() for p in params], world, step)
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()
    return [p.detach() for p in params]


def reference_update(settings: SparseOptimizerSettings, steps: int) -> list[torch.Tensor]:
    """The tables after `steps` steps of the optimizer's formula, written row by row (one rank)."""
    s = settings
    tables = [h.initial_table(r, d, i) for i, (_, _, r, d, _) in enumerate(h.TABLES)]
    state = [{"sum": torch.zeros_like(t), "row_sum": torch.zeros(t.shape[0]), "m": torch.zeros_like(t),
              "v": torch.zeros_like(t)} for t in tables]
    for step in range(steps):
        grads = reference_gradients(tables, 1, step)
        for t, g, st in zip(tables, grads, state):
            for row in range(t.shape[0]):
                if not g[row].any():
                    continue
                w, gr = t[row].clone(), g[row].clone()
                if s.weight_decay and s.weight_decay_mode == "l2":
                    gr = gr + s.weight_decay * w
                if s.type == "sgd":
                    u = gr
                elif s.type == "adagrad":
                    st["sum"][row] += gr**2
                    u = gr / (st["sum"][row].sqrt() + s.epsilon)
                elif s.type == "rowwise_adagrad":
                    st["row_sum"][row] += (gr**2).mean()
                    u = gr / (st["row_sum"][row].sqrt() + s.epsilon)
                else:
                    k = step + 1
                    st["m"][row] = s.beta_1 * st["m"][row] + (1 - s.beta_1) * gr
                    st["v"][row] = s.beta_2 * st["v"][row] + (1 - s.beta_2) * gr**2
                    u = (st["m"][row] / (1 - s.beta_1**k)) / ((st["v"][row] / (1 - s.beta_2**k)).sqrt() + s.epsilon)
                if s.weight_decay and s.weight_decay_mode == "decoupled":
                    u = u + s.weight_decay * w
                t[row] = w - s.learning_rate * u
    return tables


def looked_up(world: int, steps: int) -> list[set[int]]:
    rows = [set(), set()]
    for rank in range(world):
        for step in range(steps):
            users, _, tags, _ = h.batch(rank, step)
            rows[0] |= set(users)
            rows[1] |= set(tags)
    return rows


# --- running the sharded tables ------------------------------------------------------------------------------------------
def _run_cases(ctx, cases, out: Path, save_dir: Path | None = None) -> None:
    for sharding, settings, steps in cases:
        dmp, optimizers = h.build(ctx, sharding, settings)
        h.train_steps(dmp, optimizers, ctx.rank, steps)
        tables = [h.read_table(dmp, name, r, d) for name, _, r, d, _ in h.TABLES]
        if save_dir is not None:
            CheckpointManager(save_dir / sharding, ctx).save(steps, {"model": dmp.state_dict()})
        if ctx.rank == 0:
            torch.save(tables, out / f"{sharding}-{settings.type}.pt")


def _worker(rank: int, world: int, store: str, out: str, cases, save: bool) -> None:
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT="0")  # the group below already exists
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    ctx = init_distributed("cpu")
    _run_cases(ctx, cases, Path(out), Path(out) / "checkpoints" if save else None)
    dist.barrier()
    dist.destroy_process_group()
    end_process(0)  # not Python's teardown, where gloo's threads can abort the process (core.process_exit)


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    """Every sharding type trained for 2 SGD steps on 2 gloo ranks, each saved as a checkpoint."""
    out = tmp_path_factory.mktemp("two_ranks")
    cases = [(sharding, SGD, 2) for sharding in SHARDING_TYPES]
    mp.start_processes(_worker, args=(2, str(out / "store"), str(out), cases, True), nprocs=2, start_method="spawn")
    return out


@pytest.fixture
def ctx():
    context = init_distributed("cpu")
    yield context
    shutdown_distributed()


def _assert_tables(got: list[torch.Tensor], expected: list[torch.Tensor], rows: list[set[int]]) -> None:
    for i, (g, e, seen) in enumerate(zip(got, expected, rows)):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)
        start = h.initial_table(*g.shape, i)
        moved = set((g != start).any(dim=1).nonzero().flatten().tolist())
        assert moved == seen, f"table {h.TABLES[i][0]}: rows {sorted(moved)} moved, {sorted(seen)} were looked up"


@pytest.mark.parametrize("sharding", SHARDING_TYPES)
def test_one_rank_sgd_updates_exactly_the_looked_up_rows(ctx, tmp_path, sharding):
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*autograd kernel was not registered.*")
        _run_cases(ctx, [(sharding, SGD, 2)], tmp_path)
    got = torch.load(tmp_path / f"{sharding}-sgd.pt")
    _assert_tables(got, reference_sgd(1, 2, SGD.learning_rate), looked_up(1, 2))


@pytest.mark.slow
@pytest.mark.parametrize("sharding", SHARDING_TYPES)
def test_two_rank_sgd_updates_exactly_the_looked_up_rows(two_rank_results, sharding):
    got = torch.load(two_rank_results / f"{sharding}-sgd.pt")
    _assert_tables(got, reference_sgd(2, 2, SGD.learning_rate), looked_up(2, 2))


@pytest.mark.slow
@pytest.mark.parametrize("saved", SHARDING_TYPES)
def test_a_two_rank_checkpoint_of_every_sharding_type_reloads_on_one_rank_under_another_plan(
        two_rank_results, ctx, saved):
    expected = torch.load(two_rank_results / f"{saved}-sgd.pt")
    other = "data_parallel" if saved != "data_parallel" else "table_wise"
    dmp, _ = h.build(ctx, other, SGD)
    manager = CheckpointManager(two_rank_results / "checkpoints" / saved, ctx)
    tensors = {"model": dmp.state_dict()}
    manager.load(manager.latest(), tensors)
    dmp.load_state_dict(tensors["model"])
    for (name, _, r, d, _), e in zip(h.TABLES, expected):
        torch.testing.assert_close(h.read_table(dmp, name, r, d), e, rtol=0, atol=0)


OPTIMIZERS = [
    SparseOptimizerSettings(type="sgd", learning_rate=0.3),
    SparseOptimizerSettings(type="adagrad", learning_rate=0.2),
    SparseOptimizerSettings(type="rowwise_adagrad", learning_rate=0.2),
    SparseOptimizerSettings(type="adam", learning_rate=0.05, beta_1=0.8, beta_2=0.9),
    SparseOptimizerSettings(type="sgd", learning_rate=0.3, weight_decay=0.5, weight_decay_mode="l2"),
    SparseOptimizerSettings(type="rowwise_adagrad", learning_rate=0.2, weight_decay=0.5),
    SparseOptimizerSettings(type="adam", learning_rate=0.05, weight_decay=0.5, weight_decay_mode="l2"),
    SparseOptimizerSettings(type="adagrad", learning_rate=0.2, weight_decay=0.5, weight_decay_mode="decoupled"),
]


@pytest.mark.parametrize("settings", OPTIMIZERS, ids=lambda s: f"{s.type}-wd{s.weight_decay}-{s.weight_decay_mode}")
def test_each_sparse_optimizer_follows_its_formula_on_cpu(ctx, tmp_path, settings):
    # auto: fbgemm's fused CPU kernel where it runs these settings, else a data-parallel table.
    dmp, optimizers = h.build(ctx, "auto", settings)
    h.train_steps(dmp, optimizers, 0, 3)
    got = [h.read_table(dmp, name, r, d) for name, _, r, d, _ in h.TABLES]
    _assert_tables(got, reference_update(settings, 3), looked_up(1, 3))


@pytest.mark.parametrize("settings", OPTIMIZERS[:3], ids=lambda s: s.type)
def test_fused_and_row_sparse_updates_agree(ctx, tmp_path, settings):
    results = []
    for sharding in ("table_wise", "data_parallel"):
        dmp, optimizers = h.build(ctx, sharding, settings)
        h.train_steps(dmp, optimizers, 0, 3)
        results.append([h.read_table(dmp, name, r, d) for name, _, r, d, _ in h.TABLES])
    for fused, row_sparse in zip(*results):
        torch.testing.assert_close(fused, row_sparse, rtol=1e-5, atol=1e-6)


def test_settings_the_fused_kernel_cannot_run_keep_the_table_data_parallel():
    adam = SparseOptimizerSettings(type="adam")
    assert allowed_placements("t", TablePlacement(), adam, "cpu") == (["data_parallel"], ["dense"])
    decay = SparseOptimizerSettings(type="rowwise_adagrad", weight_decay=0.1)
    assert allowed_placements("t", TablePlacement(), decay, "cpu") == (["data_parallel"], ["dense"])
    # The GPU kernels run Adam and rowwise_adagrad's weight decay themselves.
    shardings, kernels = allowed_placements("t", TablePlacement(), adam, "cuda")
    assert "row_wise" in shardings and "fused" in kernels
    shardings, _ = allowed_placements("t", TablePlacement(), decay, "cuda")
    assert "table_wise" in shardings
    with pytest.raises(ConfigError, match="'t': table_wise updates the table inside fbgemm's fused kernel, and "
                                          "fbgemm's CPU kernels have no Adam"):
        allowed_placements("t", TablePlacement("table_wise"), adam, "cpu")
    with pytest.raises(ConfigError, match="compute_kernel 'fused_uvm' does not run on cpu"):
        allowed_placements("t", TablePlacement(compute_kernel="fused_uvm"), SGD, "cpu")
    # On CPU the planner's own choice stays within torchrec's CPU sharding types; a pin may ask for row_wise.
    assert "row_wise" not in allowed_placements("t", TablePlacement(), SGD, "cpu")[0]
    assert allowed_placements("t", TablePlacement("row_wise"), SGD, "cpu") == (["row_wise"], ["fused"])


@pytest.mark.parametrize("sharding", ["table_wise", "data_parallel"])
@pytest.mark.parametrize("init", [("normal", 0.01), ("uniform", 0.05)])
def test_a_configured_initialisation_reaches_the_sharded_table(ctx, sharding, init):
    from common.sparse_embeddings import LargeTableSpec, build_embedding_bag_collection

    model = nn.Module()
    model.tables = build_embedding_bag_collection([LargeTableSpec("t", ("f",), 20_000, 8, init=init)], "meta")
    settings = {"t": SGD}
    constraints = planner_constraints({"t": TablePlacement(sharding)}, settings, "cpu")
    dmp = shard_model(model, ctx, constraints=constraints)
    weights = h.read_table(dmp, "t", 20_000, 8)
    if init[0] == "normal":
        assert weights.std().item() == pytest.approx(0.01, rel=0.03)
    else:
        assert weights.abs().max().item() <= 0.05 and weights.abs().max().item() > 0.049
        assert weights.std().item() == pytest.approx(0.05 / 3**0.5, rel=0.03)


@pytest.mark.parametrize("first, second", [("table_wise", "data_parallel"), ("data_parallel", "column_wise")])
def test_optimizer_state_carries_over_between_fused_and_row_sparse_plans(ctx, tmp_path, first, second):
    settings = SparseOptimizerSettings(type="rowwise_adagrad", learning_rate=0.2)
    dmp, optimizers = h.build(ctx, first, settings)
    h.train_steps(dmp, optimizers, 0, 1)
    manager = CheckpointManager(tmp_path, ctx)
    manager.save(1, {"model": dmp.state_dict(), "sparse": optimizers.state_dict()["state"]})
    resumed, resumed_optimizers = h.build(ctx, second, settings)
    tensors = {"model": resumed.state_dict(), "sparse": resumed_optimizers.state_dict()["state"]}
    manager.load(manager.latest(), tensors)
    resumed.load_state_dict(tensors["model"])
    resumed_optimizers.load_state_dict({"state": tensors["sparse"]})
    for step in (1, 2):
        resumed(h.kjt(0, step)).backward()
        resumed_optimizers.step()
    got = [h.read_table(resumed, name, r, d) for name, _, r, d, _ in h.TABLES]
    _assert_tables(got, reference_update(settings, 3), looked_up(1, 3))
