"""History id columns looked up in sharded torchrec tables: a column that names a large table reads the candidate's
own rows (no second copy of the table anywhere in the model), trains on 2 gloo ranks under every sharding type with
only the rows of seen ids moving, reloads under another plan, and exports with the shared table."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from common.sparse_embeddings import hash_ids
from core.config import ConfigError, load_config
from projects.home.recap.model.factory import build_model
from projects.home.recap.model.synthetic_batch import random_batch
from projects.home.recap.schema import RecapConfig

AUTHOR_ROWS, TAG_ROWS, DIM = 40, 30, 8
# Raw ids in [-ID_RANGE, ID_RANGE): the candidate's and the history's ids meet often.
ID_RANGE = 25
BASE = {
    "data": {
        "features": {
            "continuous": [{"name": "counts", "length": 2}],
            "sparse": ["user_id", "author_id"],
            "sequences": {"history": {
                "max_length": 5, "actions": "hist_action",
                "ids": [{"name": "hist.author", "candidate": "author_id"}, {"name": "hist.tag"}]}},
        },
        "tasks": {"fav": {"label": "label.fav"}},
    },
    "model": {
        "large_embeddings": [
            {"name": "users", "feature_names": ["user_id"], "num_embeddings": 20, "embedding_dim": 4},
            {"name": "author", "feature_names": ["author_id"], "num_embeddings": AUTHOR_ROWS, "embedding_dim": DIM,
             "id_transform": "mod"},
        ],
        "sequences": {"history": {
            "embedding_dim": DIM, "num_actions": 4, "encoder": {"target_attention": {"hidden_dims": [8]}},
            "tables": {"hist.author": {"table": "author"}, "hist.tag": {"num_embeddings": TAG_ROWS}}}},
        "tasks": {"fav": {"mlp_config": {"layer_sizes": [4]}}},
    },
    "training": {"save_dir": "unused", "num_train_steps": 2, "seed": 3},
    "optimizer": {"dense": {"adam": {}, "learning_rate": {"constant": 0.01}},
                  "sparse": {"type": "sgd", "learning_rate": 0.5}},
}
SHARDINGS = ["table_wise", "row_wise", "column_wise", "data_parallel"]
TAG_TABLE = "history_hist_tag"


def history_config(sharding: str = "auto", overrides: list[str] = (), sparse: str = "sgd") -> RecapConfig:
    """BASE with the shared author table and the history's own tag table pinned to `sharding`."""
    data = copy.deepcopy(BASE)
    data["model"]["large_embeddings"][1]["sharding"] = sharding
    data["model"]["sequences"]["history"]["tables"]["hist.tag"]["sharding"] = sharding
    if sparse != "sgd":
        data["optimizer"]["sparse"] = {"type": sparse}
    return load_config(None, RecapConfig, list(overrides), data=data)


def batch_of(config: RecapConfig, rank: int, step: int):
    return random_batch(config, 6, torch.Generator().manual_seed(100 * rank + step), id_range=ID_RANGE)


def seen_rows(config: RecapConfig, world: int, steps: int) -> dict[str, set[int]]:
    """The rows the batches of every rank and step look up: "author" (the candidate's pooled author_id, the
    history's items and its candidate id; "pooled" and "history" split them by who reads them) and "tag" (the
    history's own table; hashed ids)."""
    seen: dict[str, set[int]] = {"pooled": set(), "history": set(), "tag": set()}
    for rank in range(world):
        for step in range(steps):
            b = batch_of(config, rank, step)
            history = b.sequences["history"]
            seen["pooled"] |= set(torch.remainder(b.sparse["author_id"].values(), AUTHOR_ROWS).tolist())
            ids = torch.cat([history["id:hist.author"], history["candidate:hist.author"]])
            seen["history"] |= set(torch.remainder(ids, AUTHOR_ROWS).tolist())
            seen["tag"] |= set(torch.remainder(hash_ids(history["id:hist.tag"]), TAG_ROWS).tolist())
    seen["author"] = seen["pooled"] | seen["history"]
    return seen


