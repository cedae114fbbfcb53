"""Small embeddings (ids taken modulo the table), position debias (unknown in eval) and dense embedding norms."""

import torch

from common.embeddings import DenseEmbeddingNorm, PositionDebias, SmallEmbeddings


def test_small_embeddings_take_ids_modulo_table_size():
    emb = SmallEmbeddings(columns=[2, 0], num_embeddings=[5, 3], embedding_dims=[2, 4])
    assert emb.output_dim == 6
    discrete = torch.tensor([[7, 99, 1], [-1, 0, 12], [2, 5, -6]])
    out = emb(discrete)
    first, second = emb.tables
    # column 2 through table 0 (size 5): 1, 12 -> 2, -6 -> 4;  column 0 through table 1 (size 3): 7 -> 1, -1 -> 2, 2
    torch.testing.assert_close(out[:, :2], first.weight[torch.tensor([1, 2, 4])])
    torch.testing.assert_close(out[:, 2:], second.weight[torch.tensor([1, 2, 2])])


def test_position_debias_is_unknown_at_eval():
    pos = PositionDebias(column=1, num_positions=4, embedding_dim=3, drop_probability=0.0)
    discrete = torch.tensor([[9, 0], [9, 3], [9, 4], [9, -1]])
    unknown = pos.embedding.weight[4]
    # Training with no dropping: in-range positions use their row, out-of-range ones the unknown row.
    out = pos.train()(discrete)
    torch.testing.assert_close(
        out, torch.stack([pos.embedding.weight[0], pos.embedding.weight[3], unknown, unknown])
    )
    torch.testing.assert_close(pos.eval()(discrete), unknown.expand(4, 3))


def test_position_debias_drops_with_its_probability():
    torch.manual_seed(0)
    pos = PositionDebias(column=0, num_positions=8, embedding_dim=2, drop_probability=0.25).train()
    with torch.no_grad():
        pos.embedding.weight.copy_(torch.arange(9).float().unsqueeze(1).expand(9, 2))
    out = pos(torch.full((20000, 1), 5))
    dropped = (out[:, 0] == 8).float().mean().item()
    assert abs(dropped - 0.25) < 0.02
    assert set(out[:, 0].unique().tolist()) == {5.0, 8.0}
    always = PositionDebias(column=0, num_positions=8, embedding_dim=2, drop_probability=1.0).train()
    torch.testing.assert_close(always(torch.full((5, 1), 5)), always.embedding.weight[8].expand(5, 2))


def test_dense_embeddings_layer_normed_one_by_one():
    norm = DenseEmbeddingNorm([2, 3])
    x = torch.tensor([[1.0, 3.0, 0.0, 3.0, 6.0]])
    expected = torch.cat(
        [torch.nn.functional.layer_norm(x[:, :2], (2,)), torch.nn.functional.layer_norm(x[:, 2:], (3,))],
        dim=1,
    )
    torch.testing.assert_close(norm(x), expected)
    assert norm.output_dim == 5
    torch.testing.assert_close(DenseEmbeddingNorm([2, 3], layer_norm=False)(x), x)
