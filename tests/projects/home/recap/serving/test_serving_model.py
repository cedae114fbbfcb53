"""ServingRanker: the same id transform and pooling as training, on plain tensors; hand-checked pooling and hashing."""

import pytest
import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from common.sparse_embeddings import HASH_MULTIPLIER, LargeTableSpec, SparseIdTransform
from projects.home.recap.model.synthetic_batch import random_batch
from projects.home.recap.serving.build import build_serving_model
from projects.home.recap.serving.metadata import ID_TRANSFORMS
from projects.home.recap.serving.serving_model import ServedSparseFeature, ServingRanker, serving_inputs


class PooledOnly(nn.Module):
    """A dense part that returns the pooled sparse input, to look at the lookup alone."""

    def forward(self, continuous, binary, discrete, embeddings, pooled_sparse):
        return {"logits": pooled_sparse}


def _index_table(rows: int) -> torch.Tensor:
    # Row i holds i: pooling one id gives the row index it was mapped to.
    return torch.arange(rows, dtype=torch.float32).unsqueeze(1)


def _wrap_int64(x: int) -> int:
    return (x + (1 << 63)) % (1 << 64) - (1 << 63)


def _plain(b: int) -> tuple:
    return torch.zeros(b, 0), torch.zeros(b, 0), torch.zeros(b, 0, dtype=torch.int64), torch.zeros(b, 0)


def test_id_transforms_follow_the_documented_formulas_and_training():
    ids = [0, 1, -1, 7, -13, 2**40 + 3, -(2**62), 2**63 - 1, -(2**63)]
    features = [
        ServedSparseFeature("h", "th", 97, 1, "sum", "hash"),
        ServedSparseFeature("m", "tm", 13, 1, "sum", "mod"),
    ]
    ranker = ServingRanker(PooledOnly(), {"th": _index_table(97), "tm": _index_table(13)}, features).eval()
    values = torch.tensor(ids)
    ones = torch.ones(len(ids), dtype=torch.int64)
    rows = ranker(*_plain(len(ids)), [values, values], [ones, ones])["logits"].long()
    multiplier = HASH_MULTIPLIER
    expected_hash = []
    for x in ids:
        h = _wrap_int64(x * multiplier)
        h = h ^ (h >> 32)  # Python's >> on negative ints is the arithmetic shift
        expected_hash.append(h % 97)
    assert rows[:, 0].tolist() == expected_hash
    assert rows[:, 1].tolist() == [x % 13 for x in ids]
    assert "h >> 32" in ID_TRANSFORMS["hash"]
    # And bit-exact with the training-time transform.
    transform = SparseIdTransform(
        [LargeTableSpec("th", ("h",), 97, 1, "sum", "hash"), LargeTableSpec("tm", ("m",), 13, 1, "sum", "mod")]
    )
    kjt = KeyedJaggedTensor(keys=["h", "m"], values=torch.cat([values, values]), lengths=torch.cat([ones, ones]))
    trained = transform(kjt).values()
    assert trained.tolist() == expected_hash + [x % 13 for x in ids]


def test_sum_and_mean_pooling_with_empty_rows():
    weight = torch.tensor([[1.0, 10.0], [2.0, 20.0], [4.0, 40.0], [8.0, 80.0]])
    features = [
        ServedSparseFeature("s", "t", 4, 2, "sum", "mod"),
        ServedSparseFeature("a", "t", 4, 2, "mean", "mod"),
    ]
    ranker = ServingRanker(PooledOnly(), {"t": weight}, features)
    # Rows: [0, 1] | [] | [3, 7 (-> 3), -1 (-> 3)]
    values = torch.tensor([0, 1, 3, 7, -1])
    lengths = torch.tensor([2, 0, 3])
    pooled = ranker(*_plain(3), [values, values], [lengths, lengths])["logits"]
    assert pooled.tolist() == [[3.0, 30.0, 1.5, 15.0], [0.0, 0.0, 0.0, 0.0], [24.0, 240.0, 8.0, 80.0]]


def test_lengths_must_add_up_to_the_values():
    ranker = ServingRanker(PooledOnly(), {"t": _index_table(4)}, [ServedSparseFeature("tags", "t", 4, 1, "sum", "mod")])
    with pytest.raises(RuntimeError, match="sparse feature tags: sparse_lengths do not add up"):
        ranker(*_plain(2), [torch.tensor([1, 2, 3])], [torch.tensor([1, 1])])
    with pytest.raises(RuntimeError, match="sparse feature tags: sparse_lengths has negative entries"):
        ranker(*_plain(2), [torch.tensor([1])], [torch.tensor([2, -1])])


def test_table_shape_is_checked():
    with pytest.raises(ValueError, match="table 't' has shape \\(4, 1\\), feature 'x' expects \\(5, 1\\)"):
        ServingRanker(PooledOnly(), {"t": _index_table(4)}, [ServedSparseFeature("x", "t", 5, 1, "sum", "mod")])


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_serving_ranker_equals_the_trained_model(model, config, batch_size):
    serving = build_serving_model(model)
    assert serving.feature_names == ["user_id", "author_id", "hashtags"]
    # Shares the tables: no copy.
    assert serving.tables["people"].data_ptr() == model.large_embeddings.embedding_bags["people"].weight.data_ptr()
    batch = random_batch(config, batch_size, torch.Generator().manual_seed(batch_size))
    with torch.no_grad():
        expected = model(batch)
        got = serving(*serving_inputs(batch, serving.feature_names))
    for key in ("logits", "probabilities", "calibrated_probabilities"):
        assert got[key].shape == (batch_size, 3)
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6)