# --- one process ---------------------------------------------------------------------------------------------------------
def test_no_replicated_copy_of_a_large_table_exists():
    model = build_model(history_config())
    tokens = model.dense.histories["history"].tokens
    assert len(tokens.tables) == 0  # both id columns are sharded: the tokens own no table
    from torchrec.modules.embedding_modules import EmbeddingCollection

    collection = model.large_embeddings_unpooled["dim_8"]
    assert type(collection) is EmbeddingCollection and set(collection.embeddings) == {"author", TAG_TABLE}
    assert list(model.large_embeddings.embedding_bags) == ["users"]
    # One tensor of the author table's shape in the whole model, the collection's.
    shaped = [n for n, t in model.state_dict().items() if tuple(t.shape) == (AUTHOR_ROWS, DIM)]
    assert shaped == ["large_embeddings_unpooled.dim_8.embeddings.author.weight"]
    assert not [m for m in model.dense.modules() if isinstance(m, nn.Embedding) and m.num_embeddings == AUTHOR_ROWS]


def test_the_candidate_and_the_history_read_the_same_row_of_the_same_id():
    config = history_config()
    model = build_model(config).eval()  # padded rows (training on the CPU packs them)
    b = batch_of(config, 0, 0)
    history = b.sequences["history"]
    # Row 1's candidate author and its first history item have the same raw id.
    lengths = b.sparse["author_id"].lengths()
    row = int(torch.nonzero(history["lengths"] > 0)[0])
    first_item = int(history["lengths"][:row].sum())
    raw = int(history["id:hist.author"][first_item])
    history["candidate:hist.author"][row] = raw
    with torch.no_grad():
        unpooled = model.lookup_unpooled(b.sparse, b.sequences, b.batch_size)
        padded = model.padded_histories(b, unpooled)
        pooled = model.embed_sparse(b.sparse, b.batch_size, unpooled)
    weight = model.large_embeddings_unpooled["dim_8"].embeddings["author"].weight
    expected = weight[raw % AUTHOR_ROWS]
    torch.testing.assert_close(padded["history/emb:hist.author"][row, 0], expected, rtol=0, atol=0)
    torch.testing.assert_close(padded["history/candidate:emb:hist.author"][row], expected, rtol=0, atol=0)
    # The candidate's pooled author_id is the mean of its ids' rows in that same table.
    ids = b.sparse["author_id"].values()
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    users = 4
    for r in range(b.batch_size):
        mine = ids[offsets[r]:offsets[r + 1]]
        want = weight[mine % AUTHOR_ROWS].mean(0) if mine.numel() else torch.zeros(DIM)
        torch.testing.assert_close(pooled[r, users:], want, rtol=1e-6, atol=1e-6)
    # Padding past a row's length is zeros, as the replicated lookup's ids are.
    empty = history["lengths"] == 0
    assert padded["history/emb:hist.author"][empty].abs().sum() == 0


@pytest.mark.parametrize("entry, message", [
    ({"table": "nope"}, r"model.sequences.history.tables.hist.author.table: 'nope' is not a model.large_embeddings"),
    ({"table": "users"}, r"model.sequences.history.tables.hist.author.table: table 'users' has embedding_dim 4, but "
                         r"model.sequences.history.embedding_dim is 8"),
    ({"table": "author", "num_embeddings": 5}, "remove num_embeddings"),
    ({"table": "author", "sharding": "row_wise"}, "remove sharding"),
    ({"replicated": True}, "needs `table: <a model.large_embeddings name>`"),
    ({"replicated": True, "num_embeddings": 5, "sharding": "row_wise"}, "apply to sharded tables only"),
])
def test_history_table_settings_are_checked_with_their_key(entry, message):
    data = history_config().model_dump(mode="json")
    data["model"]["sequences"]["history"]["tables"]["hist.author"] = entry
    with pytest.raises(ConfigError, match=message) as raised:
        load_config(None, RecapConfig, [], data=data)
    assert "hist.author" in str(raised.value)


