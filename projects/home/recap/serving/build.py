"""The ServingRanker of a trained model: the checks that it can be exported (unsharded, on CPU, materialized) and
its embedding tables gathered from both torchrec collections, shared with the model (no copies), each with the
features that read it and their id transform."""

from __future__ import annotations

from typing import Any

import torch

from projects.home.recap.model.multi_task import MultiTaskRankingModel
from projects.home.recap.serving.artifact import ExportError
from projects.home.recap.serving.serving_model import ServedHistoryColumn, ServedSparseFeature, ServingRanker


def check_model(model: MultiTaskRankingModel) -> None:
    """An ExportError unless `model` is an unsharded MultiTaskRankingModel on the CPU, every tensor materialized."""
    if not isinstance(model, MultiTaskRankingModel):
        hint = " (pass model_and_loss.model)" if hasattr(model, "model") else ""
        raise ExportError(f"expected an unsharded MultiTaskRankingModel, got {type(model).__name__}{hint}")
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    meta = [name for name, t in tensors if t.is_meta]
    if meta:
        raise ExportError(
            f"{len(meta)} model tensors are on the meta device, not materialized (first: {meta[:3]}); load the "
            "checkpoint into a model built on CPU before exporting"
        )
    elsewhere = [f"{name} ({t.device})" for name, t in tensors if t.device.type != "cpu"]
    if elsewhere:
        raise ExportError(f"export needs the model on CPU; {elsewhere[:3]} are not; call model.cpu() first")
    if model.large_embeddings is None and model.large_embeddings_unpooled is None:
        return
    # torchrec only where there are tables: a model without them exports without torchrec installed.
    from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

    if model.large_embeddings is not None and type(model.large_embeddings) is not EmbeddingBagCollection:
        raise ExportError(
            f"large_embeddings is a {type(model.large_embeddings).__name__}; export needs the unsharded torchrec "
            "EmbeddingBagCollection with every table fully on this process"
        )
    for key, collection in (model.large_embeddings_unpooled or {}).items():
        if type(collection) is not EmbeddingCollection:
            raise ExportError(
                f"large_embeddings_unpooled.{key} is a {type(collection).__name__}; export needs the unsharded "
                "torchrec EmbeddingCollection with every table fully on this process"
            )


def _plain_weight(name: str, weight: torch.Tensor) -> torch.Tensor:
    if type(weight.detach()) is not torch.Tensor:
        raise ExportError(
            f"table {name!r} weight is a {type(weight.detach()).__name__}, not a plain tensor; export an unsharded model"
        )
    return weight


def _served_tables(model: MultiTaskRankingModel):
    """(tables, {feature: (table, rows, dim, pooling)}, {feature: "hash" or "mod"}) of both collections."""
    from torchrec.modules.embedding_configs import pooling_type_to_str

    tables: dict[str, torch.Tensor] = {}
    reads: dict[str, tuple[str, int, int, str]] = {}
    transforms: dict[str, str] = {}
    ebc = model.large_embeddings
    if ebc is not None:
        if ebc.is_weighted():
            raise ExportError("large_embeddings is a weighted EmbeddingBagCollection, which serving does not support")
        for cfg in ebc.embedding_bag_configs():
            tables[cfg.name] = _plain_weight(cfg.name, ebc.embedding_bags[cfg.name].weight)
            reads.update({f: (cfg.name, cfg.num_embeddings, cfg.embedding_dim, pooling_type_to_str(cfg.pooling))
                          for f in cfg.feature_names})
        transforms.update(_transforms(model.id_transform, reads))
    for key, collection in (model.large_embeddings_unpooled or {}).items():
        own: dict[str, tuple[str, int, int, str]] = {}
        for cfg in collection.embedding_configs():
            tables[cfg.name] = _plain_weight(cfg.name, collection.embeddings[cfg.name].weight)
            # Pooled features pool by their table's config; history columns are looked up unpooled ("none").
            own.update({f: (cfg.name, cfg.num_embeddings, cfg.embedding_dim, model.unpooled_pooling.get(f, "none"))
                        for f in cfg.feature_names})
        transforms.update(_transforms(model.unpooled_transforms[key], own))
        reads.update(own)
    return tables, reads, transforms


def _transforms(transform, reads: dict[str, tuple[str, int, int, str]]) -> dict[str, str]:
    """{feature: its id transform}, after checking the transform maps into its table's rows."""
    out = {}
    for name, (table, rows, _, _) in reads.items():
        if transform.size_of.get(name) != rows:
            raise ExportError(f"sparse feature {name!r}: the id transform maps into {transform.size_of.get(name)} rows "
                              f"but table {table!r} has {rows}")
        out[name] = "hash" if transform.hashed[name] else "mod"
    return out


def history_id_tables(model: MultiTaskRankingModel) -> dict[str, dict[str, Any]]:
    """{"<group>/id:<col>": its table, size, dim and id transform} of the history columns with a sharded table."""
    if not model.history_columns:
        return {}
    _, reads, transforms = _served_tables(model)
    out = {}
    for group, columns in model.history_columns.items():
        for column in columns:
            key = f"{group}/id:{column}"
            table, rows, dim, _ = reads[key]
            out[key] = {"table": table, "num_embeddings": rows, "embedding_dim": dim, "id_transform": transforms[key]}
    return out


def build_serving_model(model: MultiTaskRankingModel) -> ServingRanker:
    """The ServingRanker sharing the model's dense part and embedding tables (no copies), with the history id
    columns whose table is sharded looked up in the same tables."""
    check_model(model)
    if model.large_embeddings is None and model.large_embeddings_unpooled is None:
        return ServingRanker(model.dense, {}, [])
    tables, reads, transforms = _served_tables(model)
    features = [ServedSparseFeature(name=name, table=reads[name][0], num_embeddings=reads[name][1],
                                    embedding_dim=reads[name][2], pooling=reads[name][3], id_transform=transforms[name])
                for name in model.sparse_feature_names]
    history = [ServedHistoryColumn(group=group, column=column, table=reads[f"{group}/id:{column}"][0],
                                   num_embeddings=reads[f"{group}/id:{column}"][1],
                                   id_transform=transforms[f"{group}/id:{column}"])
               for group, columns in model.history_columns.items() for column in columns]
    return ServingRanker(model.dense, tables, features, history)
