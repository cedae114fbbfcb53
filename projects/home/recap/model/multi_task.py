"""MultiTaskRankingModel: featurized inputs -> [backbone] -> one tower, logit and calibration per task.

The model is split at the sparse lookup: `MultiTaskRankingModel` holds the id transforms and the torchrec
collections (`large_embeddings`, an EmbeddingBagCollection, and `large_embeddings_unpooled`, one EmbeddingCollection
per embedding dim for the tables that history id columns read; all shardable) and calls `DenseRankingModel`, which
takes plain tensors and can be exported with torch.export (or scripted) for serving.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from common.batch import RecapBatch
from common.calibration import calibrate_logits
from common.history import pad_jagged, padded_history
from common.sparse_embeddings import SparseIdTransform, pool_jagged
from projects.home.recap.model.grouped_towers import group_plan, grouped_logits

if TYPE_CHECKING:  # only the sparse lookup needs torchrec: DenseRankingModel runs without it
    from torchrec.modules.embedding_modules import EmbeddingBagCollection
    from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

MultiTaskType = Literal["share_none", "share_all", "share_partial", "mmoe", "ple"]


class AffineMap(nn.Module):
    """logit <- scale * logit + bias; trainable parameters or fixed buffers."""

    def __init__(self, scale: float = 1.0, bias: float = 0.0, trainable: bool = True) -> None:
        super().__init__()
        if trainable:
            self.scale = nn.Parameter(torch.tensor(float(scale)))
            self.bias = nn.Parameter(torch.tensor(float(bias)))
        else:
            self.register_buffer("scale", torch.tensor(float(scale)))
            self.register_buffer("bias", torch.tensor(float(bias)))

    def forward(self, logit: torch.Tensor) -> torch.Tensor:
        return logit * self.scale + self.bias


class TaskHead(nn.Module):
    """One task: its tower, a Linear to one logit and an optional affine map."""

    def __init__(self, tower: nn.Module, affine_map: AffineMap | None = None) -> None:
        super().__init__()
        self.tower = tower
        self.final_logit = nn.Linear(tower.output_dim, 1)
        self.affine_map = affine_map if affine_map is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.affine_map(self.final_logit(self.tower(x)["output"]))


class DenseRankingModel(nn.Module):
    """Everything after the sparse lookup; plain tensors in, logits / probabilities / calibrated probabilities out.

    Inputs: continuous [B, C], binary [B, Nb], discrete [B, D] int64, embeddings [B, E] (the dense upstream vectors),
    pooled_sparse [B, P] (the collection's pooled output), and the padded history groups (common/history.py), one
    per row or, with request_of_row [B], one per request.
    Outputs: logits, probabilities, calibrated_probabilities [B, T]; with scoring weights w also score [B] =
    calibrated_probabilities @ w; with an expert mixture the gate weights [B, K] of each gate under "gates/<task>"
    (MMoE) or "gates/level_<l>/<task or shared>" (PLE). The input features are concatenated once in the order
    featurized continuous+binary, numeric embeddings (of the raw continuous values), dense embeddings, small
    embeddings, position debias, pooled sparse.
    """

    def __init__(
        self,
        featurizer: nn.Module,
        tasks: dict[str, TaskHead],
        log_ratios: list[float],
        dense_embeddings: nn.Module | None = None,
        small_embeddings: nn.Module | None = None,
        position_debias: nn.Module | None = None,
        pooled_sparse_dim: int = 0,
        multi_task_type: MultiTaskType = "share_none",
        backbone: nn.Module | None = None,
        numeric_embeddings: nn.Module | None = None,
        mixture: nn.Module | None = None,
        score_weights: list[float] | None = None,
        histories: nn.ModuleDict | None = None,
        group_towers: bool = False,
    ) -> None:
        super().__init__()
        mixed = multi_task_type in ("mmoe", "ple")
        if (mixture is None) == mixed:
            raise ValueError(f"multi_task_type {multi_task_type} {'needs' if mixed else 'takes no'} mixture")
        if (backbone is None) != (multi_task_type in ("share_none", "mmoe", "ple")):
            raise ValueError(
                f"multi_task_type {multi_task_type} {'needs' if backbone is None else 'takes no'} backbone"
            )
        if len(log_ratios) != len(tasks):
            raise ValueError(f"{len(tasks)} tasks but {len(log_ratios)} calibration ratios")
        if score_weights is not None and len(score_weights) != len(tasks):
            raise ValueError(f"{len(tasks)} tasks but {len(score_weights)} scoring weights")
        self.featurizer = featurizer
        self.numeric_embeddings = numeric_embeddings
        self.dense_embeddings = dense_embeddings
        self.small_embeddings = small_embeddings
        self.position_debias = position_debias
        self.pooled_sparse_dim = pooled_sparse_dim
        # Engagement-history encoders by group (common/history.py); each adds [encoded, candidate token].
        self.histories = histories
        self.backbone = backbone
        # MMoE or PLE (common/expert_mixtures.py): one mixture of experts per task, read by that task's tower.
        self.mixture = mixture
        self.share_partial = multi_task_type == "share_partial"
        self.task_modules = nn.ModuleDict(tasks)
        self.task_names = list(tasks)
        # With group_towers, towers of one architecture run as one grouped computation (model/grouped_towers.py):
        # the same parameters and maths in a few large products. The attribute can be switched at any time.
        self._tower_plan = group_plan(list(tasks.values()))
        if group_towers and self._tower_plan is None:
            raise ValueError("model.group_towers: the task towers cannot be grouped; each must be an MLP of the same "
                             "layer sizes and dropout, without batch norm")
        self.group_towers = group_towers
        # From the data config, not the checkpoint: changing the sampling rates re-calibrates a trained model.
        self.register_buffer("log_ratio", torch.tensor(log_ratios, dtype=torch.float32), persistent=False)
        # The ranking score's weights (model.scoring), also from the config: re-weighting needs no retraining.
        self.has_score = score_weights is not None
        self.register_buffer("score_weight", torch.tensor(score_weights or [], dtype=torch.float32),
                             persistent=False)
        # (the mixture's gate name, the output key of its weights): task_<t> becomes the task's name.
        self.gate_outputs = [
            (name, "gates/" + self._gate_label(name)) for name in getattr(mixture, "gate_names", [])
        ]

    def _gate_label(self, gate: str) -> str:
        parts = gate.split("/")
        if parts[-1].startswith("task_"):
            parts[-1] = self.task_names[int(parts[-1][len("task_"):])]
        elif parts[-1] == "shared" and "shared" in self.task_names:
            parts[-1] = "shared_gate"  # a task named "shared" keeps its name
        return "/".join(parts)

    @property
    def history_lengths(self) -> dict[str, int]:
        """{history group: the max_length its inputs are padded to}."""
        return {} if self.histories is None else {name: h.max_length for name, h in self.histories.items()}

    @property
    def output_names(self) -> list[str]:
        """The keys of forward's outputs beyond logits, probabilities and calibrated_probabilities: "score" (with
        scoring weights) and "gates/..." (an expert mixture's gate weights [B, K] per gate)."""
        return (["score"] if self.has_score else []) + [key for _, key in self.gate_outputs]

    @staticmethod
    def input_dim(
        featurizer: nn.Module,
        dense_embeddings: nn.Module | None,
        small_embeddings: nn.Module | None,
        position_debias: nn.Module | None,
        pooled_sparse_dim: int,
        numeric_embeddings: nn.Module | None = None,
        histories: nn.ModuleDict | None = None,
    ) -> int:
        """Width of the concatenated input features."""
        parts = [featurizer, numeric_embeddings, dense_embeddings, small_embeddings, position_debias]
        parts += list(histories.values()) if histories is not None else []
        return sum(p.output_dim for p in parts if p is not None) + pooled_sparse_dim

    __jit_unused_properties__ = ["input_width", "output_names", "history_lengths"]
    __jit_ignored_attributes__ = ["_tower_plan"]

    @property
    def input_width(self) -> int:
        """Width of this model's concatenated input features."""
        return self.input_dim(self.featurizer, self.dense_embeddings, self.small_embeddings, self.position_debias,
                              self.pooled_sparse_dim, self.numeric_embeddings, self.histories)

    @torch.jit.unused
    def _grouped_logits(self, x: torch.Tensor, task_inputs: list[torch.Tensor]) -> torch.Tensor:
        """Every head's logit [B, T] in one grouped computation: from x, or from the mixture's task inputs."""
        assert self._tower_plan is not None
        return grouped_logits(list(self.task_modules.values()), self._tower_plan, task_inputs or x, self.training)

    def forward(
        self,
        continuous: torch.Tensor,
        binary: torch.Tensor,
        discrete: torch.Tensor,
        embeddings: torch.Tensor,
        pooled_sparse: torch.Tensor,
        histories: dict[str, torch.Tensor] | None = None,
        request_of_row: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """request_of_row: None (the history tensors hold one row per candidate row), or [B] int64, each row's
        request, the history tensors then holding one row per request (HistoryEncoder.forward)."""
        parts = [self.featurizer(continuous, binary)]
        if self.numeric_embeddings is not None:
            parts.append(self.numeric_embeddings(continuous))
        if self.dense_embeddings is not None:
            parts.append(self.dense_embeddings(embeddings))
        if self.small_embeddings is not None:
            parts.append(self.small_embeddings(discrete))
        if self.position_debias is not None:
            parts.append(self.position_debias(discrete))
        if self.pooled_sparse_dim > 0:
            parts.append(pooled_sparse.float())
        if self.histories is not None:
            if histories is None:
                raise ValueError(f"the model encodes the histories {list(self.histories.keys())}: pass histories")
            for encoder in self.histories.values():
                # parts[0]: the featurized continuous and binary features, which a candidate token may project.
                parts.append(encoder(histories, request_of_row, parts[0]))
        x = torch.cat(parts, dim=1)
        if self.backbone is not None:
            shared = self.backbone(x)["output"]
            x = torch.cat([x, shared], dim=1) if self.share_partial else shared
        gate_outputs: dict[str, torch.Tensor] = {}
        task_inputs: list[torch.Tensor] = []
        if self.mixture is not None:
            task_inputs, gates = self.mixture(x)
            for name, key in self.gate_outputs:
                gate_outputs[key] = gates[name].float()
        if self.group_towers and not torch.jit.is_scripting():
            logits = self._grouped_logits(x, task_inputs)
        elif self.mixture is not None:
            logits = torch.cat([head(h) for head, h in zip(self.task_modules.values(), task_inputs)], dim=1)
        else:
            logits = torch.cat([head(x) for head in self.task_modules.values()], dim=1)
        # Logits and everything after them in float32, also under bf16 autocast.
        logits = logits.float()
        calibrated = calibrate_logits(logits, self.log_ratio)
        out = {
            "logits": logits,
            "probabilities": torch.sigmoid(logits),
            "calibrated_probabilities": calibrated,
        }
        if self.has_score:
            # score = sum_t w_t * p_t over the calibrated probabilities, [B].
            out["score"] = calibrated @ self.score_weight
        out.update(gate_outputs)
        return out


class MultiTaskRankingModel(nn.Module):
    """The whole ranker on a RecapBatch: id transform + large embedding lookup, then the DenseRankingModel."""

    def __init__(
        self,
        dense: DenseRankingModel,
        large_embeddings: EmbeddingBagCollection | None = None,
        id_transform: SparseIdTransform | None = None,
        unpooled: UnpooledTables | None = None,
        sparse_feature_names: list[str] | None = None,
    ) -> None:
        """unpooled: the tables history id columns read (see UnpooledTables); sparse_feature_names: the order of
        the pooled features in the dense input (default: the bag collection's)."""
        super().__init__()
        if (large_embeddings is None) != (id_transform is None):
            raise ValueError("large_embeddings and id_transform go together")
        self.dense = dense
        self.large_embeddings = large_embeddings
        self.id_transform = id_transform
        self.large_embeddings_unpooled = unpooled.collections if unpooled is not None else None
        self.unpooled_transforms = unpooled.transforms if unpooled is not None else None
        # Kept as plain data: torchrec's train pipeline wraps the id transforms (PipelinedPostproc).
        self.unpooled_pooling = dict(unpooled.pooling) if unpooled is not None else {}
        self.history_columns = dict(unpooled.history_columns) if unpooled is not None else {}
        self.bag_feature_names = list(id_transform.feature_names) if id_transform is not None else []
        pooled = self.bag_feature_names + list(self.unpooled_pooling)
        self.sparse_feature_names = list(sparse_feature_names) if sparse_feature_names is not None else pooled
        if self.table_modules() and sorted(self.sparse_feature_names) != sorted(pooled):
            raise ValueError(f"sparse_feature_names {self.sparse_feature_names} are not the pooled features {pooled}")

    @property
    def task_modules(self) -> nn.ModuleDict:
        """Each task's tower, final logit and affine map, keyed by task name."""
        return self.dense.task_modules

    @property
    def task_names(self) -> list[str]:
        return self.dense.task_names

    @property
    def output_names(self) -> list[str]:
        """The outputs beyond logits and probabilities (DenseRankingModel.output_names)."""
        return self.dense.output_names

    def pop_non_finite_count(self) -> int:
        """Non-finite continuous values replaced by 0 in training since the last call (a device sync)."""
        return self.dense.featurizer.pop_non_finite_count()

    def train_pipeline_problem(self) -> str | None:
        """Why torchrec's TrainPipelineSparseDist cannot train this model (None when it can): its symbolic trace
        cannot follow the history groups' dicts of tensors (core/train_loop.py then trains without it)."""
        if self.dense.histories is not None:
            return "the model encodes engagement histories, whose inputs torch.fx cannot trace"
        return None

    def large_table_weights(self) -> dict[str, nn.Parameter]:
        """{table name: weight} of every large table (bag and unpooled collections), unsharded."""
        out = {} if self.large_embeddings is None else {
            name: bag.weight for name, bag in self.large_embeddings.embedding_bags.items()}
        for collection in (self.large_embeddings_unpooled or {}).values():
            out.update({name: table.weight for name, table in collection.embeddings.items()})
        return out

    def table_modules(self) -> list[nn.Module]:
        """The torchrec collections (on "meta" until materialized)."""
        unpooled = list(self.large_embeddings_unpooled.values()) if self.large_embeddings_unpooled else []
        return ([self.large_embeddings] if self.large_embeddings is not None else []) + unpooled

    def embed_sparse(self, sparse: KeyedJaggedTensor | None, batch_size: int,
                     unpooled: dict[str, JaggedTensor] | None = None) -> torch.Tensor:
        """Pooled large embeddings [B, P] of the batch's sparse ids (ids mapped into range first); `unpooled`: the
        rows of the features whose table lives in an EmbeddingCollection (`lookup_unpooled`), pooled here."""
        if not self.sparse_feature_names:
            return torch.zeros(batch_size, 0, device=self.dense.log_ratio.device)
        if sparse is None:
            raise ValueError(
                f"the model has large embeddings for {self.sparse_feature_names} but batch.sparse is None"
            )
        from torchrec.sparse.jagged_tensor import KeyedTensor

        if self.large_embeddings is not None:
            pooled = self.large_embeddings(self.id_transform(sparse))
            if not self.unpooled_pooling:
                # A sharded collection orders its output by sharding plan, not by table config: regroup by feature
                # name so the dense part sees the same columns whatever the world size.
                return KeyedTensor.regroup([pooled], [list(self.sparse_feature_names)])[0]
            by_feature = pooled.to_dict()
        else:
            by_feature = {}
        if unpooled is None:
            unpooled = self.lookup_unpooled(sparse, {}, batch_size)
        for name, mode in self.unpooled_pooling.items():
            rows = unpooled[name]
            by_feature[name] = pool_jagged(rows.values(), rows.lengths(), mode)
        return torch.cat([by_feature[name] for name in self.sparse_feature_names], dim=1)

    def lookup_unpooled(self, sparse: KeyedJaggedTensor | None, sequences: dict[str, dict[str, torch.Tensor]],
                        batch_size: int) -> dict[str, JaggedTensor]:
        """{feature: its rows} from the EmbeddingCollections: the pooled features of tables shared with a history
        (from `sparse`), each history id column's items ("<group>/id:<col>", the group's lengths) and its
        candidate's id ("<group>/candidate:<col>", one per row); one KeyedJaggedTensor per collection."""
        if self.large_embeddings_unpooled is None:
            return {}
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        history = _history_features(self.history_columns, sequences, batch_size)
        out: dict[str, JaggedTensor] = {}
        for key, collection in self.large_embeddings_unpooled.items():
            transform = self.unpooled_transforms[key]
            names = list(transform.feature_names)
            parts = []
            pooled = [n for n in names if n in self.unpooled_pooling]
            if pooled:
                absent = [n for n in pooled if sparse is None or n not in sparse.keys()]
                if absent:
                    raise ValueError(f"the model has large embeddings for the sparse features {absent}, which the "
                                     f"batch lacks (it has {None if sparse is None else sparse.keys()})")
                parts.append(sparse.permute([sparse.keys().index(n) for n in pooled]))
            own = [n for n in names if n not in self.unpooled_pooling]
            if own:
                missing = [n for n in own if n not in history]
                if missing:
                    raise ValueError(f"the model looks up the history columns {missing}, which the batch lacks")
                parts.append(KeyedJaggedTensor(
                    keys=own, values=torch.cat([history[n][0] for n in own]).to(torch.int64),
                    lengths=torch.cat([history[n][1] for n in own]).to(torch.int32), stride=batch_size))
            features = parts[0] if len(parts) == 1 else KeyedJaggedTensor.concat(parts)
            out.update(collection(transform(features)))
        return out

    def padded_histories(self, batch: RecapBatch, unpooled: dict[str, JaggedTensor] | None = None
                         ) -> dict[str, torch.Tensor] | None:
        """The batch's jagged history groups padded to their max_length on the batch's device (common/history.py),
        with the rows of the columns whose table is sharded ("<group>/emb:<col>" [B, L, D] zeros past each row's
        length, "<group>/candidate:emb:<col>" [B, D]); `unpooled` is `lookup_unpooled`'s output (looked up here
        when None)."""
        lengths = self.dense.history_lengths
        if not lengths:
            return None
        missing = [g for g in lengths if g not in batch.sequences]
        if missing:
            raise ValueError(f"the model encodes the histories {missing}, which the batch does not carry")
        if unpooled is None and self.history_columns:
            unpooled = self.lookup_unpooled(batch.sparse, batch.sequences, batch.batch_size)
        out: dict[str, torch.Tensor] = {}
        for group, max_length in lengths.items():
            prefix = group + "/"
            out.update(padded_history(batch.sequences[group], max_length, prefix))
            for column in self.history_columns.get(group, []):
                rows = unpooled[prefix + "id:" + column]
                out[prefix + "emb:" + column] = pad_jagged(rows.values(), rows.lengths(), max_length)
                candidate = unpooled.get(prefix + "candidate:" + column)
                if candidate is not None:
                    out[prefix + "candidate:emb:" + column] = candidate.values()
        return out

    def forward(self, batch: RecapBatch) -> dict[str, torch.Tensor]:
        unpooled = self.lookup_unpooled(batch.sparse, batch.sequences, batch.batch_size)
        pooled = self.embed_sparse(batch.sparse, batch.batch_size, unpooled)
        return self.dense(batch.continuous, batch.binary, batch.discrete, batch.embeddings, pooled,
                          self.padded_histories(batch, unpooled))


class UnpooledTables:
    """What MultiTaskRankingModel needs for the tables that history id columns read: the EmbeddingCollections and
    their id transforms (ModuleDicts keyed "dim_<embedding_dim>"), the pooling of the pooled features that read
    them ({feature: "sum" or "mean"}) and the history id columns they serve ({group: [column]})."""

    def __init__(self, collections: nn.ModuleDict, transforms: nn.ModuleDict, pooling: dict[str, str],
                 history_columns: dict[str, list[str]]) -> None:
        if list(collections) != list(transforms):
            raise ValueError(f"collections {list(collections)} and id transforms {list(transforms)} differ")
        self.collections = collections
        self.transforms = transforms
        self.pooling = pooling
        self.history_columns = history_columns


def _history_features(columns: dict[str, list[str]], sequences: dict[str, dict[str, torch.Tensor]],
                      batch_size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{"<group>/id:<col>" or "<group>/candidate:<col>": (ids, lengths [B])} of the batch's history columns."""
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for group, names in columns.items():
        fields = sequences.get(group)
        if fields is None:
            continue
        for column in names:
            out[f"{group}/id:{column}"] = (fields["id:" + column], fields["lengths"])
            candidate = fields.get("candidate:" + column)
            if candidate is not None:
                out[f"{group}/candidate:{column}"] = (candidate, torch.ones_like(fields["lengths"]))
    return out