def test_an_own_table_named_like_a_large_table_is_a_config_error():
    data = history_config().model_dump(mode="json")
    data["model"]["large_embeddings"][0]["name"] = TAG_TABLE
    with pytest.raises(ConfigError, match=f"would be named '{TAG_TABLE}', which is a model.large_embeddings table"):
        load_config(None, RecapConfig, [], data=data)


def test_a_table_a_history_reads_cannot_take_a_sharding_its_collection_lacks():
    from projects.home.recap.model.tables import table_constraints

    config = history_config(overrides=["model.large_embeddings.1.sharding=table_row_wise"])
    with pytest.raises(ConfigError, match="'author': sharding table_row_wise is not available to a table a history"):
        table_constraints(config, "cpu")


def test_a_replicated_history_table_is_an_nn_embedding_trained_densely():
    config = history_config(overrides=['model.sequences.history.tables."hist.tag"={replicated: true, '
                                       'num_embeddings: 7}'])
    model = build_model(config)
    tokens = model.dense.histories["history"].tokens
    assert [t.num_embeddings for t in tokens.tables] == [7]
    assert set(model.large_embeddings_unpooled["dim_8"].embeddings) == {"author"}
    loss = model(batch_of(config, 0, 0))["logits"].sum()
    loss.backward()
    assert tokens.tables[0].weight.grad.abs().sum() > 0


def test_export_scores_equal_the_model_with_the_shared_table(tmp_path):
    from projects.home.recap.serving.build import build_serving_model
    from projects.home.recap.serving.serving_model import serving_inputs

    config = history_config()
    model = build_model(config).eval()
    serving = build_serving_model(model)
    author = model.large_embeddings_unpooled["dim_8"].embeddings["author"].weight
    assert serving.tables["author"].data_ptr() == author.data_ptr()  # the table itself, not a copy
    assert {c.table for c in serving.history_columns} == {"author", TAG_TABLE}
    b = batch_of(config, 1, 0)
    with torch.no_grad():
        expected = model(b)
        got = serving(*serving_inputs(b, serving.feature_names, model.dense.history_lengths))
    for key in ("logits", "calibrated_probabilities", "score") if "score" in expected else ("logits",):
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6)


# --- two gloo ranks ---------------------------------------------------------------------------------------------------------
def _full_table(model: nn.Module, name: str, rows: int) -> torch.Tensor:
    """The whole table, gathered from every rank's shards (collective)."""
    key = next(k for k in model.state_dict() if k.endswith(f".embeddings.{name}.weight"))
    value = model.state_dict()[key]
    full = torch.zeros(rows, DIM)
    if not hasattr(value, "local_shards"):
        return value.detach().clone()
    for shard in value.local_shards():
        r, c = shard.metadata.shard_offsets
        full[r:r + shard.tensor.shape[0], c:c + shard.tensor.shape[1]] = shard.tensor.detach()
    dist.all_reduce(full)
    return full


def _tables(model: nn.Module) -> list[torch.Tensor]:
    return [_full_table(model, "author", AUTHOR_ROWS), _full_table(model, TAG_TABLE, TAG_ROWS)]


def _train(config: RecapConfig, ctx, rank: int, steps: int):
    from projects.home.recap.train import build_sparse_optimizer, build_training

    model, dense, _ = build_training(config, ctx)
    sparse = build_sparse_optimizer(config, model)
    before = _tables(model)
    for step in range(steps):
        loss, _ = model(batch_of(config, rank, step))
        loss.backward()
        dense.step()
        dense.zero_grad()
        sparse.step()
    return model, before


