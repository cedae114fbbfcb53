"""Large embedding tables: ids of any value mapped into range (mod / hash) before a torchrec lookup."""

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from common.sparse_embeddings import (
    LargeTableSpec,
    SparseIdTransform,
    build_embedding_bag_collection,
    hash_ids,
    pooled_embedding_dim,
)

TABLES = [
    LargeTableSpec(
        "users", ("user_id",), num_embeddings=10, embedding_dim=4, pooling="sum", id_transform="mod"
    ),
    LargeTableSpec("tags", ("hashtags", "topics"), num_embeddings=7, embedding_dim=3, pooling="mean"),
]


def _reference_hash(i: int) -> int:
    """The documented hash in plain Python integers: wrap the product to signed 64 bits, xor an arithmetic shift."""
    h = (i * 0x9E3779B97F4A7C15) % (1 << 64)
    h = h - (1 << 64) if h >= 1 << 63 else h
    return h ^ (h >> 32)


def _kjt(batch: int = 2) -> KeyedJaggedTensor:
    # user_id: [12], [-3] ; hashtags: [2**62, -5], [] ; topics: [1], [123456789012345]
    return KeyedJaggedTensor(
        keys=["user_id", "hashtags", "topics"],
        values=torch.tensor([12, -3, 2**62, -5, 1, 123456789012345]),
        lengths=torch.tensor([1, 1, 2, 0, 1, 1]),
        stride=batch,
    )


def test_hash_matches_its_definition():
    ids = [0, 1, -1, 12345, -(2**63), 2**63 - 1, 987654321987]
    assert hash_ids(torch.tensor(ids)).tolist() == [_reference_hash(i) for i in ids]


def test_mod_and_hash_bring_every_id_into_range():
    out = SparseIdTransform(TABLES)(_kjt())
    assert out.keys() == ["user_id", "hashtags", "topics"]
    assert out.lengths().tolist() == [1, 1, 2, 0, 1, 1]
    expected = [12 % 10, -3 % 10] + [_reference_hash(i) % 7 for i in (2**62, -5, 1, 123456789012345)]
    assert out.values().tolist() == expected


def test_lookup_with_out_of_range_ids_pools_per_feature():
    ebc = build_embedding_bag_collection(TABLES)
    transform = SparseIdTransform(TABLES)
    kjt = _kjt()
    pooled = ebc(transform(kjt))
    assert pooled.values().shape == (2, pooled_embedding_dim(TABLES)) == (2, 10)
    users = ebc.embedding_bags["users"].weight
    tags = ebc.embedding_bags["tags"].weight
    # sum pooling of user row 2 / row 7; mean of the two hashtag rows; an empty bag pools to zeros
    torch.testing.assert_close(pooled["user_id"], torch.stack([users[2], users[7]]))
    h = [_reference_hash(i) % 7 for i in (2**62, -5)]
    torch.testing.assert_close(
        pooled["hashtags"], torch.stack([(tags[h[0]] + tags[h[1]]) / 2, torch.zeros(3)])
    )


def test_collection_builds_on_meta():
    ebc = build_embedding_bag_collection(TABLES, device="meta")
    assert all(p.device.type == "meta" for p in ebc.parameters())
    assert ebc.embedding_bags["users"].weight.shape == (10, 4)


def test_features_without_a_table_are_dropped_and_tables_order_kept():
    kjt = KeyedJaggedTensor(
        keys=["topics", "other", "hashtags", "user_id"],
        values=torch.tensor([1, 99, 3, 21]),
        lengths=torch.tensor([1, 0, 0, 1, 1, 0, 0, 1]),
        stride=2,
    )
    out = SparseIdTransform(TABLES)(kjt)
    assert out.keys() == ["user_id", "hashtags", "topics"]
    assert out.lengths().tolist() == [0, 1, 1, 0, 1, 0]
    assert out.values().tolist() == [1, _reference_hash(3) % 7, _reference_hash(1) % 7]
