"""Build the model and its loss from a validated recap config (configs in, plain-argument modules out)."""

from __future__ import annotations

import torch
from torch import nn

from common.calibration import log_ratio
from common.dcn import Dcn
from common.embeddings import DenseEmbeddingNorm, PositionDebias, SmallEmbeddings
from common.expert_mixtures import PLE, MMoE
from common.featurization import ClipLog1pAbs, DoubleNormLog, Log1pAbs, ZScoreLog
from common.history import HistoryEncoder, HistoryTokens, ItemWeights
from common.mask_net import MaskBlockSpec, MaskNet
from common.mlp import MlpSpec
from common.numeric_embeddings import NumericEmbeddings
from common.sequence_encoders import CandidateIsolatedTransformer, HistoryPooling, TargetAttention
from common.sparse_embeddings import (
    LargeTableSpec,
    SparseIdTransform,
    build_embedding_bag_collection,
    build_embedding_collections,
    pooled_embedding_dim,
)
from projects.home.recap.data.config import FeatureSchema
from projects.home.recap.model.dense import AffineMap, DenseRankingModel, TaskHead
from projects.home.recap.model.feature_stats import load_feature_stats
from projects.home.recap.model.loss import ModelAndLoss
from projects.home.recap.model.multi_task import MultiTaskRankingModel, UnpooledTables
from projects.home.recap.model.numeric_boundaries import load_boundaries
from projects.home.recap.model_config import ModelConfig
from projects.home.recap.model_config_features import FeaturizationConfig
from projects.home.recap.model_config_history import history_table_name
from projects.home.recap.model_config_towers import MlpConfig, TowerConfig
from projects.home.recap.schema import RecapConfig


def mlp_spec(config: MlpConfig) -> MlpSpec:
    """The MlpSpec of an MlpConfig."""
    bn = config.batch_norm
    return MlpSpec(
        layer_sizes=tuple(config.layer_sizes),
        batch_norm=bn is not None,
        batch_norm_affine=bn.affine if bn is not None else True,
        batch_norm_momentum=bn.momentum if bn is not None else 0.1,
        dropout=config.dropout,
        final_layer_activation=True,  # every configured layer is a hidden layer (MlpConfig)
    )


def build_tower(config: TowerConfig, in_features: int) -> nn.Module:
    """An Mlp, Dcn or MaskNet reading `in_features` values; it reports `output_dim`."""
    if config.mlp_config is not None:
        return mlp_spec(config.mlp_config).build(in_features)
    if config.dcn_config is not None:
        dcn = config.dcn_config
        return Dcn(
            in_features,
            num_cross_layers=dcn.poly_degree,
            projection_dim=dcn.projection_dim,
            stacked_mlp=mlp_spec(dcn.stacked_mlp) if dcn.stacked_mlp else None,
            parallel_mlp=mlp_spec(dcn.parallel_mlp) if dcn.parallel_mlp else None,
            output_mlp=mlp_spec(dcn.output_mlp) if dcn.output_mlp else None,
        )
    mask_net = config.mask_net_config
    assert mask_net is not None  # TowerConfig validates exactly one architecture
    blocks = [
        MaskBlockSpec(
            output_size=b.output_size,
            reduction_factor=b.reduction_factor,
            aggregation_size=b.aggregation_size,
            input_layer_norm=b.input_layer_norm,
            activation=b.activation,
        )
        for b in mask_net.mask_blocks
    ]
    return MaskNet(
        in_features,
        blocks,
        parallel=mask_net.use_parallel,
        mlp=mlp_spec(mask_net.mlp) if mask_net.mlp else None,
    )


def build_mixture(model: ModelConfig, in_features: int) -> nn.Module:
    """The MMoE or PLE of model.mixture, each expert a copy of model.backbone's architecture."""
    spec, m = model.backbone, model.mixture
    assert spec is not None and m is not None  # ModelConfig validates both for mmoe and ple

    def make_expert(width: int) -> nn.Module:
        return build_tower(spec, width)

    tasks = len(model.tasks)
    if model.multi_task_type == "mmoe":
        return MMoE(in_features, tasks, m.num_experts, make_expert)
    return PLE(in_features, tasks, m.num_levels, m.num_task_experts, m.num_shared_experts, make_expert)


