"""Random RecapBatches shaped by a config, for tests and throughput benchmarks (no files involved)."""

from __future__ import annotations

import torch

from common.batch import RecapBatch
from projects.home.recap.schema import RecapConfig


def random_batch(
    config: RecapConfig,
    batch_size: int,
    generator: torch.Generator | None = None,
    max_ids_per_row: int = 3,
    id_range: int = 1 << 40,
    with_sparse: bool = True,
) -> RecapBatch:
    """A batch with the config's feature widths: heavy-tailed continuous values (with a few NaN/inf), 0/1
    binary and labels, small discrete ids, raw sparse ids in [-id_range, id_range) (0..max_ids_per_row per row;
    with_sparse=False leaves them out, and torchrec unimported)."""
    g = generator
    schema = config.data.features
    b = batch_size
    continuous = torch.randn(b, schema.num_continuous, generator=g).mul(3).exp()
    if continuous.numel():
        continuous.view(-1)[:: max(1, continuous.numel() // 5)] = float("nan")
        continuous.view(-1)[1 :: max(1, continuous.numel() // 3)] = float("inf")
    binary = (torch.rand(b, schema.num_binary, generator=g) < 0.3).float()
    discrete = torch.randint(0, 40, (b, schema.num_discrete), generator=g)
    sparse = None
    if schema.sparse and with_sparse:
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        lengths = torch.randint(0, max_ids_per_row + 1, (len(schema.sparse) * b,), generator=g)
        values = torch.randint(-id_range, id_range, (int(lengths.sum()),), generator=g)
        sparse = KeyedJaggedTensor(keys=list(schema.sparse), values=values, lengths=lengths, stride=b)
    embeddings = torch.randn(b, sum(e.dim for e in schema.embeddings), generator=g)
    num_tasks = len(config.model.tasks)
    labels = (torch.rand(b, num_tasks, generator=g) < 0.2).float()
    weights = torch.ones(b, num_tasks)
    sequences = {name: random_history(group, b, g, id_range, _num_actions(config, name))
                 for name, group in schema.sequences.items()}
    return RecapBatch(continuous, binary, discrete, sparse, embeddings, labels, weights, sequences=sequences)


def _num_actions(config: RecapConfig, group: str) -> int:
    """The group's action types (the model refuses ids outside them); 4 without a model section for it."""
    spec = config.model.sequences.get(group)
    return spec.num_actions if spec is not None and spec.num_actions is not None else 4


def random_history(group, batch_size: int, generator: torch.Generator | None = None, id_range: int = 1 << 40,
                   num_actions: int = 4) -> dict[str, torch.Tensor]:
    """A jagged history group as the loader gives it: 0..max_length items per row (some rows empty), raw ids,
    action types in [0, num_actions), continuous ages, and a candidate id per id column that has one."""
    g = generator
    lengths = torch.randint(0, group.max_length + 1, (batch_size,), generator=g)
    lengths[:: 4] = 0
    n = int(lengths.sum())
    out = {"lengths": lengths}
    for column in group.ids:
        out["id:" + column.name] = torch.randint(-id_range, id_range, (n,), generator=g)
        if column.candidate:
            out["candidate:" + column.name] = torch.randint(-id_range, id_range, (batch_size,), generator=g)
    if group.actions:
        out["actions"] = torch.randint(0, num_actions, (n,), generator=g)
    if group.continuous:
        out["continuous"] = torch.rand(n, len(group.continuous), generator=g) * 100
    return out