def _worker(rank: int, world: int, store: str, out: str) -> None:
    import os

    from core.checkpoint_manager import CheckpointManager
    from core.distributed import init_distributed
    from core.process_exit import end_process
    from projects.home.recap.train import build_training

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT="0")  # the group below already exists
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    ctx = init_distributed("cpu")
    root = Path(out)
    for sharding in SHARDINGS:
        config = history_config(sharding, sparse="adam" if sharding == "data_parallel" else "sgd")
        model, before = _train(config, ctx, rank, 2)
        after = _tables(model)
        plan = {k: type(v).__name__ for k, v in model.state_dict().items() if ".embeddings." in k}
        CheckpointManager(root / "checkpoints" / sharding, ctx).save(2, {"model": model.state_dict()})
        if rank == 0:
            torch.save({"before": before, "after": after, "plan": plan}, root / f"{sharding}.pt")
    # Each checkpoint reloads under the next plan.
    for saved, other in zip(SHARDINGS, SHARDINGS[1:] + SHARDINGS[:1]):
        config = history_config(other, sparse="adam" if other == "data_parallel" else "sgd")
        model, _, _ = build_training(config, ctx)
        manager = CheckpointManager(root / "checkpoints" / saved, ctx)
        tensors = {"model": model.state_dict()}
        manager.load(manager.latest(), tensors)
        model.load_state_dict(tensors["model"])
        tables = _tables(model)
        if rank == 0:
            torch.save(tables, root / f"{saved}-as-{other}.pt")
    dist.barrier()
    dist.destroy_process_group()
    end_process(0)  # not Python's teardown, where gloo's threads can abort the process (core.process_exit)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("history_tables")
    mp.start_processes(_worker, args=(2, str(out / "store"), str(out)), nprocs=2, start_method="spawn")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("sharding", SHARDINGS)
def test_two_ranks_train_the_shared_table_where_ids_were_seen(two_ranks, sharding):
    result = torch.load(two_ranks / f"{sharding}.pt")
    seen = seen_rows(history_config(), 2, 2)
    moved = {name: set((after != before).any(dim=1).nonzero().flatten().tolist())
             for name, before, after in zip(("author", "tag"), result["before"], result["after"])}
    for name, rows in (("author", AUTHOR_ROWS), ("tag", TAG_ROWS)):
        assert 0 < len(seen[name]) < rows
        # Only looked-up rows move; nearly all of them do (a row whose every use met a dead ReLU has no gradient).
        assert moved[name] <= seen[name], f"{name}: rows {sorted(moved[name] - seen[name])} moved unseen"
        assert len(moved[name]) >= 0.8 * len(seen[name]), f"{name}: {sorted(seen[name] - moved[name])} stayed"
    # The shared table learns from both readers: rows only the candidate's pooled feature saw, and rows only the
    # history saw.
    assert moved["author"] & (seen["pooled"] - seen["history"])
    assert moved["author"] & (seen["history"] - seen["pooled"])
    # Model-parallel plans shard the tables (ShardedTensor), data_parallel replicates them (a plain Tensor).
    kinds = set(result["plan"].values())
    assert kinds == ({"Tensor"} if sharding == "data_parallel" else {"ShardedTensor"}), result["plan"]


@pytest.mark.slow
@pytest.mark.parametrize("saved", SHARDINGS)
def test_a_checkpoint_of_the_shared_table_reloads_under_another_plan(two_ranks, saved):
    expected = torch.load(two_ranks / f"{saved}.pt")["after"]
    other = SHARDINGS[(SHARDINGS.index(saved) + 1) % len(SHARDINGS)]
    got = torch.load(two_ranks / f"{saved}-as-{other}.pt")
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