def build_histories(config: RecapConfig, feature_width: int = 0) -> nn.ModuleDict | None:
    """One HistoryEncoder per data.features.sequences group (common/history.py), or None without groups;
    feature_width: the featurized continuous and binary features' width (a candidate token may project them)."""
    groups = config.data.features.sequences
    if not groups:
        return None
    encoders = {}
    for name, group in groups.items():
        spec = config.model.sequences[name]
        dim = spec.embedding_dim
        tokens = HistoryTokens(
            dim,
            # Replicated tables are owned by the tokens; the others' rows come from the sharded lookup.
            {c.name: (spec.tables[c.name].num_embeddings, spec.tables[c.name].transform == "hash")
             if spec.tables[c.name].replicated else None for c in group.ids},
            spec.num_actions,
            len(group.continuous),
            config.model.init_of(spec.init),
            feature_width if spec.candidate_features else 0,
        )
        decay = spec.time_decay
        weights = ItemWeights(spec.num_actions, spec.action_weights,
                              list(group.continuous).index(decay.column) if decay is not None else None,
                              decay.init_hours if decay is not None else 24.0)
        dim = tokens.dim  # the blocks side by side
        encoder = spec.encoder
        if encoder.pooling is not None:
            module: nn.Module = HistoryPooling(encoder.pooling.mode, dim)
        elif encoder.target_attention is not None:
            t = encoder.target_attention
            module = TargetAttention(dim, t.hidden_dims, t.activation, t.softmax)
        else:
            t = encoder.transformer
            assert t is not None  # HistoryEncoderConfig validates exactly one encoder
            module = CandidateIsolatedTransformer(dim, t.num_layers, t.num_heads, t.dropout, t.positions,
                                                  group.max_length, t.causal, t.ffn_multiplier)
        matched = [c.name for c in group.ids if c.candidate] if spec.match_features else []
        encoders[name] = HistoryEncoder(name, tokens, module, group.max_length, spec.share_requests, matched,
                                        spec.output_dim, weights, spec.ordinal_actions, spec.mean_pooling,
                                        spec.user_token)
    return nn.ModuleDict(encoders)


def build_featurizer(config: FeaturizationConfig, schema: FeatureSchema) -> nn.Module:
    """The configured continuous-feature featurizer (ZScoreLog reads its statistics file here)."""
    c, b = schema.num_continuous, schema.num_binary
    if config.double_norm_log is not None:
        d = config.double_norm_log
        return DoubleNormLog(
            c,
            b,
            batch_norm=d.batch_norm is not None,
            batch_norm_affine=d.batch_norm.affine if d.batch_norm else True,
            batch_norm_momentum=d.batch_norm.momentum if d.batch_norm else 0.1,
            clip_magnitude=d.clip_magnitude,
            layer_norm=d.layer_norm,
        )
    if config.log1p_abs is not None:
        return Log1pAbs(c, b)
    if config.clip_log1p_abs is not None:
        return ClipLog1pAbs(c, b, config.clip_log1p_abs.clip_magnitude)
    z = config.zscore_log
    assert z is not None  # FeaturizationConfig validates exactly one featurization
    mean, std = load_feature_stats(z.stats_path, schema)
    return ZScoreLog(mean, std, b, z.clip_magnitude)


def history_table_features(config: RecapConfig) -> dict[str, list[str]]:
    """{table name: the unpooled features that read it}: each sharded history id column ("<group>/id:<col>") and its
    candidate's id ("<group>/candidate:<col>", when the column has a candidate), in the table its config names (a
    model.large_embeddings table, or its own `<group>_<column>`)."""
    out: dict[str, list[str]] = {}
    for group, data in config.data.features.sequences.items():
        spec = config.model.sequences[group]
        for column in data.ids:
            table = spec.tables[column.name]
            if table.replicated:
                continue
            name = table.table if table.table is not None else history_table_name(group, column.name)
            keys = out.setdefault(name, [])
            keys.append(f"{group}/id:{column.name}")
            if column.candidate:
                keys.append(f"{group}/candidate:{column.name}")
    return out


def large_table_specs(config: RecapConfig) -> list[LargeTableSpec]:
    """The large embedding tables of the config: model.large_embeddings (with the history columns that share
    them), then the history id columns' own sharded tables."""
    readers = history_table_features(config)
    tables = [
        LargeTableSpec(
            name=t.name,
            feature_names=tuple(t.feature_names),
            num_embeddings=t.num_embeddings,
            embedding_dim=t.embedding_dim,
            pooling=t.pooling,
            id_transform=t.id_transform,
            init=config.model.init_of(t.init),
            sequence_features=tuple(readers.get(t.name, ())),
        )
        for t in config.model.large_embeddings
    ]
    for group, data in config.data.features.sequences.items():
        spec = config.model.sequences[group]
        for column in data.ids:
            table = spec.tables[column.name]
            if table.replicated or table.table is not None:
                continue
            name = history_table_name(group, column.name)
            assert table.num_embeddings is not None  # HistoryTableConfig validates an own table's size
            tables.append(LargeTableSpec(
                name=name,
                feature_names=(),
                num_embeddings=table.num_embeddings,
                embedding_dim=spec.embedding_dim,
                id_transform=table.transform,
                # The history tables' default: normal with std dim ** -0.5 (common/history.py).
                init=config.model.init_of(spec.init) or ("normal", spec.embedding_dim ** -0.5),
                sequence_features=tuple(readers[name]),
            ))
    return tables


def build_unpooled_tables(tables: list[LargeTableSpec], sparse_device: torch.device | str) -> UnpooledTables | None:
    """The EmbeddingCollections (one per embedding dim) of the tables some history id column reads, with their id
    transforms; None when there are none."""
    unpooled = [t for t in tables if t.unpooled]
    if not unpooled:
        return None
    collections = build_embedding_collections(unpooled, sparse_device)
    history: dict[str, list[str]] = {}
    for t in unpooled:
        for key in t.sequence_features:
            group, _, field = key.partition("/")
            if field.startswith("id:"):
                history.setdefault(group, []).append(field[len("id:"):])
    return UnpooledTables(
        nn.ModuleDict({f"dim_{dim}": c for dim, c in collections.items()}),
        nn.ModuleDict({f"dim_{dim}": SparseIdTransform([t for t in unpooled if t.embedding_dim == dim])
                       for dim in collections}),
        {name: t.pooling for t in unpooled for name in t.feature_names},
        history,
    )


def build_model(config: RecapConfig, sparse_device: torch.device | str = "cpu") -> MultiTaskRankingModel:
    """The MultiTaskRankingModel of a validated config; the torchrec collections are created on `sparse_device`."""
    model, schema = config.model, config.data.features
    featurizer = build_featurizer(model.featurization, schema)
    dense_embeddings = (
        DenseEmbeddingNorm([e.dim for e in schema.embeddings], model.dense_embedding_layer_norm)
        if schema.embeddings
        else None
    )
    spans = [schema.discrete_span(e.feature) for e in model.small_embeddings]
    small_embeddings = (
        SmallEmbeddings(
            columns=[start for start, _ in spans],
            num_embeddings=[e.num_embeddings for e in model.small_embeddings],
            embedding_dims=[e.embedding_dim for e in model.small_embeddings],
            lengths=[width for _, width in spans],
            inits=[model.init_of(e.init) for e in model.small_embeddings],
        )
        if model.small_embeddings
        else None
    )
    pos = model.position_debias
    position_debias = (
        PositionDebias(
            schema.discrete_index(pos.feature), pos.num_positions, pos.embedding_dim, pos.drop_probability,
            model.init_of(pos.init),
        )
        if pos is not None
        else None
    )
    numeric = model.numeric_embeddings
    numeric_embeddings = (
        NumericEmbeddings(
            *load_boundaries(numeric.stats_path, schema, numeric.features, numeric.max_bins), numeric.embedding_dim
        )
        if numeric is not None
        else None
    )
    tables = large_table_specs(config)
    pooled_dim = pooled_embedding_dim(tables)
    histories = build_histories(config, featurizer.output_dim)
    in_features = DenseRankingModel.input_dim(
        featurizer, dense_embeddings, small_embeddings, position_debias, pooled_dim, numeric_embeddings, histories
    )
    if in_features == 0:
        raise ValueError("the model has no input features: data.features and model embeddings are all empty")
    backbone, mixture = None, None
    tower_in = in_features
    if model.multi_task_type in ("mmoe", "ple"):
        mixture = build_mixture(model, in_features)
        tower_in = mixture.output_dim
    elif model.backbone is not None:
        backbone = build_tower(model.backbone, in_features)
        tower_in = backbone.output_dim + (in_features if model.multi_task_type == "share_partial" else 0)
    heads: dict[str, TaskHead] = {}
    for name, task in model.tasks.items():
        affine = task.affine_map
        heads[name] = TaskHead(
            build_tower(task, tower_in),
            AffineMap(affine.scale, affine.bias, affine.trainable) if affine is not None else None,
        )
    try:
        dense = DenseRankingModel(
            featurizer,
            heads,
            log_ratios=[
                log_ratio(*config.data.calibration_rates(t)) for t in heads
            ],
            dense_embeddings=dense_embeddings,
            small_embeddings=small_embeddings,
            position_debias=position_debias,
            pooled_sparse_dim=pooled_dim,
            multi_task_type=model.multi_task_type,
            backbone=backbone,
            numeric_embeddings=numeric_embeddings,
            mixture=mixture,
            score_weights=model.score_weights(),
            histories=histories,
            group_towers=model.group_towers,
        )
    except KeyError as exc:
        raise ValueError(
            f"model.tasks: a task name clashes with a module attribute ({exc}); rename the task"
        ) from None
    bags = [t for t in tables if not t.unpooled]
    return MultiTaskRankingModel(
        dense,
        build_embedding_bag_collection(bags, sparse_device) if bags else None,
        SparseIdTransform(bags) if bags else None,
        build_unpooled_tables(tables, sparse_device),
        # The pooled features in config order, wherever their table lives.
        [name for t in tables for name in t.feature_names],
    )


def build_model_and_loss(config: RecapConfig, sparse_device: torch.device | str = "cpu") -> ModelAndLoss:
    """The model with its per-task loss (pos_weight, loss_weight) and the evaluation stratifier columns."""
    model = build_model(config, sparse_device)
    tasks = config.model.tasks
    schema = config.data.features
    return ModelAndLoss(
        model,
        pos_weight=[tasks[t].pos_weight for t in model.task_names],
        loss_weight=[tasks[t].loss_weight for t in model.task_names],
        stratifier_columns=[schema.discrete_index(s) for s in config.evaluation.stratifiers],
    )