# --- training runs: resume and warm start -----------------------------------------------------------------------------
def _run_config(tmp_path: Path, save: str, steps: int, extra: dict | None = None) -> Path:
    """The inference tests' small experiment on generated data with histories, the history's author column on the
    candidate's `author` table."""
    import dataclasses
    import sys

    import yaml

    sys.path.insert(0, str(Path(__file__).parents[1]))
    import inference_helpers as helpers

    data = tmp_path / "data"
    if not data.exists():
        from projects.home.recap.data.synthetic import generate

        generate(data, helpers.ROWS, seed=5, spec=dataclasses.replace(helpers.SPEC, history_length=6),
                 splits=helpers.SPLITS, row_group_size=64)
    document = helpers.config_dict(data, tmp_path / save)
    del document["data"]["validation"]["single"]
    document["data"]["features"]["sequences"] = {"history": {
        "max_length": 5, "actions": "history.action",
        "ids": [{"name": "history.author_id", "candidate": "author_id"}, {"name": "history.hashtag"}]}}
    document["model"]["sequences"] = {"history": {
        "embedding_dim": 4, "num_actions": 4, "encoder": {"pooling": {"mode": "mean"}},
        "tables": {"history.author_id": {"table": "author"}, "history.hashtag": {"num_embeddings": 32}}}}
    document["training"].update(num_train_steps=steps, **(extra or {}))
    path = tmp_path / f"{save}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _author_table(config_file: Path) -> torch.Tensor:
    from projects.home.recap.inference import load_for_inference
    from projects.home.recap.schema import load_recap_config

    model = load_for_inference(load_recap_config(config_file, []), "latest").model
    return model.large_embeddings_unpooled["dim_4"].embeddings["author"].weight.detach().clone()


@pytest.mark.slow
def test_a_run_with_the_shared_table_resumes_and_warm_starts_another(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1]))
    import inference_helpers as helpers

    from core.checkpoint import list_checkpoints

    first = _run_config(tmp_path, "first", 3)
    helpers.train_run(first)
    at_3 = _author_table(first)
    step_3 = list_checkpoints(tmp_path / "first" / "checkpoints")[-1]
    assert step_3.step == 3
    written = step_3.path.stat().st_mtime_ns
    # Resume: the same save_dir with a longer run continues from step 3 (which it does not write again).
    helpers.train_run(first, ["training.num_train_steps=5"])
    assert [c.step for c in list_checkpoints(tmp_path / "first" / "checkpoints")] == [3, 5]
    assert step_3.path.stat().st_mtime_ns == written
    at_5 = _author_table(first)
    assert not torch.equal(at_5, at_3)
    # Warm start: a new run starts from step 3's weights; one step at a tiny learning rate stays next to them (a
    # fresh table would be ~0.01 away, the init's scale).
    second = _run_config(tmp_path, "second", 1, {"warm_start_from": str(step_3.path)})
    helpers.train_run(second, ["optimizer.sparse.learning_rate=1e-7"])
    warm = _author_table(second)
    assert not torch.equal(warm, at_3)
    torch.testing.assert_close(warm, at_3, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_a_history_model_trains_without_torchrec_train_pipeline_and_says_why(tmp_path, monkeypatch):
    from core.distributed import init_distributed, shutdown_distributed
    from core.train_loop import TrainLoop
    from projects.home.recap.schema import load_recap_config
    from projects.home.recap.train import train

    assert "engagement histories" in build_model(history_config()).train_pipeline_problem()
    problems = []
    wants = TrainLoop._wants_pipeline

    def asking(self):  # the pipeline asked for (the default on CUDA): the model's reason keeps it off
        problems.append(self.pipeline_problem())
        self.use_train_pipeline = None
        return wants(self)

    monkeypatch.setattr(TrainLoop, "_wants_pipeline", asking)
    ctx = init_distributed("cpu")
    try:
        result = train(load_recap_config(_run_config(tmp_path, "run", 2), []), ctx)
    finally:
        shutdown_distributed()
    assert result.step == 2 and problems and all("engagement histories" in p for p in problems)


def test_history_ids_looked_up_once_per_distinct_id_give_the_same_rows_and_gradients():
    """The CPU lookup of each distinct history id once per batch (dedup_history_ids) equals looking every item up:
    the model's outputs and the gradients of the shared and own tables and of the dense parameters."""
    config = history_config()
    b = batch_of(config, 0, 0)
    history = b.sequences["history"]
    # Repeated ids, as in real batches: every row's history repeats row 0's first ids.
    assert int(history["id:hist.author"].unique().numel()) < int(history["id:hist.author"].numel())
    results, looked_up = [], []
    for dedup in (True, False):
        torch.manual_seed(0)
        model = build_model(config)
        model.dedup_history_ids = dedup
        collection = model.large_embeddings_unpooled["dim_8"]
        forward = collection.forward
        collection.forward = lambda features, forward=forward: looked_up.append(features.values().numel()) or \
            forward(features)
        out = model(b)
        loss = sum(v.float().sum() for k, v in out.items() if k == "logits")
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out["logits"].detach(), grads))
    (logits, grads), (logits_all, grads_all) = results
    # Every item's id once each without, each distinct id once with (fewer rows looked up).
    items = sum(int(history[k].numel()) for k in ("id:hist.author", "id:hist.tag", "candidate:hist.author"))
    distinct = sum(int(history[k].unique().numel()) for k in ("id:hist.author", "id:hist.tag",
                                                              "candidate:hist.author"))
    pooled = int(b.sparse["author_id"].values().numel())  # the candidate's pooled author ids, not deduplicated
    assert looked_up == [distinct + pooled, items + pooled]
    torch.testing.assert_close(logits, logits_all, rtol=1e-6, atol=1e-6)
    assert grads.keys() == grads_all.keys()
    tables = [n for n in grads if "large_embeddings_unpooled" in n]
    assert len(tables) == 2  # the shared author table and the history's own tag table
    for name in grads:
        torch.testing.assert_close(grads[name], grads_all[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("kind", ["target_attention", "pooling", "transformer"])
def test_history_rows_given_packed_in_training_give_the_same_outputs_and_gradients(kind):
    """In CPU training the sharded tables' history rows go to a packing encoder as they are (pack_history_rows),
    not padded and packed again: the same outputs and gradients as the padded inputs; an encoder that does not pack
    (the transformer) gets them padded either way."""
    encoder = {"target_attention": "{target_attention: {hidden_dims: [8]}}", "pooling": "{pooling: {}}",
               "transformer": "{transformer: {num_layers: 1, num_heads: 2}}"}[kind]
    config = history_config(overrides=[f"model.sequences.history.encoder={encoder}"])
    b = batch_of(config, 0, 0)
    results, keys = [], []
    for packed in (True, False):
        torch.manual_seed(0)
        model = build_model(config)
        model.train()
        model.pack_history_rows = packed
        padded = model.padded_histories

        def recording(*args, padded=padded):
            inputs = padded(*args)
            keys.append(sorted(inputs))
            return inputs

        model.padded_histories = recording
        out = model(b)
        sum(v.float().sum() for k, v in out.items() if k == "logits").backward()
        results.append((out["logits"].detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                                 if p.grad is not None}))
    (logits, grads), (logits_padded, grads_padded) = results
    given_packed = [k for k in keys[0] if "items:emb:" in k]
    assert given_packed == ([] if kind == "transformer" else ["history/items:emb:hist.author",
                                                              "history/items:emb:hist.tag"])
    assert not [k for k in keys[1] if "items:" in k]
    torch.testing.assert_close(logits, logits_padded, rtol=1e-6, atol=1e-6)
    assert grads.keys() == grads_padded.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], grads_padded[name], rtol=1e-5, atol=1e-6, msg=name)


def test_packed_history_rows_given_to_a_padded_path_are_an_error():
    model = build_model(history_config())
    model.train()
    b = batch_of(history_config(), 0, 0)
    inputs = model.padded_histories(b)
    encoder = model.dense.histories["history"]
    encoder.packs = lambda mask: False  # as on a GPU
    with pytest.raises(ValueError, match="takes its inputs padded here"):
        encoder(inputs)
